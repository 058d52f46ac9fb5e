"""What recorded dynamics show, as numbers and plain words, for `dpscope dynamics` and the report.

Per run: the Spearman rank correlation between layer depth and the layer's RWC (mean over
training), for both RWC forms, over all layers and with the first and last layer left out
(the papers' observation is a positive correlation: later layers change more); the layers
that changed most; and for private runs, how each layer's RWC compares with what the DP noise
alone predicts.

The noise prediction: DP-SGD adds N(0, (sigma C)^2) to each coordinate of the clipped sum and
divides by the expected batch B, so over an interval of T steps of SGD with learning rate lr
and momentum m the noise moves each weight by a Gaussian of standard deviation
s = lr * sigma * C / B * sqrt(T) / (1 - m), and E|dw| = s * sqrt(2 / pi). With the weight scales
recorded at the interval's start (`rwc.weight_scales_tensor`), noise alone gives
rwc_l1 = E|dw| / mean|w| and rwc_mean_ratio = E|dw| * mean(1/|w|). A ratio observed / predicted
near 1 says a layer's weight change is the noise's; above 1, the gradient adds to it. Weight
decay is left out of the prediction (dpscope's private recipe uses none); for other
optimizers than SGD there is no prediction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from scipy.stats import spearmanr

from dpscope.dynamics.series import DynamicsSeries, row_nanmean
from dpscope.errors import ConfigError

__all__ = ["RWC_METRICS", "PREFERRED_METRIC", "rwc_metric_key", "depth_spearman",
           "noise_predicted_rwc", "RunFindings", "run_findings", "finding_sentences"]

# option value -> the series' metric key
RWC_METRICS = {"rwc_l1": "rwc_l1", "rwc_mean": "rwc_mean_ratio"}
PREFERRED_METRIC = "rwc_l1"  # the mean ratio spikes where a weight is near zero
_SCALE_OF = {"rwc_l1": "weight_abs_mean", "rwc_mean_ratio": "weight_inv_abs_mean"}
TREND_RHO = 0.3  # |rho| below this: no clear depth trend
NOISE_MATCH = 0.1  # observed / predicted within 1 +- this: the change is the noise's
TOP_LAYERS = 3


def rwc_metric_key(name: str) -> str:
    """The series key for an RWC option value ("rwc_l1", "rwc_mean"; the keys themselves too)."""
    if name in RWC_METRICS:
        return RWC_METRICS[name]
    if name in RWC_METRICS.values():
        return name
    raise ConfigError(f"unknown RWC metric {name!r}; choose rwc_l1 (||dw||_1/||w||_1, "
                      "preferred) or rwc_mean (mean of |dw|/|w|, the authors' code)")


def depth_spearman(layer_values: Sequence[float]) -> float | None:
    """Spearman's rho between depth (0, 1, ...) and the values, or None when undefined
    (fewer than 3 finite values, or all equal)."""
    values = np.asarray(layer_values, dtype=np.float64)
    depth = np.arange(len(values))
    keep = np.isfinite(values)
    if keep.sum() < 3 or np.ptp(values[keep]) == 0:
        return None
    return float(spearmanr(depth[keep], values[keep]).statistic)


def noise_predicted_rwc(series: DynamicsSeries, info: dict[str, Any], metric: str) -> np.ndarray | None:
    """(layers, points) RWC that the DP noise alone would cause (module docstring), or None
    for a non-private run, a non-SGD optimizer, or a run recorded without weight scales."""
    needed = ("noise_multiplier", "max_grad_norm", "expected_batch_size", "lr")
    if any(info.get(key) is None for key in needed) or info.get("optimizer", "sgd") != "sgd":
        return None
    momentum = float(info.get("momentum") or 0.0)
    if not 0 <= momentum < 1:
        return None
    scale = series.matrix(_SCALE_OF[metric])
    if not np.isfinite(scale).any():
        return None
    steps = np.asarray([p["steps"] for p in series.points], dtype=np.float64)
    per_step = (float(info["lr"]) * float(info["noise_multiplier"]) * float(info["max_grad_norm"])
                / float(info["expected_batch_size"]) / (1.0 - momentum))
    mean_abs_change = math.sqrt(2.0 / math.pi) * per_step * np.sqrt(steps)  # (points,)
    if metric == "rwc_l1":
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(scale > 0, mean_abs_change[None, :] / scale, np.nan)
    return mean_abs_change[None, :] * scale


@dataclass
class RunFindings:
    """One run's depth trend, most-changing layers and noise comparison, per RWC form."""

    name: str
    label: str
    private: bool
    spearman: dict[str, float | None] = field(default_factory=dict)  # all layers
    spearman_inner: dict[str, float | None] = field(default_factory=dict)  # first, last left out
    top_layers: dict[str, list[str]] = field(default_factory=dict)  # highest mean RWC first
    noise_ratio: dict[str, dict[str, float]] = field(default_factory=dict)  # median, min, max
    spearman_noise: dict[str, float | None] = field(default_factory=dict)  # of the prediction
    layers: list[str] = field(default_factory=list)
    layer_means: dict[str, list[float]] = field(default_factory=dict)  # RWC, mean over training

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "label": self.label, "private": self.private,
                "spearman_depth_vs_rwc": self.spearman,
                "spearman_depth_vs_rwc_inner_layers": self.spearman_inner,
                "top_layers": self.top_layers, "observed_over_noise_predicted": self.noise_ratio,
                "spearman_depth_vs_noise_predicted_rwc": self.spearman_noise,
                "layers": self.layers, "layer_mean_rwc": self.layer_means}


