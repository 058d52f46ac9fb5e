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
from typing import Any, Callable, Sequence

import numpy as np
from matplotlib.figure import Figure

from dpscope.dynamics.aggregate import LayerClusters, cluster_layers
from dpscope.dynamics.findings import (PREFERRED_METRIC, RWC_METRICS, RunFindings,
                                       finding_sentences, noise_predicted_rwc, run_findings,
                                       rwc_metric_key)
from dpscope.dynamics.plots import (block_curves_figure, cluster_curves_figure, cluster_map_figure,
                                    comparison_figure, depth_ranges, figure_base64, noise_figure,
                                    privacy_figure, rwc_heatmap_figure, save_figure)
from dpscope.dynamics.series import (LAYER_METRICS, DynamicsSeries, block_of, load_dynamics,
                                     row_nanmean)
from dpscope.errors import ConfigError, DataError, DpscopeError
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


_RECIPE_KEYS = ("lr", "batch_size", "momentum", "optimizer", "max_grad_norm", "weight_decay",
                "epochs")
_INFO_KEYS = ("epsilon", "target_epsilon", "model", "dataset", "noise_multiplier",
              "test_accuracy", *_RECIPE_KEYS)


def _run_info(run_dir: Path) -> dict[str, Any]:
    """Labels and the settings the noise prediction needs: summary.json first, config.json
    for what the summary lacks (a run still training has only its config)."""
    summary = _read_json(run_dir / "summary.json")
    config = _read_json(run_dir / "config.json")
    config = config.get("config", config)
    info = {key: summary.get(key, config.get(key)) for key in _INFO_KEYS}
    private = info["noise_multiplier"] is not None or info["epsilon"] is not None
    info["expected_batch_size"] = summary.get("expected_batch_size",
                                              config.get("batch_size") if private else None)
    return info


def _label(info: dict[str, Any]) -> str:
    """The target epsilon where the run had one (seeds of a setting spend slightly different
    epsilons), else the spent one, else sigma."""
    epsilon = info.get("target_epsilon")
    epsilon = info.get("epsilon") if epsilon is None else epsilon
    if epsilon is not None:
        privacy = f"ε={float(epsilon):.3g}"
    elif info.get("noise_multiplier") is not None:
        privacy = f"σ={float(info['noise_multiplier']):.3g}"
    else:
        privacy = "non-private"
    return " · ".join(str(p) for p in (privacy, info.get("model"), info.get("dataset")) if p)


def _split_labels_by_recipe(runs: list[RunDynamics]) -> None:
    """Runs that share a label but not their training recipe (study variants at one epsilon)
    are different settings: the settings that differ go into the label, "[lr=4, ...]"."""
    groups: dict[str, list[RunDynamics]] = {}
    for run in runs:
        groups.setdefault(run.label, []).append(run)
    for members in groups.values():
        differing = [key for key in _RECIPE_KEYS
                     if len({repr(run.info.get(key)) for run in members}) > 1]
        for run in members if differing else []:
            recipe = ", ".join(f"{key}={run.info.get(key)}" for key in differing)
            run.label = run.title = f"{run.label} [{recipe}]"


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


@dataclass
class _Analysis:
    metric: str  # the series key clustered and drawn per run
    results: list[tuple[RunDynamics, LayerClusters, dict[str, Figure]]]
    comparisons: dict[str, Figure]  # file stem -> figure: both RWC forms, noise comparison
    findings: list[RunFindings]
    sentences: list[str]


def _metric_key(metric: str) -> str:
    """RWC option values (rwc_l1, rwc_mean) or any layer metric's series key."""
    if metric in LAYER_METRICS:
        return metric
    try:
        return rwc_metric_key(metric)
    except ConfigError:
        raise ConfigError(f"unknown metric {metric!r}; choose rwc_l1 (preferred), rwc_mean or "
                          f"another layer metric: {', '.join(LAYER_METRICS)}") from None


