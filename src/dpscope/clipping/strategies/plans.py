"""What a per-layer strategy decides for one layer: how to get norms, how to form the sum."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch

from dpscope.clipping.registry import LayerSlot

# materialize: rule.per_example_grads; crb: rule.crb_grads; fastest: rule.fastest_grads
NormMethod = Literal["ghost", "materialize", "crb", "fastest"]
# stored: sum_i w_i g_i from the materialised per-example gradients (B*p*q, cheap);
# contraction: the rule's weighted sum from A and w-scaled D (Bu et al. 2023's book-keeping);
#   with a non-ghost norm the per-example grads serve the norm only (auto's memory budget);
# second_backward: one more backward of sum_i w_i loss_i (Lee & Kifer 2021).
SumMethod = Literal["stored", "contraction", "second_backward"]


@dataclass(frozen=True)
class LayerPlan:
    norm: NormMethod
    total: SumMethod


PlanFn = Callable[[LayerSlot, torch.Tensor, torch.Tensor], LayerPlan]
MATERIALIZED = LayerPlan("materialize", "stored")
