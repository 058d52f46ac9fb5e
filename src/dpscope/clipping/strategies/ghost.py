"""ghost: norms without per-example gradients (Lee & Kifer 2021; Li et al. 2022 for sequences),
then a second backward of sum_i w_i loss_i. Layers without a ghost rule (norm layers, whose
per-example gradients are (B, C)-sized) materialise theirs for the norm only. With weights
that differ between parameter groups (PerLayerClip) one backward cannot apply them, so the
engine forms those sums by contraction instead."""

from dpscope.clipping.strategies.plans import LayerPlan


def plan(slot, a, d) -> LayerPlan:
    return LayerPlan("ghost" if slot.rule.ghost_sq_norms is not None else "materialize", "second_backward")
