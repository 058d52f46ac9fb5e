"""One forward pass that records each covered layer's input, then one backward that returns
the gradient of the summed per-example losses with respect to each layer's output.

The backward asks autograd for the output gradients only (gradient edges taken when each layer
ran, so later in-place operations on the output do not matter); autograd then skips every
parameter-gradient kernel, which a plain `loss.backward()` would compute and waste.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch.autograd.graph import GradientEdge, get_gradient_edge

from dpscope.clipping.checks import check_losses
from dpscope.clipping.registry import LayerSlot
from dpscope.errors import UnsupportedLayerError


@dataclass
class LayerCall:
    """One call of a covered layer: input A, and output gradient D once the backward ran."""

    inputs: torch.Tensor
    version: int  # version counter of `inputs` when recorded: detects later in-place edits
    edge: GradientEdge
    out_shape: torch.Size
    out_like: torch.Tensor  # a 0-element tensor of the output's dtype/device
    grad: torch.Tensor | None = None


@dataclass
class Captured:
    losses: torch.Tensor  # (B,), still attached to the graph
    calls: list[list[LayerCall]] = field(default_factory=list)  # per slot, in call order


def _recorder(calls: list[LayerCall], path: str) -> Callable:
    def hook(module, args, output):
        if not isinstance(output, torch.Tensor) or output.grad_fn is None:
            raise UnsupportedLayerError(
                f"layer '{path}' returned no tensor attached to the graph; per-example gradients "
                "need a forward pass with gradients enabled"
            )
        a = args[0]
        calls.append(LayerCall(a.detach(), a._version, get_gradient_edge(output), output.shape, output.new_empty(0)))

    return hook


def capture(
    model: torch.nn.Module,
    slots: list[LayerSlot],
    loss_fn: Callable,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    keep_graph: bool,
) -> Captured:
    """Forward with recording hooks, checked losses, and output gradients of every call."""
    captured = Captured(losses=torch.empty(0))
    handles = []
    for slot in slots:
        calls: list[LayerCall] = []
        captured.calls.append(calls)
        handles.append(slot.module.register_forward_hook(_recorder(calls, slot.path or "<root>")))
    try:
        losses = loss_fn(model(inputs), targets)
    finally:
        for h in handles:
            h.remove()
    check_losses(losses, inputs.shape[0])
    captured.losses = losses
    flat = [c for calls in captured.calls for c in calls]
    grads = torch.autograd.grad(losses.sum(), [c.edge for c in flat], allow_unused=True, retain_graph=keep_graph)
    for slot, calls in zip(slots, captured.calls):
        for c in calls:
            if c.inputs._version != c.version:
                raise UnsupportedLayerError(
                    f"the input of layer '{slot.path or '<root>'}' was modified in place after the layer "
                    "used it; make that operation out of place (e.g. inplace=False)"
                )
    for c, g in zip(flat, grads):
        c.grad = g if g is not None else c.out_like.new_zeros(c.out_shape)
    return captured
