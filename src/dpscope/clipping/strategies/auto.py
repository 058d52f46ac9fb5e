"""auto: per layer, the cheaper path on top of book-keeping (mixed ghost clipping, Bu et al.
2022): the ghost norm (about B*T^2*(p+q) multiply-adds) plus the weighted contraction (B*T*p*q),
or the materialised per-example gradient (B*T*p*q) plus its norm and stored sum (memory-bound,
see MATERIALIZED_ENTRY_COST). Comparing norms alone, as Bu et al. do, misses that the ghost path
still pays a full contraction; on ViT linears that made it 1.6x slower than materialising. Materialised layers use the rule's fastest method (`fastest_grads` for
convolutions). The engine decides once per input shape and caches the decision."""

from dpscope.clipping.strategies import bookkeeping
from dpscope.clipping.strategies.plans import MATERIALIZED, LayerPlan


FASTEST = LayerPlan("fastest", "stored")


def memory_plan(slot, a, d, materialized: LayerPlan) -> LayerPlan:
    """The plan for a layer the memory budget moves off materialisation: sums by contraction,
    norms by ghost, or from per-example grads formed a slice at a time and dropped (the
    materialised path without its stored sum, at most twice its cost: cheaper than the ghost
    norm when positions are many, e.g. WRN convolutions at 16x16). Not where a rule
    materialises without scratch (the convolution C kernel): its ghost norms come from the
    same kernel without storing anything, or from Gram matrices where those are cheaper."""
    rule = slot.rule
    if rule.scratch_free is not None and materialized.norm == "fastest" and rule.scratch_free(slot.module, a, d):
        return bookkeeping.GHOST_BOOKKEEPING
    if rule_costs := slot.rule.costs:
        ghost_cost, materialize_cost = rule_costs(slot.module, a, d)
        if materialized.total == "stored" and 2 * materialize_cost < ghost_cost:
            return LayerPlan(materialized.norm, "contraction")
    return bookkeeping.GHOST_BOOKKEEPING


def plan(slot, a, d) -> LayerPlan:
    rule = slot.rule
    materialized = FASTEST if rule.fastest_grads is not None else MATERIALIZED
    if rule.costs is None or bookkeeping.plan(slot, a, d) is MATERIALIZED:
        return materialized
    ghost_cost, materialize_cost = rule.costs(slot.module, a, d)
    return bookkeeping.GHOST_BOOKKEEPING if ghost_cost < materialize_cost else materialized
