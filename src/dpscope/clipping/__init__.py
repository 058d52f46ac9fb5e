"""Per-example gradients, their norms and clipped sums for DP-SGD, exact and fast.

    norms = per_example_grad_norms(model, loss_fn, inputs, targets, strategy="auto")
    norms = clipped_grad_sum(model, loss_fn, inputs, targets, max_grad_norm, strategy="auto")
    engine = ClippingEngine(model, strategy="auto")   # reuse across steps
    engine = ClippingEngine(model, "auto", max_extra_bytes="auto")  # auto's memory budget (default)
    result = engine.clipped_grad_sum(loss_fn, inputs, targets, FlatClip(1.0), accumulate=False)

`loss_fn(outputs, targets)` returns per-example losses (B,). Strategies (STRATEGIES): naive
and vmap are whole-model references; materialize, crb, ghost, bookkeeping and auto work layer
by layer through the rules in `registry` (one file per layer family in `rules/`). A trainable
layer without a rule raises UnsupportedLayerError; a module can cover its own parameters by
defining `per_example_grads(inputs, grad_output)` (see `rules/custom.py`), or a rule can be
added with `register_rule`. Edge cases are listed in `engine`.
"""

from dpscope.clipping.checks import LossShapeError, NonFiniteLossError
from dpscope.clipping.clip_rules import AutoClip, ClipRule, FlatClip, PerLayerClip
from dpscope.clipping.engine import STRATEGIES, ClippingEngine, Strategy, clipped_grad_sum, per_example_grad_norms
from dpscope.clipping.registry import LayerRule, register_rule, supported_types
from dpscope.clipping.result import ClipResult

__all__ = [
    "STRATEGIES",
    "AutoClip",
    "ClipResult",
    "ClipRule",
    "ClippingEngine",
    "FlatClip",
    "LayerRule",
    "LossShapeError",
    "NonFiniteLossError",
    "PerLayerClip",
    "Strategy",
    "clipped_grad_sum",
    "per_example_grad_norms",
    "register_rule",
    "supported_types",
]
