"""The per-layer engine shared by materialize, crb, ghost, bookkeeping and auto.

One forward and one backward that yields output gradients only (`capture`). As each layer's
output gradient D arrives, the layer's plan reduces it at once: to ghost norms, or to
materialised per-example gradients (kept for the sum, in batch slices) and their norms; the
layer's input A and D are kept only for layers whose sum is a contraction, so activations are
freed as the backward goes, as in non-private training. Then the clip rule's weights, then per
layer the weighted sum (stored, contraction, or one shared second backward), each layer's
tensors freed as its sum is taken. On the first batch of a shape with a memory budget, every
plan is decided before the backward (see budget.py).

Grouped rows (augmentation multiplicity, De et al. 2022): with `rows_per_example` K the batch
holds B*K rows, example-major, and example i's gradient is that of the mean loss over its K
rows. The backward runs on per-row losses divided by K, so summing a layer's per-row gradients
over an example's rows gives its gradient. Rules with `rows_as_positions` see the rows as K
extra positions (ghost norms included); the others materialise per-row gradients and sum them
(their ghost plans become materialise, exact but with per-row memory). Weights stay per
example; the second backward gives every row its example's weight.
"""

from __future__ import annotations

from collections import Counter
from contextlib import nullcontext
from typing import Callable, Iterable, Iterator

import torch

from dpscope.clipping.capture import LayerCall, capture
from dpscope.clipping.clip_rules import ClipRule, weights_with_bound_scales
from dpscope.clipping.memory import slice_bytes
from dpscope.clipping.registry import Grads, LayerSlot
from dpscope.clipping.result import ClipResult
from dpscope.clipping.rules._common import flat_sq_norm, weighted_example_sum
from dpscope.clipping.strategies import auto, bookkeeping
from dpscope.clipping.strategies.budget import CallFootprint, MaxExtraBytes, saved_activation_bytes, within_budget
from dpscope.clipping.strategies.plans import LayerPlan, PlanFn
from dpscope.device import exact_float32

Sums = dict[str, torch.Tensor]
Stored = list[tuple[slice, Grads]]  # materialised per-example gradients, one entry per batch slice


def _effective(plan: LayerPlan, calls: int, rows_apart: bool) -> LayerPlan:
    """Ghost norms have cross terms between calls of a shared layer, and between the rows of one
    example that a rule cannot see as positions: materialise those instead."""
    if (calls > 1 or rows_apart) and plan.norm == "ghost":
        return LayerPlan("materialize", "stored" if plan.total == "contraction" else plan.total)
    return plan


def _add(total: Grads, part: Grads, names: tuple[str, ...]) -> None:
    for name in names:
        total[name] = total[name] + part[name] if name in total else part[name]


