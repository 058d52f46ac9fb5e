"""One forward pass that records each covered layer's input, then one backward that hands each
layer the gradient D of the summed per-example losses with respect to its output, as soon as
autograd computes it.

The backward asks autograd only for the output gradients of "source" layers, those whose input
depends on nothing differentiable (the stem convolution on raw images, an embedding of ids):
every other layer lies on a path to one of them, so autograd runs its node and a pre-hook on it
(taken when the layer ran, so later in-place operations on the output do not matter) catches D
and hands it to `on_grad` at once. A strategy reduces D there (to norms, per-example gradients)
and frees it while the backward goes on, so peak memory stays near that of non-private
training; `on_grad` may also drop `call.inputs` once it no longer needs A (each input is
checked for in-place edits just before its `on_grad`). Parameter-gradient kernels and the inputs' gradient are never computed. A layer that
the graph search finds on no such path gets its D captured directly, like a source.

A layer whose rule has a `fused_forward` (GroupNorm on the CPU) runs that forward during the
pass (its module's `forward` is swapped for the pass only); its backward computes the input
gradient and the per-example gradients together and hands them over, so `on_grad` gets the
call with `grads` set, after the layer's backward instead of before it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch.autograd.graph import GradientEdge, get_gradient_edge

from dpscope.clipping.checks import check_losses
from dpscope.clipping.registry import Grads, LayerSlot
from dpscope.errors import UnsupportedLayerError


@dataclass
class LayerCall:
    """One call of a covered layer: its input A and where its output entered the graph."""

    slot: int  # index into the slot list
    inputs: torch.Tensor | None  # None once on_grad has released it (see module docstring)
    is_source: bool  # its input depends on nothing differentiable
    version: int  # version counter of `inputs` when recorded: detects later in-place edits
    edge: GradientEdge
    out_shape: torch.Size
    out_like: torch.Tensor  # a 0-element tensor of the output's dtype/device
    hand_off: HandOff | None = None  # set where the layer ran its rule's fused_forward
    grads: Grads | None = None  # per-example grads its fused backward handed over

    def zeros(self) -> torch.Tensor:
        return self.out_like.new_zeros(self.out_shape)


OnGrad = Callable[[LayerCall, torch.Tensor], None]


class HandOff:
    """Where a fused backward (`LayerRule.fused_forward`, which hands over once) delivers one
    call's per-example grads: to `deliver`, set by capture only for calls whose backward it runs
    and cleared when its backward is done."""

    def __init__(self) -> None:
        self.deliver: Callable[[Grads, torch.Tensor], None] | None = None

    def __call__(self, grads: Grads, d: torch.Tensor) -> None:
        if self.deliver is not None:
            self.deliver(grads, d)


def _fused_forward(slot: LayerSlot, index: int, ran: dict[int, HandOff]) -> Callable:
    """The module's forward for the pass: the rule's fused forward where it applies, noting
    the call's hand-off in `ran` for the recorder, else the module's own."""
    own = slot.module.forward

    def forward(*args, **kwargs):
        hand_off = HandOff()
        out = slot.rule.fused_forward(slot.module, args[0], hand_off) if len(args) == 1 and not kwargs else None
        if out is None:
            return own(*args, **kwargs)
        ran[index] = hand_off
        return out

    return forward


def _recorder(calls: list[LayerCall], slot: int, path: str, fused: dict[int, HandOff]) -> Callable:
    def hook(module, args, output):
        hand_off = fused.pop(slot, None)
        if not torch.is_grad_enabled():
            return  # a sub-forward without gradient (e.g. a constant reference) adds no term to the loss
        if not isinstance(output, torch.Tensor) or output.grad_fn is None:
            raise UnsupportedLayerError(
                f"layer '{path}' returned no tensor attached to the graph; per-example gradients "
                "need a forward pass with gradients enabled"
            )
        a = args[0]
        calls.append(
            LayerCall(slot, a.detach(), not a.requires_grad, a._version, get_gradient_edge(output), output.shape,
                      output.new_empty(0), hand_off)
        )

    return hook


def _check_unmodified(slots: list[LayerSlot], c: LayerCall) -> None:
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
    fused: dict[int, HandOff] = {}
    handles = [
        slot.module.register_forward_hook(_recorder(calls, i, slot.path or "<root>", fused)) for i, slot in enumerate(slots)
    ]
    swapped = [(i, slot.module) for i, slot in enumerate(slots)
               if slot.rule.fused_forward is not None and "forward" not in vars(slot.module)]
    for i, module in swapped:
        module.forward = _fused_forward(slots[i], i, fused)
    try:
        losses = loss_fn(model(inputs), targets)
    finally:
        for h in handles:
            h.remove()
        for _, module in swapped:
            del module.forward
    check_losses(losses, inputs.shape[0])
    if losses.grad_fn is None:
        raise UnsupportedLayerError("the losses are not attached to the graph; per-example gradients need "
                                    "a forward pass with gradients enabled (not under torch.no_grad)")
    on_forward(calls)
    reaching = _nodes_reaching(losses.grad_fn, {c.edge.node for c in calls if c.is_source})
    hooked = [c for c in calls if not c.is_source and c.edge.node in reaching]
    direct = [c for c in calls if c.is_source or c.edge.node not in reaching]
    seen: set[int] = set()

    def prehook_for(call: LayerCall) -> Callable:
        def prehook(grad_outputs):
            grad = grad_outputs[call.edge.output_nr]
            seen.add(id(call))
            _check_unmodified(slots, call)
            on_grad(call, call.zeros() if grad is None else grad)

        return prehook

    def deliver_for(call: LayerCall) -> Callable:
        def deliver(grads: Grads, d: torch.Tensor) -> None:
            seen.add(id(call))
            _check_unmodified(slots, call)
            call.grads = grads
            on_grad(call, d)

        return deliver

    for c in hooked:
        if c.hand_off is not None:
            c.hand_off.deliver = deliver_for(c)
    hook_handles = [c.edge.node.register_prehook(prehook_for(c)) for c in hooked if c.hand_off is None]
    try:
        edges = [c.edge for c in direct]
        grads = torch.autograd.grad(losses.sum(), edges, allow_unused=True, retain_graph=keep_graph) if edges else ()
    finally:
        for h in hook_handles:
            h.remove()
        for c in calls:
            if c.hand_off is not None:
                c.hand_off.deliver = None  # a later backward through the graph hands nothing over
    for c, g in zip(direct, grads):
        _check_unmodified(slots, c)
        on_grad(c, c.zeros() if g is None else g)
    for c in hooked:
        if id(c) not in seen:  # output unused by the loss
            _check_unmodified(slots, c)
            on_grad(c, c.zeros())
    return losses, calls


def _nodes_reaching(root, targets: set) -> set:
    """Autograd nodes from which a node in `targets` is reachable (targets included)."""
    reaching = set(targets)
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
