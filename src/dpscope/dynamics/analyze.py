"""Analysis of recorded runs for `dpscope dynamics RUN_DIR...` and the study report.

`analyze_runs` reads each run's `dynamics.json` (labels from `summary.json` or `config.json`),
clusters its layers (WeightScale), and writes into `out_dir`:

    comparison.png               per-layer RWC profiles, one line per setting (label); runs
                                 sharing a label (seeds) are averaged, with a min-max band
    <run>/heatmap.png            RWC, layers x time
    <run>/blocks.png             RWC curves grouped by block
    <run>/clusters.png           cleaned curves grouped by cluster, with cluster means
    <run>/cluster_map.png        2-D map coloured by cluster, and how k was chosen
    <run>/privacy.png            gradient, clipping and noise per layer (private runs)
    layers.csv                   one row per (run, layer): cluster and per-layer means
    dynamics_summary.json        per run: label, chosen k and why, both k candidates, clusters

`dynamics_html` renders the same figures into an HTML fragment with embedded PNGs.
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib.figure import Figure

from dpscope.dynamics.aggregate import LayerClusters, cluster_layers
from dpscope.dynamics.plots import (block_curves_figure, cluster_curves_figure, cluster_map_figure,
                                    comparison_figure, depth_ranges, figure_base64, privacy_figure,
                                    rwc_heatmap_figure, save_figure)
from dpscope.dynamics.series import LAYER_METRICS, DynamicsSeries, block_of, load_dynamics
from dpscope.errors import DataError, DpscopeError
from dpscope.io import write_json_atomic, write_text_atomic

__all__ = ["RunDynamics", "load_run", "analyze_runs", "dynamics_html"]


@dataclass
class RunDynamics:
    """One run's recorded dynamics with what labels it."""

    run_dir: Path
    name: str  # unique among the runs analysed together: the folder name
    label: str  # the setting: "ε=8 · resnet20 · cifar10" or "non-private · ..."
    info: dict[str, Any]  # epsilon, model, dataset (None where unknown)
    series: DynamicsSeries
    title: str = ""  # the label, plus the folder name where several runs share the label

    def __post_init__(self) -> None:
        self.title = self.title or self.label


def load_run(run_dir: Path) -> RunDynamics:
    """`load_dynamics` plus labels from the run's summary.json, else its config.json."""
    run_dir = Path(run_dir)
    series = load_dynamics(run_dir)
    if len(series) == 0:
        raise DataError(f"{run_dir}: dynamics.json has no recorded interval yet; "
                        "let the run finish at least one epoch")
    info = _run_info(run_dir)
    return RunDynamics(run_dir, run_dir.name, _label(info), info, series)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text()) if path.exists() else {}
    except json.JSONDecodeError:
        return {}


def _run_info(run_dir: Path) -> dict[str, Any]:
    summary = _read_json(run_dir / "summary.json")
    config = _read_json(run_dir / "config.json")
    config = config.get("config", config)
    info = {key: summary.get(key, config.get(key)) for key in ("epsilon", "model", "dataset")}
    info["noise_multiplier"] = summary.get("noise_multiplier", config.get("noise_multiplier"))
    return info


def _label(info: dict[str, Any]) -> str:
    if info.get("epsilon") is not None:
        privacy = f"ε={float(info['epsilon']):.3g}"
    elif info.get("noise_multiplier") is not None:
        privacy = f"σ={float(info['noise_multiplier']):.3g}"
    else:
        privacy = "non-private"
    return " · ".join(str(p) for p in (privacy, info.get("model"), info.get("dataset")) if p)


def _unique_names_and_titles(runs: list[RunDynamics]) -> None:
    """Folder names must not collide in out_dir; titles must tell runs apart. Labels stay:
    runs of one setting (seeds) share a label and are averaged in the comparison."""
    seen: dict[str, int] = {}
    for run in runs:
        count = seen.get(run.name, 0)
        seen[run.name] = count + 1
        if count:
            run.name = f"{run.name}-{count + 1}"
    labels = [run.label for run in runs]
    for run in runs:
        if labels.count(run.label) > 1:
            run.title = f"{run.label} ({run.name})"


