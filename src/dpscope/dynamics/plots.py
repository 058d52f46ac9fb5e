"""Figures of layer dynamics, built on `matplotlib.figure.Figure` (no pyplot, no global
backend state, safe in servers and tests) and written as PNG atomically.

Each `*_figure` function returns a Figure; `save_figure` writes it, `figure_base64` embeds it
in HTML. RWC spans orders of magnitude across layers and epochs, so its axes are logarithmic.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from dpscope.dynamics.aggregate import LayerClusters
from dpscope.dynamics.series import DynamicsSeries, LayerInfo, block_of, row_nanmean
from dpscope.io import write_bytes_atomic

__all__ = ["METRIC_LABELS", "rwc_heatmap_figure", "block_curves_figure", "cluster_curves_figure",
           "cluster_map_figure", "comparison_figure", "noise_figure", "privacy_figure", "save_figure",
           "figure_base64"]

METRIC_LABELS = {
    "rwc_mean_ratio": "RWC, mean |Δw| / |w| per interval",
    "rwc_l1": "RWC, ‖Δw‖₁ / ‖w‖₁ per interval",
    "grad_norm": "gradient L2 norm",
    "clipped_share": "share of clipped examples' ‖g‖²",
    "clipped_fraction_per_layer": "fraction of examples clipped (per-layer bound)",
    "noise_to_signal": "noise norm / clipped-sum norm",
}
_DPI = 150


def save_figure(fig: Figure, path: Path) -> Path:
    """Render `fig` to PNG in memory, then write it atomically; returns `path`."""
    write_bytes_atomic(Path(path), _png_bytes(fig))
    return Path(path)


def figure_base64(fig: Figure) -> str:
    """The figure as a base64 PNG, for `<img src="data:image/png;base64,...">`."""
    return base64.b64encode(_png_bytes(fig)).decode("ascii")


def _png_bytes(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI)  # every figure uses constrained layout
    return buffer.getvalue()


def _time_label(series: DynamicsSeries) -> str:
    return "epoch" if series.interval_unit == "epoch" else "optimisation step"


def _labels(layers: Sequence[LayerInfo]) -> list[str]:
    return [f"{i}: {layer.label}" for i, layer in enumerate(layers)]


def _positive_log_norm(values: np.ndarray):
    positive = values[np.isfinite(values) & (values > 0)]
    if positive.size == 0:
        return Normalize(0, 1)
    low, high = positive.min(), positive.max()
    return LogNorm(low, high if high > low else low * 10)


def _set_log_if_positive(ax, values: np.ndarray) -> None:
    """Log y when the values are positive and span more than a decade; linear otherwise."""
    finite = values[np.isfinite(values)]
    if finite.size and (finite > 0).all() and finite.max() > 10 * finite.min():
        ax.set_yscale("log")


def rwc_heatmap_figure(series: DynamicsSeries, *, metric: str = "rwc_mean_ratio",
                       title: str = "") -> Figure:
    """Layers (rows, input at the top) by time (columns), log colour scale."""
    values = series.matrix(metric)
    layers, points = values.shape
    fig = Figure(figsize=(min(5 + 0.25 * points, 14), min(2.5 + 0.22 * layers, 16)),
                 layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(values), aspect="auto", cmap="magma",
                      norm=_positive_log_norm(values), interpolation="nearest")
    ax.set_yticks(range(layers), _labels(series.layers), fontsize=7 if layers > 20 else 8)
    ticks = np.arange(0, points, -(-points // 10))  # at most 10 evenly spaced labels
    ax.set_xticks(ticks, [str(t) for t in series.time_axis()[ticks]])
    ax.set_xlabel(_time_label(series))
    ax.set_ylabel("layer (depth: name)")
    ax.set_title(title or f"Relative weight change per layer ({metric})")
    fig.colorbar(image, ax=ax, label=METRIC_LABELS.get(metric, metric))
    return fig


def _grouped_curves_figure(time: np.ndarray, curves: np.ndarray, groups: Sequence[str],
                           names: Sequence[str], xlabel: str, ylabel: str, title: str,
                           means: dict[str, np.ndarray] | None = None,
                           order: Sequence[str] | None = None) -> Figure:
    """One panel per group (in `order`, else first appearance; colour by that position):
    thin member curves, thick group mean, shared log y axis, whole-number x ticks."""
    order = list(order) if order is not None else list(dict.fromkeys(groups))
    cols = min(3, len(order))
    rows = -(-len(order) // cols)
    fig = Figure(figsize=(4.2 * cols, 3.0 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, sharex=True, sharey=True, squeeze=False)).ravel()
    colours = _palette(len(order))
    for ax, group, colour in zip(axes, order, colours):
        members = [i for i, g in enumerate(groups) if g == group]
        for i in members:
            ax.plot(time, curves[i], color=colour, alpha=0.35, linewidth=0.9)
        mean = means[group] if means is not None else np.nanmean(curves[members], axis=0)
        ax.plot(time, mean, color=colour, linewidth=2.4, label="mean")
        ax.set_title(f"{group}: {len(members)} layer{'s' if len(members) > 1 else ''}\n{_describe_members(members, names)}",
                     fontsize=8)
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _set_log_if_positive(axes[0], curves)
    for ax in axes[len(order):]:
        ax.set_visible(False)
    fig.supxlabel(xlabel)
    fig.supylabel(ylabel)
    fig.suptitle(title)
    return fig


def block_curves_figure(series: DynamicsSeries, *, metric: str = "rwc_mean_ratio",
                        title: str = "") -> Figure:
    """RWC curves grouped by block (`block_of`): does a block move as one?"""
    names = [layer.label for layer in series.layers]
    return _grouped_curves_figure(
        series.time_axis(), series.matrix(metric), _blocks(names),
        names, _time_label(series), METRIC_LABELS.get(metric, metric),
        title or "Relative weight change by block")


def cluster_curves_figure(clusters: LayerClusters, time: np.ndarray, *, xlabel: str = "epoch",
                          title: str = "") -> Figure:
    """The cleaned curves that were clustered, one panel per cluster, with the cluster mean."""
    groups = [f"cluster {c}" for c in clusters.labels]
    order = [f"cluster {c}" for c in range(clusters.k)]  # colours as in cluster_map_figure
    means = {name: clusters.cluster_means[c] for c, name in enumerate(order)}
    return _grouped_curves_figure(
        np.asarray(time), clusters.curves, groups, [n.removesuffix(".weight") for n in clusters.layers],
        xlabel, "RWC after cleaning" if clusters.metric.startswith("rwc") else clusters.metric,
        title or f"Layers clustered by their RWC curves (k = {clusters.k})", means, order)


def cluster_map_figure(clusters: LayerClusters, *, title: str = "") -> Figure:
    """Left: the 2-D map coloured by cluster, points labelled by depth. Right: how k was chosen."""
    fig = Figure(figsize=(11, 4.4), layout="constrained")
    ax_map, ax_k = fig.subplots(1, 2, width_ratios=[1.3, 1])
    colours = _palette(clusters.k)
    for c in range(clusters.k):
        members = clusters.labels == c
        ax_map.scatter(*clusters.coords_2d[members].T, s=36, color=colours[c],
                       label=f"cluster {c} ({int(members.sum())})", edgecolor="white", linewidth=0.5)
    for (x, y), depth in zip(clusters.coords_2d, clusters.depths):
        ax_map.annotate(str(depth), (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
    var = clusters.explained_variance
    axis_name = "PC" if clusters.reduction == "pca" else "UMAP "
    for i, setter in enumerate((ax_map.set_xlabel, ax_map.set_ylabel)):
        share = f" ({100 * var[i]:.0f} % of variance)" if var and i < len(var) else ""
        setter(f"{axis_name}{i + 1}{share}")
    ax_map.set_title("Layers in 2-D (numbers: depth)")
    ax_map.legend(fontsize=8, loc="best")
    ax_map.grid(alpha=0.3)
    ax_k.plot(clusters.ks, clusters.inertia, "o-", color="tab:blue", label="inertia")
    ax_k.axvline(clusters.k, color="tab:red", linestyle="--", label=f"chosen k = {clusters.k}")
    ax_k.set_xlabel("number of clusters k")
    ax_k.set_ylabel("inertia (within-cluster sum of squares)")
    ax_sil = ax_k.twinx()
    ax_sil.plot(clusters.ks, clusters.silhouette, "s:", color="tab:green", label="silhouette")
    ax_sil.set_ylabel("mean silhouette (−1 … 1)")
    handles = ax_k.get_legend_handles_labels()[0] + ax_sil.get_legend_handles_labels()[0]
    ax_k.legend(handles=handles, fontsize=8, loc="upper center")
    ax_k.set_title(f"Choice of k: {clusters.k_reason}", fontsize=8)
    fig.suptitle(title or "Clustering of layers by RWC curves")
    return fig


def comparison_figure(runs: Sequence[tuple[str, DynamicsSeries]], *,
                      metric: str = "rwc_mean_ratio", title: str = "") -> Figure:
    """Per-layer profiles of several runs by depth: mean over training and last interval.

    Runs that share a label (seeds of one setting; the papers average 5) become one line,
    their mean, with a band from the lowest to the highest run.
    """
    fig = Figure(figsize=(12, 5.0), layout="constrained")
    ax_mean, ax_last = fig.subplots(1, 2, sharey=True)
    groups: dict[str, list[DynamicsSeries]] = {}
    for label, series in runs:
        groups.setdefault(label, []).append(series)
    colours = _palette(len(groups))
    names = _shared_layer_labels(runs)
    everything = []
    for (label, members), colour in zip(groups.items(), colours):
        profiles = _profiles(members, metric)  # (2, runs, layers): mean, last
        depth = np.arange(profiles.shape[2], dtype=float)
        if names is None:  # different models: compare at the same relative depth
            depth /= max(1, len(depth) - 1)
        shown = label if len(members) == 1 else f"{label} (mean of {len(members)} runs)"
        for ax, values in ((ax_mean, profiles[0]), (ax_last, profiles[1])):
            ax.plot(depth, np.nanmean(values, axis=0), "o-", markersize=3, color=colour, label=shown)
            if len(members) > 1:
                ax.fill_between(depth, np.nanmin(values, axis=0), np.nanmax(values, axis=0),
                                color=colour, alpha=0.2, linewidth=0)
        everything.append(profiles.ravel())
    _set_log_if_positive(ax_mean, np.concatenate(everything) if everything else np.array([]))
    for ax, what in ((ax_mean, "mean over training"), (ax_last, "last interval")):
        ax.set_title(what)
        ax.grid(alpha=0.3)
        if names is None:
            ax.set_xlabel("relative layer depth (0 = input side, 1 = output side)")
            continue
        _layer_ticks(ax, names)
    ax_mean.set_ylabel(METRIC_LABELS.get(metric, metric))
    fig.suptitle(title or "Per-layer relative weight change across settings")
    fig.legend(*ax_mean.get_legend_handles_labels(), loc="outside lower center", fontsize=8,
               ncols=min(3, len(groups)), title="setting")
    return fig


def _profiles(members: Sequence[DynamicsSeries], metric: str) -> np.ndarray:
    """(2, runs, layers): each run's per-layer mean over training and last-interval value."""
    layers = {len(series.layers) for series in members}
    if len(layers) != 1:
        raise ValueError(f"runs labelled alike have different layer counts {sorted(layers)}; "
                         "give them different labels")
    matrices = [series.matrix(metric) for series in members]
    return np.stack([np.stack([row_nanmean(m) for m in matrices]),
                     np.stack([m[:, -1] for m in matrices])])