def _analyse(run_dirs: Sequence[Path], k: int | None, drop_first_last: bool, metric: str) -> _Analysis:
    metric = _metric_key(metric)
    if not run_dirs:
        raise DataError("no run folder given; pass one or more run folders with dynamics.json")
    runs = [load_run(d) for d in run_dirs]
    _split_labels_by_recipe(runs)
    _unique_names_and_titles(runs)
    results = []
    for run in runs:
        try:
            clusters = cluster_layers(run.series, metric=metric, k=k, drop_first_last=drop_first_last)
        except DpscopeError as error:  # name the run: the same k may suit one run and not another
            raise type(error)(f"{run.run_dir}: {error}") from None
        results.append((run, clusters, _run_figures(run, clusters, metric)))
    ordered = sorted(runs, key=_privacy_order)
    shown = [metric] + [m for m in RWC_METRICS.values() if m != metric]
    comparisons = {f"comparison_{m}" if i else "comparison":
                   comparison_figure([(run.label, run.series) for run in ordered], metric=m)
                   for i, m in enumerate(shown)}
    noise_metric = metric if metric in RWC_METRICS.values() else PREFERRED_METRIC
    noise = _noise_comparison(ordered, noise_metric)
    if noise is not None:
        comparisons["noise"] = noise
    findings = [run_findings(run.name, run.label, run.series, run.info) for run in ordered]
    return _Analysis(metric, results, comparisons, findings,
                     finding_sentences(findings, noise_metric))


def _noise_comparison(runs: list[RunDynamics], metric: str) -> Figure | None:
    """Observed against noise-predicted RWC per layer for each private setting, or None."""
    settings: dict[str, tuple[list, list]] = {}
    for run in runs:
        predicted = noise_predicted_rwc(run.series, run.info, metric)
        if predicted is not None:
            observed, expected = settings.setdefault(run.label, ([], []))
            observed.append(row_nanmean(run.series.matrix(metric)))
            expected.append(row_nanmean(predicted))
    if not settings:
        return None
    names = {tuple(layer.label for layer in run.series.layers) for run in runs}
    if any(len({len(o) for o in observed}) > 1 for observed, _ in settings.values()):
        return None  # runs labelled alike with different models: no per-layer mean
    return noise_figure([(label, np.stack(o), np.stack(e)) for label, (o, e) in settings.items()],
                        list(names.pop()) if len(names) == 1 else None, metric=metric)


def analyze_runs(run_dirs: Sequence[Path], out_dir: Path, k: int | None = None,
                 drop_first_last: bool = False, *, metric: str = "rwc_mean_ratio") -> dict[str, Any]:
    """Figures and tables for the runs into `out_dir`; returns what was written (see module).

    metric: what is clustered and drawn per run: "rwc_l1" (the paper's ||dw||_1/||w||_1,
    preferred) or "rwc_mean" / "rwc_mean_ratio" (the authors' per-element mean, which spikes
    on near-zero weights), or another layer metric. Comparisons show both RWC forms."""
    out_dir = Path(out_dir)
    analysis = _analyse(run_dirs, k, drop_first_last, metric)
    figures = [str(save_figure(fig, out_dir / f"{stem}.png"))
               for stem, fig in analysis.comparisons.items()]
    rows, summaries = [], []
    for run, clusters, run_figures in analysis.results:
        paths = {name: str(save_figure(fig, out_dir / run.name / f"{name}.png"))
                 for name, fig in run_figures.items()}
        figures += paths.values()
        rows += _layer_rows(run, clusters)
        summaries.append(_run_summary(run, clusters, paths))
    csv_path, json_path = out_dir / "layers.csv", out_dir / "dynamics_summary.json"
    write_text_atomic(csv_path, _csv(rows))
    write_json_atomic(json_path, {"metric": analysis.metric, "k_forced": k,
                                  "drop_first_last": drop_first_last, "runs": summaries,
                                  "findings": analysis.sentences,
                                  "per_run_findings": [f.to_json() for f in analysis.findings]})
    return {"out_dir": str(out_dir), "figures": figures, "tables": [str(csv_path), str(json_path)],
            "runs": summaries, "findings": analysis.sentences}


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


FigureWriter = Callable[[str, Figure, str], str]  # (file stem, figure, alt text) -> <img>


