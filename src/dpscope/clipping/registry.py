"""The one registry of per-example gradient rules, and the walk that assigns rules to layers.

A rule covers one layer family. Given the layer, its input `A` (first positional argument of
its forward) and the gradient `D` of the summed per-example losses with respect to its output,
it returns, per parameter name (as in `module.named_parameters(recurse=False)`):

- `per_example_grads`: (B, *param.shape) tensors (required; every other quantity can be
  derived from it, so a new layer type needs only this);
- `ghost_sq_norms`: (B,) squared norms without materialising per-example gradients;
- `weighted_grad_sum`: sum_i w_i g_i for per-parameter weights w (B,), without materialising;
- `costs`: rough per-example multiply-add counts of the two whole paths, (ghost norm +
  weighted contraction, materialisation + norm + stored sum), that `auto` compares;
- `fused_forward`: a forward whose backward hands the per-example gradients over as it computes
  the input gradient (the engine then skips the rule for that call).

Rules are pure functions of (layer, A, D). The table below is the whole registry: a new layer
family is one file in `rules/` plus one line here (or `register_rule` from user code).
Custom modules may instead define `per_example_grads(self, inputs, grad_output)` returning the
same dict as a rule's `per_example_grads` (the "custom" contract, see `rules/custom.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from dpscope.errors import UnsupportedLayerError

Grads = dict[str, torch.Tensor]
GradsFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], Grads]
WeightedSumFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, Grads], Grads]
CostsFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], tuple[float, float]]


@dataclass(frozen=True)
class LayerRule:
    """How to get per-example gradient quantities of one layer family (see module docstring)."""

    name: str
    per_example_grads: GradsFn
    ghost_sq_norms: GradsFn | None = None
    weighted_grad_sum: WeightedSumFn | None = None
    costs: CostsFn | None = None
    crb_grads: GradsFn | None = None  # per-example grads by one grouped convolution (conv only)
    fastest_grads: GradsFn | None = None  # the fastest materialisation, if not per_example_grads
    # True where fastest_grads needs no scratch beyond its result (conv: the C kernel): its
    # per-example gradients may then be formed in larger slices (memory.STORED_SLICE_BYTES)
    scratch_free: Callable[[nn.Module, torch.Tensor, torch.Tensor], bool] | None = None
    # Every axis between the batch axis and the feature axes is a position the rule sums over,
    # so the K rows of one example (augmentation multiplicity) can be handed over as an extra
    # position axis: A (B*K, ...) viewed as (B, K, ...). Others get per-row gradients summed.
    rows_as_positions: bool = False
    # The layer's forward for the engine's pass, recorded so that its backward forms the input
    # gradient and the per-example gradients together and calls hand_over(grads, D) once with them,
    # where a separate pass would read A and D again (GroupNorm on the CPU). Returns None where
    # it does not apply; the layer's own forward then runs and the rule is used as usual.
    fused_forward: Callable[[nn.Module, torch.Tensor, Callable[[Grads, torch.Tensor], None]], torch.Tensor | None] | None = None


@dataclass
class LayerSlot:
    """One module with trainable direct parameters and the rule that covers it."""

    path: str  # module path in the model ('' for the root)
    module: nn.Module
    rule: LayerRule
    param_names: tuple[str, ...]  # trainable direct parameters, local names

    def full_name(self, local: str) -> str:
        return f"{self.path}.{local}" if self.path else local

    @property
    def trainable_numel(self) -> int:
        """Entries of one example's gradient for this layer (what materialising costs per example)."""
        return sum(getattr(self.module, n).numel() for n in self.param_names)


def _default_rules() -> dict[type[nn.Module], LayerRule]:
    from dpscope.clipping.rules import conv, embedding, linear, norms, tokens

    table: dict[type[nn.Module], LayerRule] = {
        nn.Linear: linear.RULE,
        nn.Conv1d: conv.RULE,
        nn.Conv2d: conv.RULE,
        nn.Conv3d: conv.RULE,
        nn.Embedding: embedding.RULE,
        nn.LayerNorm: norms.LAYER_NORM,
        nn.GroupNorm: norms.GROUP_NORM,
        nn.InstanceNorm1d: norms.INSTANCE_NORM,
        nn.InstanceNorm2d: norms.INSTANCE_NORM,
        nn.InstanceNorm3d: norms.INSTANCE_NORM,
    }
    table.update(tokens.rules())
    return table


_RULES: dict[type[nn.Module], LayerRule] = {}


def rules() -> dict[type[nn.Module], LayerRule]:
    """The registry: layer type -> rule (filled on first use, so importing costs nothing)."""
    if not _RULES:
        _RULES.update(_default_rules())
    return _RULES


def register_rule(layer_type: type[nn.Module], rule: LayerRule) -> None:
    """Cover `layer_type` (and its subclasses without a rule of their own) with `rule`."""
    rules()[layer_type] = rule


def rule_for(module: nn.Module) -> LayerRule | None:
    """The rule of the most specific registered class of `module`, else the custom contract."""
    table = rules()
    for cls in type(module).__mro__:
        if cls in table:
            return table[cls]
    if callable(getattr(module, "per_example_grads", None)):
        from dpscope.clipping.rules.custom import RULE as CUSTOM

        return CUSTOM
    return None


def supported_types() -> str:
    names = sorted({t.__name__ for t in rules()})
    return ", ".join(names) + " and modules defining per_example_grads(inputs, grad_output)"


def layer_slots(model: nn.Module) -> list[LayerSlot]:
    """Every module owning trainable parameters, with its rule; refuses what cannot be exact.

    Raises UnsupportedLayerError for BatchNorm in training mode (its output for one example
    depends on the whole batch) and for any trainable layer without a rule.
    """
    slots = []
    for path, module in model.named_modules():
        shown = path or "<root>"
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.training:
            raise UnsupportedLayerError(
                f"BatchNorm at '{shown}' mixes the examples of a batch in training mode, so "
                "per-example gradients are undefined; swap it for GroupNorm with "
                "dpscope.models.replace_batchnorm(model)"
            )
        names = tuple(n for n, p in module.named_parameters(recurse=False) if p.requires_grad)
        if not names:
            continue
        rule = rule_for(module)
        if rule is None:
            raise UnsupportedLayerError(
                f"no per-example gradient rule for trainable {type(module).__name__} at '{shown}'; "
                f"supported: {supported_types()}; freeze it, or use strategy='vmap'"
            )
        slots.append(LayerSlot(path, module, rule, names))
    return slots