def _privacy_order(run: RunDynamics) -> tuple[int, float]:
    """Legend order: non-private first, then from the weakest privacy (largest epsilon) down;
    runs known only by their noise multiplier last, smallest first."""
    epsilon, sigma = run.info.get("epsilon"), run.info.get("noise_multiplier")
    if epsilon is not None:
        return (1, -float(epsilon))
    return (0, 0.0) if sigma is None else (2, float(sigma))


def _run_figures(run: RunDynamics, clusters: LayerClusters, metric: str) -> dict[str, Figure]:
    series, label = run.series, run.title
    xlabel = "epoch" if series.interval_unit == "epoch" else "optimisation step"
    figures = {
        "heatmap": rwc_heatmap_figure(series, metric=metric, title=f"Relative weight change — {label}"),
        "blocks": block_curves_figure(series, metric=metric, title=f"RWC by block — {label}"),
        "clusters": cluster_curves_figure(clusters, series.time_axis(), xlabel=xlabel,
                                          title=f"Layer clusters (k = {clusters.k}) — {label}"),
        "cluster_map": cluster_map_figure(clusters, title=f"Layer map — {label}"),
    }
    if np.isfinite(series.matrix("noise_to_signal")).any() or np.isfinite(series.matrix("clipped_share")).any():
        figures["privacy"] = privacy_figure(series, title=f"Gradient, clipping and noise — {label}")
    return figures


def _analyse(run_dirs: Sequence[Path], k: int | None, drop_first_last: bool, metric: str):
    if not run_dirs:
        raise DataError("no run folder given; pass one or more run folders with dynamics.json")
    if metric not in LAYER_METRICS:
        raise DataError(f"unknown metric {metric!r}; choose one of {', '.join(LAYER_METRICS)}")
    runs = [load_run(d) for d in run_dirs]
    _unique_names_and_titles(runs)
    results = []
    for run in runs:
        try:
            clusters = cluster_layers(run.series, metric=metric, k=k, drop_first_last=drop_first_last)
        except DpscopeError as error:  # name the run: the same k may suit one run and not another
            raise type(error)(f"{run.run_dir}: {error}") from None
        results.append((run, clusters, _run_figures(run, clusters, metric)))
    ordered = sorted(runs, key=_privacy_order)
    comparison = comparison_figure([(run.label, run.series) for run in ordered], metric=metric)
    return results, comparison


def analyze_runs(run_dirs: Sequence[Path], out_dir: Path, k: int | None = None,
                 drop_first_last: bool = False, *, metric: str = "rwc_mean_ratio") -> dict[str, Any]:
    """Figures and tables for the runs into `out_dir`; returns what was written (see module)."""
    out_dir = Path(out_dir)
    results, comparison = _analyse(run_dirs, k, drop_first_last, metric)
    figures = [str(save_figure(comparison, out_dir / "comparison.png"))]
    rows, summaries = [], []
    for run, clusters, run_figures in results:
        paths = {name: str(save_figure(fig, out_dir / run.name / f"{name}.png"))
                 for name, fig in run_figures.items()}
        figures += paths.values()
        rows += _layer_rows(run, clusters)
        summaries.append(_run_summary(run, clusters, paths))
    csv_path, json_path = out_dir / "layers.csv", out_dir / "dynamics_summary.json"
    write_text_atomic(csv_path, _csv(rows))
    write_json_atomic(json_path, {"metric": metric, "k_forced": k,
                                  "drop_first_last": drop_first_last, "runs": summaries})
    return {"out_dir": str(out_dir), "figures": figures, "tables": [str(csv_path), str(json_path)],
            "runs": summaries}


def _nanmean(values: np.ndarray) -> float | None:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else None