def noise_figure(settings: Sequence[tuple[str, np.ndarray, np.ndarray]],
                 layer_names: Sequence[str] | None, *, metric: str = "rwc_l1",
                 title: str = "") -> Figure:
    """Private settings: each layer's RWC beside what the DP noise alone predicts.

    `settings`: (label, observed, predicted), each (runs, layers) of per-layer means over
    training (runs of one setting averaged). Left: both by depth (solid observed, dashed
    predicted); right: observed / predicted, where 1 means the change is the noise's.
    """
    fig = Figure(figsize=(12, 5.2 + 0.15 * len(settings)), layout="constrained")
    ax_rwc, ax_ratio = fig.subplots(1, 2)
    values = []
    for (label, observed, predicted), colour in zip(settings, _palette(len(settings))):
        depth = np.arange(observed.shape[1])
        seen, noise = np.nanmean(observed, axis=0), np.nanmean(predicted, axis=0)
        ax_rwc.plot(depth, seen, "o-", markersize=3, color=colour, label=f"{label}: observed")
        ax_rwc.plot(depth, noise, "x--", markersize=6, color=colour, alpha=0.8,
                    label=f"{label}: noise alone")
        with np.errstate(divide="ignore", invalid="ignore"):
            ax_ratio.plot(depth, seen / noise, "o-", markersize=3, color=colour)
        values += [seen, noise]
    _set_log_if_positive(ax_rwc, np.concatenate(values) if values else np.array([]))
    ax_ratio.axhline(1.0, color="#555555", linewidth=1, linestyle=":")
    ax_rwc.set_ylabel(METRIC_LABELS.get(metric, metric).removesuffix(" per interval")
                      + "\n(per interval, mean over training)")
    ax_ratio.set_ylabel("observed / noise-predicted")
    fig.legend(*ax_rwc.get_legend_handles_labels(), loc="outside lower center", fontsize=7,
               ncols=2)  # below the panels: with several settings it would hide the curves
    for ax in (ax_rwc, ax_ratio):
        ax.grid(alpha=0.3)
        if layer_names is None:
            ax.set_xlabel("layer depth (0 = input side)")
            continue
        _layer_ticks(ax, layer_names)
    fig.suptitle(title or "Private runs: RWC against what the DP noise alone predicts "
                          "(lr·σC/B·√steps·√(2/π) against the weights' scale)")
    return fig


