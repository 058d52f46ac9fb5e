"""One forward pass that records each covered layer's input, then one backward that hands each
layer the gradient D of the summed per-example losses with respect to its output, as soon as
autograd computes it.

The backward asks autograd only for input gradients (of a copy of the inputs that requires
grad) and, for layers whose input does not depend on it (e.g. an embedding of integer ids),
for their output gradients; parameter-gradient kernels are never run. Each layer's D is caught
by a pre-hook on the autograd node that produced the layer's output (taken when the layer ran,
so later in-place operations on the output do not matter) and handed to `on_grad` at once, so
a strategy can reduce it (to norms, per-example gradients) and free it while the backward goes
on: peak memory stays near that of non-private training.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch.autograd.graph import GradientEdge, get_gradient_edge

from dpscope.clipping.checks import check_losses
from dpscope.clipping.registry import LayerSlot
from dpscope.errors import UnsupportedLayerError


@dataclass
class LayerCall:
    """One call of a covered layer: its input A and where its output entered the graph."""

    slot: int  # index into the slot list
    inputs: torch.Tensor
    version: int  # version counter of `inputs` when recorded: detects later in-place edits
    edge: GradientEdge
    out_shape: torch.Size
    out_like: torch.Tensor  # a 0-element tensor of the output's dtype/device

    def zeros(self) -> torch.Tensor:
        return self.out_like.new_zeros(self.out_shape)


OnGrad = Callable[[LayerCall, torch.Tensor], None]


def _recorder(calls: list[LayerCall], slot: int, path: str) -> Callable:
    def hook(module, args, output):
        if not isinstance(output, torch.Tensor) or output.grad_fn is None:
            raise UnsupportedLayerError(
                f"layer '{path}' returned no tensor attached to the graph; per-example gradients "
                "need a forward pass with gradients enabled"
            )
        a = args[0]
        calls.append(LayerCall(slot, a.detach(), a._version, get_gradient_edge(output), output.shape, output.new_empty(0)))

    return hook


def _check_unmodified(slots: list[LayerSlot], calls: list[LayerCall]) -> None:
    for c in calls:
        if c.inputs._version != c.version:
            raise UnsupportedLayerError(
                f"the input of layer '{slots[c.slot].path or '<root>'}' was modified in place after the "
                "layer used it; make that operation out of place (e.g. inplace=False)"
            )


def capture(
    model: torch.nn.Module,
    slots: list[LayerSlot],
    loss_fn: Callable,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    on_grad: OnGrad,
    *,
    keep_graph: bool,
    on_forward: Callable[[list[LayerCall]], None],
) -> tuple[torch.Tensor, list[LayerCall]]:
    """Forward with recording hooks, checked losses, `on_forward(calls)`, then `on_grad(call, D)`
    for every call.

    Returns the (B,) losses, still attached to the graph if keep_graph, and the calls.
    """
    calls: list[LayerCall] = []
    handles = [
        slot.module.register_forward_hook(_recorder(calls, i, slot.path or "<root>")) for i, slot in enumerate(slots)
    ]
    leaf = inputs.detach().requires_grad_() if inputs.is_floating_point() else inputs
    try:
        # a copy, so a model may still edit its input in place (a leaf that requires grad may not)
        losses = loss_fn(model(leaf.clone() if leaf.requires_grad else leaf), targets)
    finally:
        for h in handles:
            h.remove()
    check_losses(losses, inputs.shape[0])
    on_forward(calls)
    # calls whose node the input's gradient does not pass through get their D captured directly
    reaching = _nodes_reaching(losses.grad_fn, leaf) if leaf.requires_grad else set()
    direct = [c for c in calls if c.edge.node not in reaching]
    hooked = [c for c in calls if c.edge.node in reaching]
    seen: set[int] = set()

    def prehook_for(call: LayerCall) -> Callable:
        def prehook(grad_outputs):
            grad = grad_outputs[call.edge.output_nr]
            seen.add(id(call))
            on_grad(call, call.zeros() if grad is None else grad)

        return prehook

    hook_handles = [c.edge.node.register_prehook(prehook_for(c)) for c in hooked]
    targets_ = ([leaf] if hooked and leaf.requires_grad else []) + [c.edge for c in direct]
    try:
        grads = torch.autograd.grad(losses.sum(), targets_, allow_unused=True, retain_graph=keep_graph) if targets_ else ()
    finally:
        for h in hook_handles:
            h.remove()
    _check_unmodified(slots, calls)
    for c, g in zip(direct, grads[len(targets_) - len(direct):]):
        on_grad(c, c.zeros() if g is None else g)
    for c in hooked:
        if id(c) not in seen:  # output unused by the loss
            on_grad(c, c.zeros())
    return losses, calls


def _nodes_reaching(root, leaf: torch.Tensor) -> set:
    """Autograd nodes from which `leaf` is reachable: those the input's gradient runs through."""
    target = get_gradient_edge(leaf).node
    reaching = {target}
    done: set = set()
    stack = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        if node is None or node in done:
            continue
        nexts = [n for n, _ in node.next_functions if n is not None]
        if not expanded:
            stack.append((node, True))
            stack.extend((n, False) for n in nexts if n not in done)
            continue
        done.add(node)
        if any(n in reaching for n in nexts):
            reaching.add(node)
    return reaching