def run_findings(name: str, label: str, series: DynamicsSeries, info: dict[str, Any]) -> RunFindings:
    """The findings for one run, for both RWC forms (keys of `RWC_METRICS.values()`)."""
    private = info.get("noise_multiplier") is not None or info.get("epsilon") is not None
    labels = [layer.label for layer in series.layers]
    found = RunFindings(name, label, private, layers=labels)
    for metric in RWC_METRICS.values():
        observed = series.matrix(metric)
        means = row_nanmean(observed)
        found.layer_means[metric] = means.tolist()
        found.spearman[metric] = depth_spearman(means)
        found.spearman_inner[metric] = depth_spearman(means[1:-1]) if len(means) > 4 else None
        found.top_layers[metric] = _top(labels, means)
        predicted = noise_predicted_rwc(series, info, metric)
        if predicted is not None:
            found.spearman_noise[metric] = depth_spearman(row_nanmean(predicted))
            both = np.isfinite(observed) & np.isfinite(predicted) & (predicted > 0)
            per_layer = [observed[l, both[l]].sum() / predicted[l, both[l]].sum()
                         for l in range(len(labels)) if both[l].any()]
            if per_layer:
                found.noise_ratio[metric] = {"median": float(np.median(per_layer)),
                                             "min": float(np.min(per_layer)),
                                             "max": float(np.max(per_layer))}
    return found


def _top(labels: Sequence[str], means: np.ndarray) -> list[str]:
    """The TOP_LAYERS labels of highest mean RWC, highest first (NaN rows never)."""
    order = [i for i in np.argsort(-np.nan_to_num(means, nan=-np.inf), kind="stable")
             if np.isfinite(means[i])]
    return [labels[i] for i in order[:TOP_LAYERS]]


def _mean(values: Sequence[float | None]) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else None


def _trend(rho: float | None) -> str:
    if rho is None:
        return "no depth trend can be measured"
    if rho >= TREND_RHO:
        return "later layers change more"
    if rho <= -TREND_RHO:
        return "earlier layers change more"
    return "no clear depth trend"


def _rho_text(rho: float | None) -> str:
    return "n/a" if rho is None else f"{rho:+.2f}"


def finding_sentences(findings: Sequence[RunFindings], metric: str = PREFERRED_METRIC) -> list[str]:
    """Plain-words findings per setting (runs sharing a label averaged), computed from the
    numbers: the depth trend under `metric`, the other form beside it, the most-changing
    layers, the noise comparison; then how each private setting differs from the
    non-private one."""
    metric = rwc_metric_key(metric)
    other = next(m for m in RWC_METRICS.values() if m != metric)
    settings: dict[str, list[RunFindings]] = {}
    for found in findings:
        settings.setdefault(found.label, []).append(found)
    sentences, rho_of = [], {}
    for label, runs in settings.items():
        rho = _mean([f.spearman[metric] for f in runs])
        inner = _mean([f.spearman_inner[metric] for f in runs])
        rho_of[label] = rho
        if len({tuple(f.layers) for f in runs}) == 1:  # one model: rank the seeds' mean
            tops = _top(runs[0].layers, np.nanmean([f.layer_means[metric] for f in runs], axis=0))
        else:
            tops = runs[0].top_layers[metric]
        text = (f"{label} ({len(runs)} run{'s' if len(runs) > 1 else ''}): {_trend(rho)} "
                f"(Spearman ρ depth vs {metric} = {_rho_text(rho)}; without the first and last "
                f"layer {_rho_text(inner)}; {other}: "
                f"{_rho_text(_mean([f.spearman[other] for f in runs]))}). "
                f"Most-changing layers: {', '.join(tops)}.")
        ratios = [f.noise_ratio[metric]["median"] for f in runs if metric in f.noise_ratio]
        if ratios:
            low = min(f.noise_ratio[metric]["min"] for f in runs if metric in f.noise_ratio)
            high = max(f.noise_ratio[metric]["max"] for f in runs if metric in f.noise_ratio)
            ratio = _mean(ratios)
            verdict = ("the weight change is what the DP noise alone predicts"
                       if abs(ratio - 1) <= NOISE_MATCH else
                       "the gradient adds to the noise's change" if ratio > 1 else
                       "less change than the noise alone predicts (check the run's settings)")
            noise_rho = _mean([f.spearman_noise.get(metric) for f in runs])
            text += (f" Observed / noise-predicted RWC: median {ratio:.2f} over layers "
                     f"(range {low:.2f}–{high:.2f}): {verdict}. The noise has the same size on "
                     f"every weight, so alone it gives each layer an RWC inverse to its weight "
                     f"scale: ρ depth vs noise-predicted RWC = {_rho_text(noise_rho)}.")
        sentences.append(text)
    sentences += _privacy_changes(settings, rho_of)
    return sentences


def _privacy_changes(settings: dict[str, list[RunFindings]], rho_of: dict[str, float | None]) -> list[str]:
    """Each private setting against the non-private setting of the same model and data."""
    def rest(label: str) -> str:  # model and data, without privacy or recipe ("[lr=...]")
        return label.partition(" · ")[2].partition(" [")[0]

    reference = {rest(label): label for label, runs in settings.items() if not runs[0].private}
    out = []
    for label, runs in settings.items():
        base = reference.get(rest(label))
        if not runs[0].private or base is None or None in (rho_of[label], rho_of[base]):
            continue
        a, b = rho_of[base], rho_of[label]
        change = ("reverses the depth trend" if a * b < 0 and min(abs(a), abs(b)) >= TREND_RHO
                  else "keeps the depth trend" if _trend(a) == _trend(b)
                  else "changes the depth trend")
        setting = label.partition(" · ")[0] + (f" [{label.partition(' [')[2]}" if " [" in label else "")
        out.append(f"{setting} vs non-private ({rest(label)}): DP {change} "
                   f"(ρ {a:+.2f} → {b:+.2f}).")
    return out
