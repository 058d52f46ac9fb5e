"""The reusable per-example clipping engine and the two top-level functions built on it.

Edge cases (every strategy):

| case                         | result                                                        |
| ---------------------------- | ------------------------------------------------------------- |
| batch of 0 examples          | grads zero (or unchanged with accumulate=True), empty norms   |
| a NaN / inf per-example loss | NonFiniteLossError; p.grad untouched                          |
| max_grad_norm = 0            | zero grads                                                     |
| max_grad_norm = inf          | the plain sum of per-example gradients                        |
| an example with zero grad    | weight 1 (no 0/0), contributes zero                           |
| frozen parameters            | skipped: no rule needed, grads untouched, not in the norms   |

Grouped rows (augmentation multiplicity, De et al. 2022): with `rows_per_example=K`, inputs
and targets hold B*K rows, example-major (rows i*K .. i*K+K-1 are example i's copies). Example
i's gradient is then the gradient of the MEAN loss over its K rows, formed before clipping, so
one example still moves the clipped sum by at most C. Norms and losses (the mean over the rows)
are per example, (B,). Every strategy supports it (see strategies/layerwise.py for the cost).
"""

from __future__ import annotations

import functools
from typing import Callable, Literal, Mapping, Union

import torch
from torch import nn

from dpscope.clipping.checks import check_losses
from dpscope.clipping.clip_rules import ClipRule, FlatClip, as_clip_rule, check_bound_scales, weights_with_bound_scales
from dpscope.clipping.memory import keep_freed_memory
from dpscope.clipping.registry import LayerSlot, layer_slots
from dpscope.clipping.result import ClipResult
from dpscope.clipping.rules._common import flat_sq_norm, weighted_example_sum
from dpscope.clipping.strategies import auto, bookkeeping, crb, ghost, materialize, naive, vmap
from dpscope.clipping.strategies.budget import MaxExtraBytes
from dpscope.clipping.strategies.layerwise import run_layerwise
from dpscope.clipping.strategies.plans import LayerPlan, PlanFn
from dpscope.errors import ConfigError

StrategyName = Literal["naive", "vmap", "materialize", "ghost", "bookkeeping", "crb", "auto"]
Strategy = Union[StrategyName, Mapping[type, str]]
STRATEGIES: tuple[str, ...] = ("naive", "vmap", "materialize", "ghost", "bookkeeping", "crb", "auto")

_WHOLE_MODEL = {"naive": naive.per_example_grad_chunks, "vmap": vmap.per_example_grad_chunks}
_PER_LAYER: dict[str, PlanFn] = {
    "materialize": materialize.plan,
    "crb": crb.plan,
    "ghost": ghost.plan,
    "bookkeeping": bookkeeping.plan,
    "auto": auto.plan,
}


def _check_strategy(strategy: Strategy) -> None:
    if isinstance(strategy, Mapping):
        for layer_type, name in strategy.items():
            if name not in _PER_LAYER:
                raise ConfigError(
                    f"strategy for {getattr(layer_type, '__name__', layer_type)} must be one of "
                    f"{', '.join(_PER_LAYER)} (naive and vmap work on whole models only), got {name!r}"
                )
    elif strategy not in STRATEGIES:
        raise ConfigError(f"unknown clipping strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")


