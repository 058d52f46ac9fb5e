"""`WeightChangeTracker`: records per-layer learning dynamics during training.

Per tracked layer (every trainable weight with more than one dimension: conv kernels and
linear weights; 1-D parameters such as biases and norm scales when `include_1d=True`) and
per interval (each epoch, or every `every_steps` logical steps) it records both RWC forms
(`dpscope.dynamics.rwc`) against the previous interval's snapshot, and, averaged over the
interval from the loop's `StepReport`s (meanings in `series.LAYER_METRICS`):

- `grad_norm`: private runs (per-parameter per-example norms reported): the mean over all the
  interval's examples of each example's gradient norm for the layer. Non-private runs: the
  mean over steps of the norm of `p.grad`, the batch-mean gradient the loop leaves on the
  parameters at `on_step_end`. Private runs without per-parameter norms: NaN (p.grad then
  holds a clipped, possibly noised sum, which is not comparable).
- `clipped_fraction` (one value for the model): with flat clipping, an example is clipped as
  a whole, so this is the fraction of the interval's examples with gradient norm above
  `max_grad_norm`; with per-layer clipping (below), the fraction of examples with any
  parameter's gradient over that parameter's bound. Per layer, `clipped_share` says where
  the clipped examples' gradient lies: the mean over clipped examples of
  ||g_i,layer||^2 / ||g_i||^2 (shares over all parameters sum to 1). NaN in an interval
  with no clipped example.
- `clipped_fraction_per_layer`: with per-layer clipping, the step reports the bounds as
  `StepReport.extra["per_layer_max_grad_norms"]` (parameter name -> bound); this is then the
  fraction of examples whose layer norm exceeds its bound. NaN otherwise.
- `weight_abs_mean`, `weight_inv_abs_mean`: the scales the two RWC forms divide by, at the
  interval's start (`rwc.weight_scales_tensor`), so RWC can be compared with what DP noise
  alone would cause (`analyze.noise_prediction`).
- `noise_to_signal`: sum over steps of noise_std * sqrt(numel) over the sum of the L2 norms
  of the layer's clipped gradient sum (a ratio of interval means, robust to the near-empty
  batches of Poisson sampling): the expected noise norm over the signal norm before noise.

Cost: one extra copy of the tracked weights (the snapshot, updated in place); per step a
handful of tensor ops per layer on the device with no host synchronisation; O(weights) work
only once per interval. The partial interval left when training stops between step
boundaries is not recorded. `state_dict` holds the snapshot and the running sums, so a
resumed run continues the series exactly.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from dpscope.callbacks import Callback, LoopState, StepReport
from dpscope.dynamics.rwc import rwc_l1_tensor, rwc_mean_ratio_tensor, weight_scales_tensor
from dpscope.dynamics.series import DynamicsSeries, LayerInfo
from dpscope.errors import DataError

__all__ = ["WeightChangeTracker", "PER_LAYER_BOUNDS_KEY"]

PER_LAYER_BOUNDS_KEY = "per_layer_max_grad_norms"
_SUMS = ("grad", "share", "layer_clipped")  # (L,) float64 running sums on the model's device
_COUNTS = ("steps", "examples", "grad_count", "clip_examples", "bounded_examples", "noise_steps",
           "noise_std")


class WeightChangeTracker(Callback):
    """Relative weight change and gradient diagnostics per layer; see the module docstring."""

    name = "dynamics"

    def __init__(self, *, every_steps: int | None = None, include_1d: bool = False,
                 autosave: bool = True) -> None:
        if every_steps is not None and every_steps < 1:
            raise ValueError(f"every_steps must be >= 1 (got {every_steps}); None means each epoch")
        self.every_steps = every_steps
        self.include_1d = include_1d
        self.autosave = autosave  # write dynamics.json into the run folder at each epoch end
        self._series: DynamicsSeries | None = None
        self._params: list[torch.nn.Parameter] = []
        self._snapshot: list[torch.Tensor] = []
        self._pending: dict[str, Any] | None = None
        self._sums: dict[str, torch.Tensor] = {}
        self._counts: dict[str, Any] = {}
        self._sources: set[str] = set()

    # -- hooks ------------------------------------------------------------------------------
    def on_train_start(self, state: LoopState) -> None:
        named = [(n, p) for n, p in state.model.named_parameters()
                 if p.requires_grad and (p.dim() > 1 or self.include_1d)]
        if not named:
            raise DataError("the model has no trainable weight to track; "
                            "turn dynamics tracking off for this model")
        self._params = [p for _, p in named]
        self._sqrt_numel = torch.tensor([p.numel() for p in self._params], dtype=torch.float64).sqrt()
        device = self._params[0].device
        layers = [LayerInfo(n, tuple(p.shape)) for n, p in named]
        if self._pending is not None:
            self._restore(self._pending, layers, device)
            self._pending = None
            return
        unit, every = self._interval()
        self._series = DynamicsSeries(layers=layers, interval_unit=unit, interval_every=every)
        self._snapshot = [p.detach().clone() for p in self._params]
        self._reset(device)

    def on_step_end(self, state: LoopState, report: StepReport) -> None:
        if self._series is None:
            return
        self._counts["steps"] += 1
        self._counts["examples"] += report.batch_size
        sq = self._stacked_sq_norms(report)  # (L, B) or None
        self._accumulate_grad_norms(report, sq)
        self._accumulate_clipping(report, sq)
        self._accumulate_noise(report)
        if self.every_steps and state.step % self.every_steps == 0:
            self._record(state.epoch, state.step)

    def on_epoch_end(self, state: LoopState, metrics: dict[str, Any]) -> None:
        if self._series is None:
            return
        if not self.every_steps:
            self._record(state.epoch, state.step)
        if self.autosave and state.run_dir is not None:
            self.save(state.run_dir)

    def on_train_end(self, state: LoopState, summary: dict[str, Any]) -> None:
        if self._series is not None and self.autosave and state.run_dir is not None:
            summary["dynamics_file"] = self.save(state.run_dir).name

    def _interval(self) -> tuple[str, int]:
        return ("step", self.every_steps) if self.every_steps else ("epoch", 1)

    # -- results ----------------------------------------------------------------------------
    def series(self) -> DynamicsSeries:
        """The recorded series (`DynamicsSeries.rows()` gives it as tidy records)."""
        if self._series is None:
            raise RuntimeError("the tracker has not started: call on_train_start first")
        return self._series

    def save(self, run_dir: Path) -> Path:
        """Write `dynamics.json` into `run_dir` atomically; returns its path."""
        return self.series().save(run_dir)

    # -- checkpoint -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        if self._series is None:
            return {}
        return {
            "series": self._series.to_state(),
            "snapshot": [s.detach().to("cpu", copy=True) for s in self._snapshot],
            "sums": {k: v.detach().to("cpu", copy=True) for k, v in self._sums.items()},
            "signal": self._signal.clone(),
            "counts": {k: v.detach().to("cpu", copy=True) if isinstance(v, torch.Tensor) else v
                       for k, v in self._counts.items()},
            "sources": sorted(self._sources),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Takes effect at `on_train_start`, once the model's parameters are known."""
        self._pending = state or None

    def _restore(self, state: dict[str, Any], layers: list[LayerInfo], device) -> None:
        series = DynamicsSeries.from_json(state["series"])
        if series.layers != layers:
            raise DataError("the checkpoint's dynamics were recorded for other layers than "
                            "this model has; resume with the model the run was started with")
        wanted = self._interval()
        if (series.interval_unit, series.interval_every) != wanted:
            raise DataError(f"the checkpoint's dynamics were recorded every "
                            f"{series.interval_every} {series.interval_unit}(s), not every "
                            f"{wanted[1]} {wanted[0]}(s); resume with the run's own interval")
        self._series = series
        self._snapshot = [s.to(device=device, dtype=p.dtype, copy=True)
                          for s, p in zip(state["snapshot"], self._params)]
        self._sums = {k: v.to(device) for k, v in state["sums"].items()}
        self._signal = state["signal"].clone()
        self._counts = {k: v.to(device) if isinstance(v, torch.Tensor) else v
                        for k, v in state["counts"].items()}
        self._sources = set(state["sources"])

    # -- per step (O(layers) device ops, no host sync) --------------------------------------
    def _reset(self, device) -> None:
        n = len(self._params)
        self._sums = {k: torch.zeros(n, dtype=torch.float64, device=device) for k in _SUMS}
        self._counts = {k: 0 for k in _COUNTS}
        self._counts["clipped"] = torch.zeros((), dtype=torch.float64, device=device)
        self._counts["noise_std"] = 0.0
        # the clipped-sum norms arrive as Python floats: summed on the host, no device copy
        self._signal = torch.zeros(n, dtype=torch.float64)
        self._sources = set()

    def _stacked_sq_norms(self, report: StepReport) -> torch.Tensor | None:
        if report.per_param_sq_norms is None or report.batch_size == 0:
            return None
        found = [report.per_param_sq_norms.get(layer.name) for layer in self._series.layers]
        like = next(t for t in report.per_param_sq_norms.values())
        missing = torch.full_like(like, math.nan)
        stacked = torch.stack([missing if t is None else t for t in found])  # (L, B)
        return stacked.detach().to(self._sums["grad"].device, torch.float64)

    def _accumulate_grad_norms(self, report: StepReport, sq: torch.Tensor | None) -> None:
        if report.batch_size == 0:
            return
        if sq is not None:
            self._sums["grad"] += sq.sqrt().sum(dim=1)
            self._counts["grad_count"] += report.batch_size
            self._sources.add("per_example_mean")
        elif report.noise_std is None and report.per_param_sq_norms is None:
            grads = [p.grad if p.grad is not None else torch.zeros((), device=p.device)
                     for p in self._params]
            self._sums["grad"] += torch.stack(torch._foreach_norm(grads)).to(torch.float64)
            self._counts["grad_count"] += 1
            self._sources.add("batch_mean_gradient")

    def _accumulate_clipping(self, report: StepReport, sq: torch.Tensor | None) -> None:
        if report.batch_size == 0:
            return
        device = self._sums["grad"].device
        norms = report.per_example_norms
        if norms is None and report.per_param_sq_norms is not None:
            norms = torch.stack(list(report.per_param_sq_norms.values())).sum(0).sqrt()
        bounds = report.extra.get(PER_LAYER_BOUNDS_KEY)
        if bounds is not None and report.per_param_sq_norms is not None:
            clipped = self._count_per_layer_clipping(report, bounds, sq)
        elif report.max_grad_norm is not None and norms is not None:
            clipped = norms.detach().to(device, torch.float64) > report.max_grad_norm  # (B,)
        else:
            return
        self._counts["clip_examples"] += report.batch_size
        self._counts["clipped"] += clipped.sum()
        if sq is None or norms is None:
            return
        norms = norms.detach().to(device, torch.float64)
        weights = clipped / norms.square().clamp(min=torch.finfo(torch.float64).tiny)  # (B,)
        self._sums["share"] += sq @ weights

    def _count_per_layer_clipping(self, report: StepReport, bounds: dict[str, float],
                                  sq: torch.Tensor | None) -> torch.Tensor:
        """Per-layer clipping: counts per tracked layer; returns which examples had any
        parameter (tracked or not) over its own bound, i.e. were clipped somewhere."""
        device = self._sums["grad"].device
        names = [n for n in report.per_param_sq_norms if n in bounds]
        all_sq = torch.stack([report.per_param_sq_norms[n] for n in names]).to(device, torch.float64)
        all_limits = torch.tensor([bounds[n] for n in names], dtype=torch.float64, device=device)
        if sq is not None:
            limit = torch.tensor([bounds.get(layer.name, math.nan) for layer in self._series.layers],
                                 dtype=torch.float64, device=device)
            self._sums["layer_clipped"] += (sq > limit.square()[:, None]).sum(dim=1)
            self._counts["bounded_examples"] += report.batch_size
        return (all_sq > all_limits.square()[:, None]).any(dim=0)  # (B,)

    def _accumulate_noise(self, report: StepReport) -> None:
        if report.noise_std is None or report.clipped_sum_norms is None:
            return
        self._counts["noise_steps"] += 1
        self._counts["noise_std"] += report.noise_std
        self._signal += torch.tensor([report.clipped_sum_norms.get(layer.name, math.nan)
                                      for layer in self._series.layers], dtype=torch.float64)

    # -- per interval (O(weights), one host sync) -------------------------------------------
    def _record(self, epoch: int, step: int) -> None:
        series, sums, counts = self._series, self._sums, self._counts
        with torch.no_grad():
            rwc = torch.stack([
                torch.cat([torch.stack([rwc_mean_ratio_tensor(p, s), rwc_l1_tensor(p, s)]),
                           weight_scales_tensor(s)])
                for p, s in zip(self._params, self._snapshot)
            ]).T.cpu().tolist()  # (4, L)
            for s, p in zip(self._snapshot, self._params):
                s.copy_(p)
        nan = torch.full_like(sums["grad"], math.nan)
        clipped = float(counts["clipped"])
        examples = counts["examples"]
        values = {
            "rwc_mean_ratio": rwc[0],
            "rwc_l1": rwc[1],
            "weight_abs_mean": rwc[2],
            "weight_inv_abs_mean": rwc[3],
            "grad_norm": sums["grad"] / counts["grad_count"] if counts["grad_count"] else nan,
            "clipped_share": sums["share"] / clipped if clipped else nan,
            "clipped_fraction_per_layer": (sums["layer_clipped"] / counts["bounded_examples"]
                                           if counts["bounded_examples"] else nan),
            "noise_to_signal": (counts["noise_std"] * self._sqrt_numel / self._signal
                                if counts["noise_steps"] else nan),
        }
        for name, value in values.items():
            series.layer_metrics[name].append(value if isinstance(value, list) else value.cpu().tolist())
        series.global_metrics["clipped_fraction"].append(
            clipped / counts["clip_examples"] if counts["clip_examples"] else math.nan)
        series.grad_norm_source.append("+".join(sorted(self._sources)) or "none")
        series.points.append({"epoch": epoch, "step": step, "steps": counts["steps"],
                              "examples": examples})
        self._reset(sums["grad"].device)