def dynamics_html(run_dirs: Sequence[Path], k: int | None = None, drop_first_last: bool = False,
                  *, metric: str = PREFERRED_METRIC, figure: FigureWriter | None = None) -> str:
    """An HTML fragment (one <section>) for the study report: the findings in words and
    numbers (both RWC forms), comparison figures, then each run's figures for `metric`
    (default the paper's ||dw||_1/||w||_1, which near-zero weights cannot dominate).

    figure: renders each figure to an <img> (a study report's `StudyData.figure`, which also
    writes figures/<stem>.png); by default PNGs are embedded as base64 only."""
    analysis = _analyse(run_dirs, k, drop_first_last, metric)
    key = analysis.metric

    def img(stem: str, fig: Figure, caption: str) -> str:
        if figure is None:
            return _img(fig, caption)
        image = figure(f"dynamics_{stem}", fig, caption)
        return f"<figure>{image}<figcaption>{html.escape(caption)}</figcaption></figure>"

    parts = [
        '<section class="dpscope-dynamics">',
        "<h2>Layer-wise learning dynamics</h2>",
        "<p>Relative weight change (RWC) of each layer per interval: how much of a layer's "
        "weights training rewrote. Two forms: <code>rwc_l1</code> = ‖Δw‖₁ / ‖w‖₁ (the paper's "
        "equation) and <code>rwc_mean_ratio</code> = mean of |Δw| / |w| (the authors' code, "
        "which near-zero weights can dominate). Layers are clustered and drawn per run by "
        f"<code>{html.escape(key)}</code> (k-means++, k from the elbow of the inertia curve; "
        "silhouette reported beside it); the findings give both forms.</p>",
        "<h3>Findings</h3><ul>",
        *[f"<li>{html.escape(sentence)}</li>" for sentence in analysis.sentences],
        "</ul>",
        _findings_table(analysis),
    ]
    for stem, fig in analysis.comparisons.items():
        parts.append(img(stem, fig, _comparison_caption(stem, key)))
    parts.append("<table><thead><tr><th>run</th><th>k</th><th>why</th><th>elbow k</th>"
                 "<th>silhouette k</th><th>layers per cluster (depths)</th></tr></thead><tbody>")
    for run, clusters, _ in analysis.results:
        parts.append(
            f"<tr><td>{html.escape(run.title)}</td><td>{clusters.k}</td>"
            f"<td>{html.escape(clusters.k_reason)}</td><td>{clusters.k_elbow}</td>"
            f"<td>{clusters.k_silhouette}</td><td>{html.escape(_cluster_depths(clusters))}</td></tr>")
    parts.append("</tbody></table>")
    for run, _, figures in analysis.results:
        parts.append(f"<h3>{html.escape(run.title)}</h3>")
        parts += [img(f"{run.name}_{name}", fig, _CAPTIONS[name]) for name, fig in figures.items()]
    parts.append("</section>")
    return "\n".join(parts)


def _findings_table(analysis: _Analysis) -> str:
    """One row per run: depth trend for both forms, most-changing layers, noise ratio."""
    forms = list(RWC_METRICS.values())
    head = ["run", "test accuracy",
            *[f"ρ depth vs {m} (all layers / inner)" for m in forms],
            f"highest {analysis.metric if analysis.metric in forms else PREFERRED_METRIC}",
            *[f"observed / noise-predicted {m}: median (range)" for m in forms]]
    titles = {run.name: run for run, _, _ in analysis.results}
    top_key = analysis.metric if analysis.metric in forms else PREFERRED_METRIC
    rows = []
    for found in analysis.findings:
        run = titles[found.name]
        accuracy = run.info.get("test_accuracy")
        cells = [run.title, "–" if accuracy is None else f"{accuracy:.3f}"]
        cells += [f"{_signed(found.spearman[m])} / {_signed(found.spearman_inner[m])}" for m in forms]
        cells.append(", ".join(found.top_layers[top_key]))
        cells += [(f"{r['median']:.2f} ({r['min']:.2f}–{r['max']:.2f})" if (r := found.noise_ratio.get(m))
                   else "–") for m in forms]
        rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    return ("<table><thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head)
            + "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
            "<p>ρ: Spearman rank correlation of layer depth with the layer's RWC averaged over "
            "training (positive: later layers change more; inner: first and last layer left "
            "out). Noise-predicted: the RWC that DP noise alone causes, "
            "lr·σC/B·√steps·√(2/π) per weight against the layer's weight scale; 1 means the "
            "layer's change is the noise's.</p>")


def _signed(value: float | None) -> str:
    return "–" if value is None else f"{value:+.2f}"


def _comparison_caption(stem: str, metric: str) -> str:
    if stem == "noise":
        return ("Private runs: each layer's RWC (solid) and what the DP noise alone predicts "
                "(dashed), and their ratio.")
    shown = stem.removeprefix("comparison_") if stem != "comparison" else metric
    return (f"Per-layer RWC ({shown}) of every setting, by depth (runs of one setting: mean, "
            "band from lowest to highest).")


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
