"""auto's memory budget: keep the step's estimated peak within non-private's plus a headroom.

A materialised layer holds B x (its parameters) from the moment its output gradient arrives
until the clipped sums are formed after the backward; the book-keeping path instead keeps the
layer's input A and output gradient D. Meanwhile the backward frees activations as it goes
(the engine drops each A it no longer needs). So the peak is estimated along the backward
(layers in reverse forward order): at each layer, the activations not yet freed plus what the
layers already processed hold. Activations are the bytes autograd saved in the forward (the
non-private step holds the same), spread over the layers in proportion to their inputs.

While the estimate exceeds activations + `max_extra_bytes`, the materialised layer held at the
peak whose move frees the most (B*numel - A - D bytes) goes to the book-keeping path, even if
that costs a little time. The default headroom is AUTO_HEADROOM of the activations: the
non-private peak is about the activations, so this keeps the step near or below 1.5x it with
room for scratch buffers (unfolded patches) the estimate does not count.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Literal, Union

import torch

from dpscope.clipping.strategies.plans import LayerPlan

MaxExtraBytes = Union[int, Literal["auto"], None]
AUTO_HEADROOM = 0.25  # of the activation bytes; measured peaks run above the estimate by scratch


@dataclass(frozen=True)
class CallFootprint:
    """Bytes one layer call adds or holds, in forward order."""

    slot: int
    activation_bytes: int  # its input A if not counted before (0 for a source: the caller holds it)
    kept_bytes: int  # what the book-keeping path keeps until the sums: D, and A unless a source
    materialized_bytes: int  # B * (trainable parameters) * element size


def estimated_peak(calls: list[CallFootprint], plans: dict[int, LayerPlan], activations: float) -> tuple[float, int]:
    """(bytes, index of the call at the peak) along the backward, for the given plans."""
    scale = activations / max(1, sum(c.activation_bytes for c in calls))
    alive, held, peak, at = float(activations), 0.0, 0.0, 0
    materialized: set[int] = set()
    for k in reversed(range(len(calls))):
        call, plan = calls[k], plans.get(calls[k].slot)
        if plan is not None and plan.total == "stored" and call.slot not in materialized:
            materialized.add(call.slot)
            held += call.materialized_bytes
        elif plan is not None and plan.total == "contraction":
            held += call.kept_bytes
        if alive + held > peak:
            peak, at = alive + held, k
        alive -= call.activation_bytes * scale
    return peak, at


def within_budget(
    calls: list[CallFootprint], plans: dict[int, LayerPlan], movable: dict[int, LayerPlan], activations: float,
    max_extra_bytes: MaxExtraBytes,
) -> None:
    """Move layers in `movable` (slot -> its book-keeping plan) until the estimate fits; in place."""
    if max_extra_bytes is None or not calls:
        return
    extra = AUTO_HEADROOM * activations if max_extra_bytes == "auto" else float(max_extra_bytes)
    saving = {c.slot: c.materialized_bytes - c.kept_bytes for c in calls if c.slot in movable}
    while True:
        peak, at = estimated_peak(calls, plans, activations)
        if peak <= activations + extra:
            return
        held = {c.slot for c in calls[at:]}
        candidates = [s for s in held if s in movable and plans[s].total == "stored" and saving[s] > 0]
        if not candidates:
            return
        best = max(candidates, key=lambda s: saving[s])
        plans[best] = movable[best]


@contextmanager
def saved_activation_bytes() -> Iterator[list[int]]:
    """Count the bytes autograd saves for the backward inside the block (parameters excluded).

    Yields a one-element list holding the running total. Saved tensors pass through unchanged;
    the version check that saved-tensor hooks bypass is done here, so an in-place edit of a
    saved tensor still fails the backward.
    """
    total = [0]
    seen: set[int] = set()

    def pack(t: torch.Tensor):
        if not (t.is_leaf and t.requires_grad):
            storage = t.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                total[0] += storage.nbytes()
        return t, t._version

    def unpack(packed):
        t, version = packed
        if t._version != version:
            raise RuntimeError(
                "one of the variables needed for gradient computation has been modified by an inplace operation"
            )
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        yield total
