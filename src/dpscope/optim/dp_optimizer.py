"""The DP optimizer: noise once per logical step, divide by the expected batch size, then step.

Contract: before `step()`, every trainable parameter's `.grad` holds the SUM over the logical
batch of clipped per-example gradients (each example's contribution has L2 norm <= C over all
parameters; the clipping engine sets it, possibly accumulated over physical chunks). `step()`:

1. adds N(0, (sigma C)^2) to every coordinate of every trainable parameter's sum, once;
2. divides by the EXPECTED batch size q N, never the realised one: the realised size is a
   function of the private data (Binomial(N, q)) and dividing by it would release it unnoised;
3. runs the wrapped torch optimizer (SGD with momentum, Adam, AdamW) on the result;
4. records the step (q, sigma) in the privacy ledger.

Edge cases:

- `requires_grad=False`: skipped (no noise, no update); frozen, never released.
- `.grad is None` (empty batch, unused layer): a zero sum, still noised. The accountant assumes
  every step releases a noised sum of every trainable coordinate; skipping the noise would
  release an exact zero and reveal that no example of the batch touched that parameter.
- `.grad` still the previous step's update (zero_grad forgotten): RuntimeError, before any
  parameter changes; it would otherwise be noised again as if it were a clipped sum.
- sigma = 0: no noise, and the ledger records sigma 0 (epsilon inf); for debugging only.
- dropped coordinates (gradient dropping): neither gradient nor noise; the mask is data
  independent, and releasing fewer noised coordinates costs no extra privacy.

Gradient dropping (Adamczewski et al. 2023): `drop_rule(step)` returns, per parameter name, a
boolean mask of the coordinates to UPDATE at this step; it must not look at private data. With
momentum or weight decay the inner optimizer can still move a dropped coordinate (from its state
or its value), which is post-processing of earlier releases.
"""

from __future__ import annotations

import weakref
from typing import Any, Callable, Iterable, Mapping

import torch

from dpscope.callbacks import StepReport
from dpscope.errors import ConfigError, PrivacyError
from dpscope.optim.noise import GaussianNoise
from dpscope.privacy import PrivacyLedger, PrivacyPlan

DropRule = Callable[[int], Mapping[str, torch.Tensor]]