def privacy_figure(series: DynamicsSeries, *, title: str = "") -> Figure:
    """Private runs: where the gradient, the clipping and the noise fall, by layer depth."""
    panels = [m for m in ("grad_norm", "clipped_share", "noise_to_signal")
              if np.isfinite(series.matrix(m)).any()]
    fig = Figure(figsize=(4.2 * max(1, len(panels)), 3.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, max(1, len(panels)), squeeze=False)).ravel()
    for ax, metric in zip(axes, panels):
        values = series.matrix(metric)
        depth = np.arange(values.shape[0])
        ax.plot(depth, np.nanmean(values, axis=1), "o-", markersize=3, label="mean over training")
        ax.plot(depth, values[:, -1], "s--", markersize=3, alpha=0.7, label="last interval")
        _set_log_if_positive(ax, values)
        ax.set_xlabel("layer depth (0 = input side)")
        ax.set_ylabel(METRIC_LABELS[metric])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fraction = np.asarray(series.global_metrics.get("clipped_fraction", []), dtype=float)
    clipped = (f"; examples clipped: {100 * np.nanmean(fraction):.0f} % on average"
               if np.isfinite(fraction).any() else "")
    fig.suptitle((title or "Gradient, clipping and noise per layer") + clipped)
    return fig


def _layer_ticks(ax, names: Sequence[str]) -> None:
    """Layer names as x tick labels (at most about 25), depth first."""
    ax.set_xlabel("layer (depth: name, input side first)")
    step = max(1, len(names) // 25)
    ax.set_xticks(range(0, len(names), step), [f"{i}: {n}" for i, n in enumerate(names)][::step],
                  rotation=70, fontsize=6, ha="right")


def _blocks(names: Sequence[str]) -> list[str]:
    """`block_of` each layer; where that leaves every layer alone (a plain Sequential such as
    features.0, features.3), the top-level module instead."""
    blocks = [block_of(n) for n in names]
    if len(set(blocks)) == len(blocks) > 1:
        blocks = [n.split(".")[0] for n in names]
    return blocks


def depth_ranges(depths: Sequence[int]) -> str:
    """Sorted depths as runs: [0, 1, 2, 5, 7, 8] -> '0–2, 5, 7–8'."""
    depths = sorted(int(d) for d in depths)
    runs, start = [], depths[0]
    for prev, cur in zip(depths, depths[1:] + [None]):
        if cur != prev + 1:
            runs.append(f"{start}" if start == prev else f"{start}–{prev}")
            start = cur
    return ", ".join(runs)


def _describe_members(members: Sequence[int], names: Sequence[str]) -> str:
    """'depth 0–2, 5: stages.0.0.conv, …' - the depths in runs, then the first names."""
    first = ", ".join(names[i] for i in members[:2]) + (", …" if len(members) > 2 else "")
    return f"depth {depth_ranges(members)}: {first}"


def _shared_layer_labels(runs: Sequence[tuple[str, DynamicsSeries]]) -> list[str] | None:
    names = {tuple(layer.label for layer in series.layers) for _, series in runs}
    return list(names.pop()) if len(names) == 1 else None


def _palette(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "viridis"]
    return [cmap(i if n <= 10 else i / max(1, n - 1)) for i in range(n)]