class ClippingEngine:
    """Per-example norms and clipped gradient sums for one model, reused across steps.

    Keeps the layer walk and, for `auto`, the per-layer decision of each input shape, so a
    training loop pays for them once. `strategy` is a name from STRATEGIES or a mapping
    {layer type: per-layer strategy name} (unlisted types use "auto"). Creating an engine
    calls `memory.keep_freed_memory()`, so each step reuses the previous step's buffers
    instead of faulting fresh pages in.

    `max_extra_bytes` is auto's memory budget: how far the step's estimated peak may exceed the
    activations that non-private training holds; over it, auto moves the materialised layers that
    free the most to the book-keeping path (see strategies/budget.py). "auto" (default) allows
    budget.AUTO_HEADROOM of the activations, None turns the budget off (time alone decides), an
    int gives the bytes. Other strategies ignore it.
    """

    def __init__(self, model: nn.Module, strategy: Strategy = "auto", *, max_extra_bytes: MaxExtraBytes = "auto") -> None:
        _check_strategy(strategy)
        _check_budget(max_extra_bytes)
        keep_freed_memory()
        self.model = model
        self.strategy = strategy
        self.max_extra_bytes = max_extra_bytes
        self._slots_key: tuple | None = None
        self._slots: list[LayerSlot] = []
        self._plan_cache: dict[tuple, dict[int, LayerPlan]] = {}  # input shape -> slot -> plan

    def grad_norms(self, loss_fn: Callable, inputs: torch.Tensor, targets: torch.Tensor, *,
                   rows_per_example: int = 1) -> ClipResult:
        """Per-example gradient norms (and per-parameter squared norms, losses); p.grad untouched."""
        result, _ = self._run(loss_fn, inputs, targets, None, rows_per_example)
        return result

    def clipped_grad_sum(
        self,
        loss_fn: Callable,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        clip: ClipRule | float,
        *,
        accumulate: bool = False,
        rows_per_example: int = 1,
        bound_scales: torch.Tensor | None = None,
    ) -> ClipResult:
        """Set (or with accumulate=True add to) p.grad = sum_i w_i g_i for every trainable p.

        `clip` is a ClipRule (FlatClip, PerLayerClip, AutoClip) or a number meaning FlatClip.
        Returns the norms before clipping. Nothing is written if the pass raises. With
        `rows_per_example` K the B*K rows are B examples' K copies each (see the module docstring).
        `bound_scales` (B,) in (0, 1] scale each example's clipping bound (e.g. per class, against
        the pull of a majority class; the sensitivity stays the rule's).
        """
        rule = as_clip_rule(clip)
        result, sums = self._run(loss_fn, inputs, targets, rule, rows_per_example, bound_scales)
        for name, p in self._trainable().items():
            total = sums.get(name)
            if total is None:
                total = torch.zeros_like(p)
            total = total.to(p.dtype).reshape(p.shape)
            if accumulate and p.grad is not None:
                p.grad.add_(total)
            else:
                p.grad = total
        return result

    # -- internals -------------------------------------------------------------------------

    def _trainable(self) -> dict[str, nn.Parameter]:
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    def _layer_slots(self) -> list[LayerSlot]:
        key = tuple((id(p), p.requires_grad) for p in self.model.parameters()) + (self.model.training,)
        if key != self._slots_key:
            self._slots = layer_slots(self.model)
            self._slots_key = key
            self._plan_cache.clear()
        return self._slots

    def _plan_fn(self, slot: LayerSlot) -> PlanFn:
        if not isinstance(self.strategy, Mapping):
            return _PER_LAYER[self.strategy]
        for cls in type(slot.module).__mro__:
            if cls in self.strategy:
                return _PER_LAYER[self.strategy[cls]]
        return _PER_LAYER["auto"]

    def _run(self, loss_fn, inputs, targets, clip, rows: int = 1,
             bound_scales: torch.Tensor | None = None) -> tuple[ClipResult, dict[str, torch.Tensor]]:
        _check_rows(rows, inputs.shape[0])
        check_bound_scales(bound_scales, inputs.shape[0] // rows)
        whole_model = _WHOLE_MODEL.get(self.strategy) if isinstance(self.strategy, str) else None
        if whole_model is not None:
            self._bn_check()
        if inputs.shape[0] == 0:
            return self._empty(inputs), {}
        if whole_model is not None:
            chunks = functools.partial(whole_model, rows_per_example=rows)
            return self._run_streaming(chunks, loss_fn, inputs, targets, clip, bound_scales)
        slots = self._layer_slots()
        plan_fns = [self._plan_fn(s) for s in slots]
        plans = self._plan_cache.setdefault((tuple(inputs.shape), inputs.dtype, str(inputs.device), rows), {})
        keep_graph = clip is not None and any(fn is ghost.plan for fn in plan_fns)
        budget = self.max_extra_bytes if any(fn is auto.plan for fn in plan_fns) else None
        return run_layerwise(self.model, slots, plan_fns, plans, loss_fn, inputs, targets, clip, keep_graph=keep_graph,
                             rows_per_example=rows, max_extra_bytes=budget, bound_scales=bound_scales)

    def layer_plans(self) -> dict[tuple, dict[str, LayerPlan]]:
        """The cached decisions: (input shape, dtype, device, rows per example) -> layer path -> plan."""
        return {key: {self._slots[i].path: plan for i, plan in sorted(plans.items())} for key, plans in self._plan_cache.items()}

    def _bn_check(self) -> None:
        """Whole-model strategies need no rules, but BatchNorm still mixes examples."""
        for module in self.model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.training:
                layer_slots(self.model)  # raises with the module path, the reason and the fix

    def _empty(self, inputs: torch.Tensor) -> ClipResult:
        dtype = next((p.dtype for p in self.model.parameters()), torch.get_default_dtype())
        empty = torch.zeros(0, dtype=dtype, device=inputs.device)
        return ClipResult(empty, {n: empty for n in self._trainable()}, empty)

    def _run_streaming(self, chunks, loss_fn, inputs, targets, clip,
                       bound_scales: torch.Tensor | None = None) -> tuple[ClipResult, dict[str, torch.Tensor]]:
        params = self._trainable()
        sums: dict[str, torch.Tensor] = {}
        norms, losses, sq_parts = [], [], []
        done = 0  # examples before this chunk
        for grads, chunk_losses in chunks(self.model, loss_fn, inputs, targets, params):
            check_losses(chunk_losses, next(iter(grads.values())).shape[0])
            sq = {n: flat_sq_norm(g) for n, g in grads.items()}
            chunk_norms = torch.stack(list(sq.values())).sum(0).sqrt()
            if clip is not None:
                chunk_scales = None if bound_scales is None else bound_scales[done:done + len(chunk_norms)]
                weights = weights_with_bound_scales(clip, sq, chunk_norms, chunk_scales)
                for n, g in grads.items():
                    s = weighted_example_sum(g, weights[n])
                    sums[n] = sums[n] + s if n in sums else s
            done += len(chunk_norms)
            norms.append(chunk_norms)
            losses.append(chunk_losses.detach())
            sq_parts.append(sq)
        per_param = {n: torch.cat([part[n] for part in sq_parts]) for n in params}
        return ClipResult(torch.cat(norms), per_param, torch.cat(losses)), sums


def _check_budget(max_extra_bytes: MaxExtraBytes) -> None:
    if max_extra_bytes is None or max_extra_bytes == "auto":
        return
    if isinstance(max_extra_bytes, bool) or not isinstance(max_extra_bytes, int) or max_extra_bytes < 0:
        raise ConfigError(f"max_extra_bytes must be 'auto', None or a number of bytes >= 0, got {max_extra_bytes!r}")


def _check_rows(rows: int, batch_rows: int) -> None:
    if not (isinstance(rows, int) and rows >= 1):
        raise ConfigError(f"rows_per_example must be an integer >= 1, got {rows!r}")
    if batch_rows % rows:
        raise ConfigError(f"{batch_rows} input rows do not split into examples of {rows} rows each; "
                          "give every example the same number of augmented copies")


def per_example_grad_norms(
    model: nn.Module, loss_fn: Callable, inputs: torch.Tensor, targets: torch.Tensor, strategy: Strategy = "auto",
    *, rows_per_example: int = 1,
) -> torch.Tensor:
    """(B,) L2 norm of each example's gradient over all trainable parameters; p.grad untouched."""
    engine = ClippingEngine(model, strategy)
    return engine.grad_norms(loss_fn, inputs, targets, rows_per_example=rows_per_example).per_example_norms


def clipped_grad_sum(
    model: nn.Module,
    loss_fn: Callable,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    max_grad_norm: float,
    strategy: Strategy = "auto",
    *,
    rows_per_example: int = 1,
) -> torch.Tensor:
    """Set p.grad = sum_i g_i * min(1, C / (||g_i|| + 1e-6)) for every trainable p; no noise.

    Returns the (B,) per-example norms before clipping.
    """
    engine = ClippingEngine(model, strategy)
    result = engine.clipped_grad_sum(loss_fn, inputs, targets, FlatClip(max_grad_norm), rows_per_example=rows_per_example)
    return result.per_example_norms