def _layer_rows(run: RunDynamics, clusters: LayerClusters) -> list[dict[str, Any]]:
    membership = clusters.membership()
    matrices = {m: run.series.matrix(m) for m in LAYER_METRICS}
    rows = []
    for depth, layer in enumerate(run.series.layers):
        row = {"run": run.name, "label": run.label, "layer": layer.name, "depth": depth,
               "block": block_of(layer.name), "numel": layer.numel,
               "cluster": membership.get(layer.name)}
        row.update({f"mean_{m}": _nanmean(v[depth]) for m, v in matrices.items()})
        row[f"last_{clusters.metric}"] = _nanmean(matrices[clusters.metric][depth, -1:])
        rows.append(row)
    return rows


def _run_summary(run: RunDynamics, clusters: LayerClusters, figures: dict[str, str]) -> dict[str, Any]:
    fraction = np.asarray(run.series.global_metrics.get("clipped_fraction", []), dtype=float)
    return {
        "run_dir": str(run.run_dir), "name": run.name, "label": run.label, "title": run.title,
        **run.info,
        "points": len(run.series), "interval": {"unit": run.series.interval_unit,
                                                "every": run.series.interval_every},
        "mean_clipped_fraction": _nanmean(fraction),
        "clusters": clusters.to_json(), "figures": figures,
    }


def _csv(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: "" if v is None or (isinstance(v, float) and math.isnan(v)) else v
                      for k, v in row.items()} for row in rows)
    return buffer.getvalue()


def dynamics_html(run_dirs: Sequence[Path], k: int | None = None, drop_first_last: bool = False,
                  *, metric: str = "rwc_mean_ratio") -> str:
    """An HTML fragment (one <section>, PNGs embedded as base64) for the study report."""
    results, comparison = _analyse(run_dirs, k, drop_first_last, metric)
    parts = [
        '<section class="dpscope-dynamics">',
        "<h2>Layer-wise learning dynamics</h2>",
        "<p>Relative weight change (RWC) of each layer per interval, "
        f"<code>{html.escape(metric)}</code>: how much of a layer's weights training rewrote. "
        "Layers are clustered by their RWC curves (k-means++, k from the elbow of the inertia "
        "curve; silhouette reported beside it).</p>",
        _img(comparison, "Per-layer RWC of every setting, by depth (runs of one setting: "
                         "mean, band from lowest to highest)."),
        "<table><thead><tr><th>run</th><th>k</th><th>why</th><th>elbow k</th>"
        "<th>silhouette k</th><th>layers per cluster (depths)</th></tr></thead><tbody>",
    ]
    for run, clusters, _ in results:
        parts.append(
            f"<tr><td>{html.escape(run.title)}</td><td>{clusters.k}</td>"
            f"<td>{html.escape(clusters.k_reason)}</td><td>{clusters.k_elbow}</td>"
            f"<td>{clusters.k_silhouette}</td><td>{html.escape(_cluster_depths(clusters))}</td></tr>")
    parts.append("</tbody></table>")
    for run, _, figures in results:
        parts.append(f"<h3>{html.escape(run.title)}</h3>")
        parts += [_img(fig, _CAPTIONS[name]) for name, fig in figures.items()]
    parts.append("</section>")
    return "\n".join(parts)


_CAPTIONS = {
    "heatmap": "RWC per layer (rows, input side at the top) and interval (columns).",
    "blocks": "RWC curves grouped by block; thick line: block mean.",
    "clusters": "Cleaned RWC curves grouped by cluster; thick line: cluster mean.",
    "cluster_map": "Layers in 2-D coloured by cluster (left) and the choice of k (right).",
    "privacy": "Where gradient, clipping and noise fall across the layers.",
}


def _cluster_depths(clusters: LayerClusters) -> str:
    return "; ".join(f"{c}: {depth_ranges(clusters.depths[clusters.labels == c])}"
                     for c in range(clusters.k))


def _img(fig: Figure, caption: str) -> str:
    return (f'<figure><img style="max-width:100%" alt="{html.escape(caption)}" '
            f'src="data:image/png;base64,'
            f'{figure_base64(fig)}"><figcaption>{html.escape(caption)}</figcaption></figure>')
