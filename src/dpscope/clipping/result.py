"""What one pass of the engine returns."""

from __future__ import annotations

from dataclasses import dataclass

import torch




@dataclass(frozen=True)
class ClipResult:
    """Per-example quantities of one batch; gradients themselves are left in `p.grad`.

    per_example_norms: (B,) L2 norm of each example's gradient over all trainable parameters,
    before clipping. per_param_sq_norms: parameter name -> (B,) squared norms (they sum to
    per_example_norms**2). per_example_losses: (B,) detached losses from the same forward pass.
    """

    per_example_norms: torch.Tensor
    per_param_sq_norms: dict[str, torch.Tensor]
    per_example_losses: torch.Tensor