class _Pass:
    """Per-layer state of one batch, filled while the backward runs."""

    def __init__(self, slots: list[LayerSlot], plan_fns: list[PlanFn], plans: dict[int, LayerPlan], keep_sums: bool,
                 rows: int = 1, budget: MaxExtraBytes = None) -> None:
        self.slots, self.plan_fns, self.plans, self.keep_sums = slots, plan_fns, plans, keep_sums
        self.rows = rows  # rows per example
        self.budget = budget  # set only when this pass decides the plans (see _plan_within_budget)
        self.saved_bytes = [0]  # activation bytes autograd saved, counted while deciding
        self.pending: Counter[int] = Counter()
        self.sq: dict[int, Grads] = {}
        self.stored: dict[int, Stored] = {}
        self.kept: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def plan(self, i: int, a: torch.Tensor, d: torch.Tensor) -> LayerPlan:
        if i not in self.plans:
            self.plans[i] = self.plan_fns[i](self.slots[i], a, d)
        rows_apart = self.rows > 1 and not self.slots[i].rule.rows_as_positions
        return _effective(self.plans[i], self.calls[i], rows_apart)

    def start(self, calls: list[LayerCall]) -> None:
        self.calls = Counter(c.slot for c in calls)
        self.pending = Counter(self.calls)
        if self.budget is not None:
            self._plan_within_budget(calls)

    def _plan_within_budget(self, calls: list[LayerCall]) -> None:
        """Decide every layer's plan before the backward, from shapes (D as a meta tensor), then
        move auto's materialised layers to book-keeping while the memory estimate is over budget."""
        footprints, movable, counted = [], {}, set()
        for c in calls:
            i, slot = c.slot, self.slots[c.slot]
            a, d = c.inputs, torch.empty(c.out_shape, dtype=c.out_like.dtype, device="meta")
            rows_apart = self.rows > 1 and not slot.rule.rows_as_positions
            if self.rows > 1 and not rows_apart:
                a, d = _rows_as_positions(a, self.rows), _rows_as_positions(d, self.rows)
            if i not in self.plans:
                self.plans[i] = self.plan_fns[i](slot, a, d)
            storage = a.untyped_storage()
            fresh = not c.is_source and storage.data_ptr() not in counted
            counted.add(storage.data_ptr())
            kept = d.numel() * d.element_size() + (0 if c.is_source else a.numel() * a.element_size())
            footprints.append(CallFootprint(i, storage.nbytes() if fresh else 0, kept,
                                            a.shape[0] * slot.trainable_numel * a.element_size()))
            if self.plan_fns[i] is auto.plan and self.calls[i] == 1 and not rows_apart:
                if bookkeeping.plan(slot, a, d).total == "contraction":
                    movable[i] = auto.memory_plan(slot, a, d, self.plans[i])
        within_budget(footprints, self.plans, movable, self.saved_bytes[0], self.budget)

    @torch.no_grad()
    def on_grad(self, call: LayerCall, d: torch.Tensor) -> None:
        with exact_float32(d.device):  # norms that agree with the sums (dpscope.device)
            self._on_grad(call, d)

    def _on_grad(self, call: LayerCall, d: torch.Tensor) -> None:
        i, slot = call.slot, self.slots[call.slot]
        a, call.inputs = call.inputs, None  # A lives on only where a contraction keeps it
        # grads formed by the layer's backward (LayerRule.fused_forward); a shared layer's calls
        # take the rule's path below, so that their slices line up
        if call.grads is not None and self.calls[i] == 1:
            self.plan(i, a, d)  # recorded as decided (materialised, stored), as layer_plans reports
            grads = _per_example({n: call.grads[n] for n in slot.param_names}, self.rows)
            self._store(i, slot, [(slice(0, d.shape[0] // self.rows), grads)])
            return
        if self.rows > 1 and slot.rule.rows_as_positions:
            a, d = _rows_as_positions(a, self.rows), _rows_as_positions(d, self.rows)
        plan = self.plan(i, a, d)
        if plan.norm == "ghost":
            self.sq[i] = slot.rule.ghost_sq_norms(slot.module, a, d)
            if self.keep_sums:
                self.kept.setdefault(i, []).append((a, d))
            return
        if plan.total == "contraction":  # norms from per-example grads a slice at a time (budget.py)
            sq = [{n: flat_sq_norm(g) for n, g in grads.items()} for _, grads in self._slice_grads(slot, plan, a, d)]
            self.sq[i] = {n: torch.cat([part[n] for part in sq]) for n in slot.param_names}
            if self.keep_sums:
                self.kept.setdefault(i, []).append((a, d))
            return
        self._store(i, slot, self._slice_grads(slot, plan, a, d))

    def _store(self, i: int, slot: LayerSlot, slices: Iterable[tuple[slice, Grads]]) -> None:
        """Keep a call's per-example grads for the sum; norms once the layer's last call is in."""
        parts = self.stored.setdefault(i, [])
        for k, (sl, grads) in enumerate(slices):
            if k < len(parts):  # a shared layer's later call
                _add(parts[k][1], grads, slot.param_names)
            else:
                parts.append((sl, grads))
        self.pending[i] -= 1
        if self.pending[i] == 0:
            self.sq[i] = {n: torch.cat([flat_sq_norm(g[n]) for _, g in parts]) for n in slot.param_names}
            if not self.keep_sums:
                del self.stored[i]

    def _slice_grads(self, slot: LayerSlot, plan: LayerPlan, a: torch.Tensor, d: torch.Tensor) -> Iterator[tuple[slice, Grads]]:
        """(examples, their per-example grads) in slices within the device's slice bytes
        (`clipping.memory.slice_bytes`; whole-layer blocks, 12 MB for a ViT qkv at batch 64,
        fit none of the holes the backward leaves in a CPU heap); larger for stored gradients
        that a rule forms without scratch (`LayerRule.scratch_free`)."""
        rule = slot.rule
        fn = {"crb": rule.crb_grads, "fastest": rule.fastest_grads}.get(plan.norm) or rule.per_example_grads
        rows = self.rows if self.rows > 1 and not rule.rows_as_positions else 1  # rows per example in a, d
        per_example = slot.trainable_numel * a.element_size()
        scratch_free = (plan.norm == "fastest" and plan.total == "stored" and rule.scratch_free is not None
                        and rule.scratch_free(slot.module, a, d))
        for sl in _slices(a.shape[0] // rows, slice_bytes(a.device, scratch_free) // max(1, per_example)):
            grads = fn(slot.module, a[sl.start * rows : sl.stop * rows], d[sl.start * rows : sl.stop * rows])
            yield sl, _per_example({n: grads[n] for n in slot.param_names}, rows)  # rules may also return frozen ones


def _per_example(grads: Grads, rows: int) -> Grads:
    """Per-row gradients (b*K, ...) summed over each example's K rows."""
    return grads if rows == 1 else {n: g.reshape(-1, rows, *g.shape[1:]).sum(1) for n, g in grads.items()}


def _slices(examples: int, per_slice: int) -> list[slice]:
    per_slice = max(1, per_slice)
    return [slice(start, min(start + per_slice, examples)) for start in range(0, examples, per_slice)]


def _rows_as_positions(t: torch.Tensor, rows: int) -> torch.Tensor:
    return t.reshape(t.shape[0] // rows, rows, *t.shape[1:])  # (B*K, ...) -> (B, K, ...)


def run_layerwise(
    model: torch.nn.Module,
    slots: list[LayerSlot],
    plan_fns: list[PlanFn],
    plans: dict[int, LayerPlan],
    loss_fn: Callable,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    clip: ClipRule | None,
    *,
    keep_graph: bool,
    rows_per_example: int = 1,
    max_extra_bytes: MaxExtraBytes = None,
    bound_scales: torch.Tensor | None = None,
) -> tuple[ClipResult, Sums]:
    """Norms (and with a clip rule, clipped sums, each example's bound scaled by `bound_scales`) of one batch. `plans` caches decisions per slot;
    when it is empty and `max_extra_bytes` is set, auto's decisions keep to that memory budget."""
    rows = rows_per_example
    budget = max_extra_bytes if not plans else None
    state = _Pass(slots, plan_fns, plans, keep_sums=clip is not None, rows=rows, budget=budget)
    row_loss_fn = loss_fn if rows == 1 else (lambda outputs, y: loss_fn(outputs, y) / rows)
    with saved_activation_bytes() if budget is not None else nullcontext([0]) as state.saved_bytes:
        losses, calls = capture(model, slots, row_loss_fn, inputs, targets, state.on_grad, keep_graph=keep_graph,
                                on_forward=state.start)
    batch = inputs.shape[0] // rows
    sq_norms: dict[str, torch.Tensor] = {}
    for i, slot in enumerate(slots):
        local = state.sq.get(i, {})
        for n in slot.param_names:
            sq_norms[slot.full_name(n)] = local[n] if n in local else losses.new_zeros(batch).detach()
    with torch.no_grad():
        norms = torch.stack(list(sq_norms.values())).sum(0).sqrt() if sq_norms else losses.new_zeros(batch)
    result = ClipResult(norms, sq_norms, losses.detach().view(batch, rows).sum(1))
    if clip is None:
        return result, {}
    weights = weights_with_bound_scales(clip, sq_norms, norms, bound_scales)
    with exact_float32(losses.device):
        return result, _clipped_sums(slots, state, losses, weights, rows)


def _clipped_sums(slots: list[LayerSlot], state: _Pass, losses: torch.Tensor, weights: dict[str, torch.Tensor],
                  rows: int) -> Sums:
    sums: Sums = {}
    backward: list[tuple[str, torch.Tensor]] = []
    second = [i for i in range(len(slots)) if i in state.plans and state.plans[i].total == "second_backward"]
    uniform = len({id(weights[slots[i].full_name(n)]) for i in second for n in slots[i].param_names}) <= 1
    with torch.no_grad():
        for i, slot in enumerate(slots):
            local_w = {n: weights[slot.full_name(n)] for n in slot.param_names}
            plan = state.plans.get(i)
            if i in state.stored:  # popped: each layer's tensors are freed once its sum is taken
                local = {}
                for sl, grads in state.stored.pop(i):
                    _add(local, {n: weighted_example_sum(g, local_w[n][sl]) for n, g in grads.items()}, slot.param_names)
            elif plan is not None and plan.total == "second_backward" and uniform:
                backward += [(slot.full_name(n), getattr(slot.module, n)) for n in slot.param_names]
                continue
            elif i in state.kept:
                local = {}
                for a, d in state.kept.pop(i):
                    _add(local, slot.rule.weighted_grad_sum(slot.module, a, d, local_w), slot.param_names)
            else:  # the layer's output did not reach the loss
                local = {n: torch.zeros_like(getattr(slot.module, n)) for n in slot.param_names}
            sums.update({slot.full_name(n): local[n] for n in slot.param_names})
    if backward:
        w = weights[backward[0][0]].repeat_interleave(rows)  # each row gets its example's weight
        with torch.enable_grad():
            weighted_loss = (losses * w).sum()
        grads = torch.autograd.grad(weighted_loss, [p for _, p in backward], allow_unused=True)
        for (name, p), g in zip(backward, grads):
            sums[name] = torch.zeros_like(p) if g is None else g
    return sums
