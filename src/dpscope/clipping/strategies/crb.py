"""crb: as materialize, but convolutions get their per-example kernel gradients from one grouped
convolution one dimension higher (Rochette et al. 2019)."""

from dpscope.clipping.strategies.plans import MATERIALIZED, LayerPlan


def plan(slot, a, d) -> LayerPlan:
    return LayerPlan("crb", "stored") if slot.rule.crb_grads is not None else MATERIALIZED
