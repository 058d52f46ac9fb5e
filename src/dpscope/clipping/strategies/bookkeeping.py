"""bookkeeping: ghost norms, then each layer's clipped sum directly as a weighted contraction of
its stored input and output gradient; one backward only (Bu et al. 2023)."""

from dpscope.clipping.strategies.plans import MATERIALIZED, LayerPlan

GHOST_BOOKKEEPING = LayerPlan("ghost", "contraction")


def plan(slot, a, d) -> LayerPlan:
    rule = slot.rule
    if rule.ghost_sq_norms is not None and rule.weighted_grad_sum is not None:
        return GHOST_BOOKKEEPING
    return MATERIALIZED
