"""The per-layer engine shared by materialize, crb, ghost, bookkeeping and auto.

One forward and one output-gradient backward (`capture`); then per layer, following its plan,
squared norms (ghost or from materialised per-example gradients); then weights from the clip
rule; then per layer the weighted sum (stored, contraction, or one shared second backward).
"""

from __future__ import annotations

from typing import Callable

import torch

from dpscope.clipping.capture import Captured, LayerCall, capture
from dpscope.clipping.clip_rules import ClipRule
from dpscope.clipping.registry import Grads, LayerSlot
from dpscope.clipping.result import ClipResult
from dpscope.clipping.rules._common import flat_sq_norm, weighted_example_sum
from dpscope.clipping.strategies.plans import MATERIALIZED, LayerPlan, PlanFn

Sums = dict[str, torch.Tensor]


def _materialized(slot: LayerSlot, calls: list[LayerCall], method: str = "materialize") -> Grads:
    rule = slot.rule
    fn = {"crb": rule.crb_grads, "batched": rule.batched_grads}.get(method) or rule.per_example_grads
    total: Grads = {}
    for c in calls:
        for name, g in fn(slot.module, c.inputs, c.grad).items():
            if name in slot.param_names:
                total[name] = total[name] + g if name in total else g
    return total


def _effective(plan: LayerPlan, slot: LayerSlot, calls: list[LayerCall]) -> LayerPlan:
    """Ghost norms have cross terms between calls of a shared layer: materialise those instead."""
    if len(calls) > 1 and plan.norm == "ghost":
        return LayerPlan("materialize", "stored" if plan.total == "contraction" else plan.total)
    return plan


def decide_plans(slots: list[LayerSlot], plan_fns: list[PlanFn], captured: Captured) -> list[LayerPlan]:
    plans = []
    for slot, fn, calls in zip(slots, plan_fns, captured.calls):
        plans.append(fn(slot, calls[0].inputs, calls[0].grad) if calls else MATERIALIZED)
    return plans


def _contraction(slot: LayerSlot, calls: list[LayerCall], weights: dict[str, torch.Tensor]) -> Grads:
    total: Grads = {}
    for c in calls:
        for name, s in slot.rule.weighted_grad_sum(slot.module, c.inputs, c.grad, weights).items():
            total[name] = total[name] + s if name in total else s
    return total


def run_layerwise(
    model: torch.nn.Module,
    slots: list[LayerSlot],
    plans_for: Callable[[Captured], list[LayerPlan]],
    loss_fn: Callable,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    clip: ClipRule | None,
    *,
    keep_graph: bool,
) -> tuple[ClipResult, Sums]:
    captured = capture(model, slots, loss_fn, inputs, targets, keep_graph=keep_graph)
    with torch.no_grad():  # rules run on detached tensors; weight tensors must not be tracked
        return _norms_and_sums(slots, plans_for, captured, inputs, clip)


def _norms_and_sums(slots, plans_for, captured: Captured, inputs: torch.Tensor, clip: ClipRule | None) -> tuple[ClipResult, Sums]:
    plans = [_effective(p, s, c) for p, s, c in zip(plans_for(captured), slots, captured.calls)]
    batch = inputs.shape[0]
    sq_norms: dict[str, torch.Tensor] = {}
    stored: dict[int, Grads] = {}
    for i, (slot, plan, calls) in enumerate(zip(slots, plans, captured.calls)):
        if not calls:
            sq_norms.update({slot.full_name(n): inputs.new_zeros(batch, dtype=torch.get_default_dtype()) for n in slot.param_names})
            continue
        if plan.norm == "ghost":
            local = slot.rule.ghost_sq_norms(slot.module, calls[0].inputs, calls[0].grad)
        else:
            stored[i] = _materialized(slot, calls, plan.norm)
            local = {n: flat_sq_norm(g) for n, g in stored[i].items()}
        sq_norms.update({slot.full_name(n): local[n] for n in slot.param_names})
    norms = torch.stack(list(sq_norms.values())).sum(0).sqrt() if sq_norms else inputs.new_zeros(batch)
    result = ClipResult(norms, sq_norms, captured.losses.detach())
    if clip is None:
        return result, {}
    weights = clip.weights(sq_norms, norms)
    return result, _clipped_sums(slots, plans, captured, stored, weights)


def _clipped_sums(
    slots: list[LayerSlot],
    plans: list[LayerPlan],
    captured: Captured,
    stored: dict[int, Grads],
    weights: dict[str, torch.Tensor],
) -> Sums:
    sums: Sums = {}
    backward_names: list[str] = []
    backward_params: list[torch.Tensor] = []
    second = [i for i, p in enumerate(plans) if p.total == "second_backward"]
    uniform = len({id(weights[s.full_name(n)]) for i in second for s in [slots[i]] for n in s.param_names}) <= 1
    for i, (slot, plan, calls) in enumerate(zip(slots, plans, captured.calls)):
        local_w = {n: weights[slot.full_name(n)] for n in slot.param_names}
        if not calls:
            sums.update({slot.full_name(n): torch.zeros_like(getattr(slot.module, n)) for n in slot.param_names})
            continue
        total = plan.total
        if total == "second_backward" and uniform:
            backward_names += [slot.full_name(n) for n in slot.param_names]
            backward_params += [getattr(slot.module, n) for n in slot.param_names]
            continue
        if total != "stored" and slot.rule.weighted_grad_sum is not None:
            local = _contraction(slot, calls, local_w)
        else:
            grads = stored[i] if i in stored else _materialized(slot, calls)
            local = {n: weighted_example_sum(grads[n], local_w[n]) for n in slot.param_names}
        sums.update({slot.full_name(n): local[n] for n in slot.param_names})
    if backward_params:
        w = weights[backward_names[0]]
        with torch.enable_grad():
            weighted_loss = (captured.losses * w).sum()
        grads = torch.autograd.grad(weighted_loss, backward_params, allow_unused=True)
        for name, p, g in zip(backward_names, backward_params, grads):
            sums[name] = torch.zeros_like(p) if g is None else g
    return sums