class DPOptimizer(torch.optim.Optimizer):
    """Wraps a torch optimizer, sharing its parameter groups and state (LR schedulers work)."""

    def __init__(self, optimizer: torch.optim.Optimizer, *, noise_multiplier: float, max_grad_norm: float,
                 sample_rate: float, dataset_size: int, ledger: PrivacyLedger | None = None, seed: int = 0,
                 secure_rng: bool = False, param_names: Mapping[str, torch.Tensor] | None = None,
                 drop_rule: DropRule | None = None) -> None:
        super().__init__(optimizer.param_groups, optimizer.defaults)
        self.param_groups = optimizer.param_groups  # shared with the wrapped optimizer, not copied
        self.state = optimizer.state
        self.original_optimizer = optimizer
        self.noise_multiplier = noise_multiplier
        self.max_grad_norm = max_grad_norm
        self.sample_rate = sample_rate
        self.dataset_size = dataset_size
        self._check_settings()
        self.ledger = ledger if ledger is not None else PrivacyLedger()
        self.noise = GaussianNoise(seed=seed, secure=secure_rng)
        self.drop_rule = drop_rule
        self.steps_taken = 0
        self._names = {id(p): name for name, p in (param_names or {}).items()}
        self._clipped_sum_norms: dict[str, torch.Tensor] = {}
        self._last_updates: dict[str, weakref.ref] = {}  # the grads step() wrote, to catch reuse

    @classmethod
    def from_plan(cls, optimizer: torch.optim.Optimizer, plan: PrivacyPlan, **options: Any) -> "DPOptimizer":
        """The optimizer a privacy plan describes (sigma, C, q, N, noise source)."""
        return cls(optimizer, noise_multiplier=plan.noise_multiplier, max_grad_norm=plan.max_grad_norm,
                   sample_rate=plan.sample_rate, dataset_size=plan.dataset_size,
                   secure_rng=plan.secure_rng, **options)

    @property
    def expected_batch_size(self) -> float:
        return self.sample_rate * self.dataset_size

    @property
    def noise_std(self) -> float:
        """Std of the noise added to each summed coordinate: sigma * C."""
        return self.noise_multiplier * self.max_grad_norm

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> None:  # type: ignore[override]
        """Noise the clipped sums, divide by q N, update, and record the step in the ledger."""
        if closure is not None:
            raise ValueError("DPOptimizer.step takes no closure: set p.grad to the clipped sum first")
        self._check_settings()
        masks = self.drop_rule(self.steps_taken) if self.drop_rule is not None else {}
        for name, param in self._trainable():
            self._refuse_stale_grad(name, param)  # all checked before any is changed
        self._clipped_sum_norms = {}
        for name, param in self._trainable():
            clipped_sum = param.grad if param.grad is not None else torch.zeros_like(param)
            self._clipped_sum_norms[name] = torch.linalg.vector_norm(clipped_sum)
            noisy = clipped_sum
            if self.noise_std > 0:
                noisy = clipped_sum + self.noise.like(param, self.noise_std)
            update = noisy / self.expected_batch_size
            if name in masks:
                update = torch.where(masks[name].to(update.device), update, torch.zeros_like(update))
            param.grad = update
            self._last_updates[name] = weakref.ref(update)
        self.original_optimizer.step()
        self.ledger.record_step(self.sample_rate, self.noise_multiplier)
        self.steps_taken += 1

    def fill_report(self, report: StepReport) -> None:
        """Put this step's noise std, C and per-parameter clipped-sum norms (before noise) in `report`.

        The clipped-sum norms are computed from private data WITHOUT noise: they are diagnostics
        for the researcher, and publishing them is outside the accounted guarantee.
        """
        report.noise_std = self.noise_std
        report.max_grad_norm = self.max_grad_norm
        norms = self._clipped_sum_norms
        values = torch.stack(list(norms.values())).tolist() if norms else []  # one device sync
        report.clipped_sum_norms = dict(zip(norms, values))

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if hasattr(self, "original_optimizer"):
            self.original_optimizer.add_param_group(param_group)
        else:  # during torch.optim.Optimizer.__init__
            super().add_param_group(param_group)

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        """Inner optimizer state, noise generator state and ledger: enough for an exact resume."""
        return {"optimizer": self.original_optimizer.state_dict(), "noise": self.noise.state_dict(),
                "ledger": self.ledger.to_dict(), "steps_taken": self.steps_taken,
                "noise_multiplier": self.noise_multiplier, "sample_rate": self.sample_rate}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        self.original_optimizer.load_state_dict(state_dict["optimizer"])
        # torch's load_state_dict builds new groups and state: share them again, or an LR
        # scheduler bound to this wrapper would set rates the wrapped optimizer never reads
        self.param_groups = self.original_optimizer.param_groups
        self.state = self.original_optimizer.state
        self.noise.load_state_dict(state_dict["noise"])
        self.ledger.segments[:] = PrivacyLedger.from_dict(state_dict["ledger"]).segments
        self.steps_taken = state_dict["steps_taken"]
        self.noise_multiplier, self.sample_rate = state_dict["noise_multiplier"], state_dict["sample_rate"]

    def _refuse_stale_grad(self, name: str, param: torch.Tensor) -> None:
        last = self._last_updates.get(name)
        if param.grad is not None and last is not None and param.grad is last():
            raise RuntimeError(
                f"{name}.grad still holds the previous step's noised update; call zero_grad() and "
                "compute the clipped sum again before each step()"
            )

    def _trainable(self) -> Iterable[tuple[str, torch.Tensor]]:
        index = 0
        for group in self.param_groups:
            for param in group["params"]:
                if param.requires_grad:
                    yield self._names.get(id(param), f"param{index}"), param
                index += 1

    def _check_settings(self) -> None:
        if not 0 < self.sample_rate <= 1:
            raise PrivacyError(f"sample_rate must be in (0, 1], got {self.sample_rate}")
        if not self.noise_multiplier >= 0 or not 0 < self.max_grad_norm < float("inf"):
            raise PrivacyError(f"need noise_multiplier >= 0 and 0 < max_grad_norm < inf, got "
                               f"{self.noise_multiplier}, {self.max_grad_norm}")
        if self.dataset_size < 1:
            raise PrivacyError(f"dataset_size must be >= 1, got {self.dataset_size}")


def make_dp_optimizer(params: Iterable[torch.Tensor] | Mapping[str, torch.Tensor], plan: PrivacyPlan, *,
                      kind: str = "sgd", lr: float, momentum: float = 0.0, weight_decay: float = 0.0,
                      **options: Any) -> DPOptimizer:
    """A DPOptimizer over SGD (with momentum), Adam or AdamW for `plan`.

    Pass `dict(model.named_parameters())` to get parameter names in step reports.
    """
    named = dict(params) if isinstance(params, Mapping) else None
    inner = make_torch_optimizer(named.values() if named is not None else params, kind=kind, lr=lr,
                                 momentum=momentum, weight_decay=weight_decay)
    return DPOptimizer.from_plan(inner, plan, param_names=named, **options)


def make_torch_optimizer(params: Iterable[torch.Tensor], *, kind: str = "sgd", lr: float,
                         momentum: float = 0.0, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """The plain torch optimizer over the trainable `params` (non-private runs use it directly)."""
    if kind not in _INNER:
        raise ConfigError(f"unknown optimizer {kind!r}; choose one of {', '.join(_INNER)}")
    trainable = [p for p in params if p.requires_grad]
    return _INNER[kind](trainable, lr=lr, momentum=momentum, weight_decay=weight_decay)


def _sgd(params, *, lr, momentum, weight_decay):
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


def _adam(params, *, lr, momentum, weight_decay):
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


def _adamw(params, *, lr, momentum, weight_decay):
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


_INNER = {"sgd": _sgd, "adam": _adam, "adamw": _adamw}
