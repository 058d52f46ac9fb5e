"""The report's figures, drawn on bare matplotlib Figures (no pyplot state, no display needed).

Each function takes the study's series (label -> finished runs) and returns a Figure, or None
when the study has nothing to draw for it.
"""

from __future__ import annotations

import math
from collections import defaultdict

from matplotlib.figure import Figure
from matplotlib import colormaps
from matplotlib.ticker import MaxNLocator, NullFormatter

from dpscope.study.report.data import RunView, mean_and_spread

PALETTE = ["#1f5fa8", "#d1495b", "#2e8b57", "#e8a33d", "#6a4c93", "#00798c", "#8c564b", "#7f7f7f"]
NON_PRIVATE = "non-private"


def style_axes(ax, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title, fontsize=11, loc="left")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, color="#e5e7eb", linewidth=0.8)
    ax.spines[["top", "right"]].set_visible(False)


def by_epsilon(runs: list[RunView]) -> dict[float | None, list[RunView]]:
    """Runs grouped by epsilon (None: non-private), private ones in ascending order."""
    groups: dict[float | None, list[RunView]] = defaultdict(list)
    for run in runs:
        groups[run.epsilon_key].append(run)
    private = sorted(k for k in groups if k is not None)
    return {**{k: groups[k] for k in private}, **({None: groups[None]} if None in groups else {})}


def privacy_utility_figure(series: dict[str, list[RunView]]) -> Figure | None:
    """Test accuracy (and AUC when the task has one) vs epsilon; non-private as a reference line."""
    if not any(r.private for runs in series.values() for r in runs):
        return None
    metrics = [("test_accuracy", "test accuracy")]
    if any(r.record.test_auc is not None for runs in series.values() for r in runs):
        metrics.append(("test_auc", "test ROC AUC"))
    fig = Figure(figsize=(5.2 * len(metrics), 3.8))
    for index, (metric, name) in enumerate(metrics):
        ax = fig.add_subplot(1, len(metrics), index + 1)
        single = len(series) == 1
        ticks: set[float] = set()
        for colour, (label, runs) in zip(_colours(), series.items()):
            groups = by_epsilon(runs)
            ticks |= {eps for eps in groups if eps is not None}
            points = [(eps, *mean_and_spread([getattr(r.record, metric) for r in g]))
                      for eps, g in groups.items() if eps is not None]
            points = [p for p in points if p[3]]
            if points:
                xs, means, spreads = [p[0] for p in points], [p[1] for p in points], [p[2] for p in points]
                ax.errorbar(xs, means, yerr=spreads, color=colour, marker="o", capsize=3,
                            linewidth=1.8, label="private" if single else label)
            if None in groups:
                mean, spread, count = mean_and_spread([getattr(r.record, metric) for r in groups[None]])
                if count:
                    ax.axhline(mean, color=colour, linestyle="--", linewidth=1.2,
                               label=NON_PRIVATE if single else f"{label}, {NON_PRIVATE}")
                    ax.axhspan(mean - spread, mean + spread, color=colour, alpha=0.08, linewidth=0)
        ax.set_xscale("log")
        ax.set_xticks(sorted(ticks), [f"{t:g}" for t in sorted(ticks)])
        ax.xaxis.set_minor_formatter(NullFormatter())
        style_axes(ax, f"{name} vs privacy budget", "epsilon (log scale)", name)
        ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def per_class_figure(series: dict[str, list[RunView]]) -> Figure | None:
    """Accuracy of each class (mean over seeds) across the epsilon values, one panel per series."""
    panels = [(label, runs) for label, runs in series.items()
              if any(r.summary.get("per_class_accuracy") for r in runs)]
    if not panels:
        return None
    fig = Figure(figsize=(5.4 * min(len(panels), 3), 3.8 * math.ceil(len(panels) / 3)))
    for index, (label, runs) in enumerate(panels):
        ax = fig.add_subplot(math.ceil(len(panels) / 3), min(len(panels), 3), index + 1)
        groups = by_epsilon(runs)
        ticks = [f"{eps:g}" if eps is not None else NON_PRIVATE for eps in groups]
        names = runs[0].summary.get("class_names") or []
        classes = sorted({c for r in runs for c in (r.summary.get("per_class_accuracy") or {})}, key=int)
        colours = _colours() if len(classes) <= len(PALETTE) else iter(colormaps["tab20"].colors)
        for colour, cls in zip(colours, classes):
            means = [mean_and_spread([(r.summary.get("per_class_accuracy") or {}).get(cls) for r in g])[0]
                     for g in groups.values()]
            name = names[int(cls)] if int(cls) < len(names) else cls
            ax.plot(range(len(ticks)), means, marker="o", color=colour, linewidth=1.5, label=str(name))
        ax.set_xticks(range(len(ticks)), ticks)
        ax.set_ylim(-0.02, 1.02)
        style_axes(ax, label, "epsilon", "test accuracy of the class")
        ax.legend(fontsize=7, frameon=False, ncol=2 if len(classes) > 5 else 1)
    fig.tight_layout()
    return fig


def training_curves_figure(series: dict[str, list[RunView]]) -> Figure | None:
    """Validation accuracy per epoch: mean over seeds per epsilon, band from min to max."""
    panels = [(label, runs) for label, runs in series.items() if any(r.epochs for r in runs)]
    if not panels:
        return None
    fig = Figure(figsize=(5.4 * min(len(panels), 3), 3.8 * math.ceil(len(panels) / 3)))
    for index, (label, runs) in enumerate(panels):
        ax = fig.add_subplot(math.ceil(len(panels) / 3), min(len(panels), 3), index + 1)
        for colour, (eps, group) in zip(_colours(), by_epsilon(runs).items()):
            curves = [[e.get("val_accuracy") for e in r.epochs] for r in group if r.epochs]
            length = max(len(c) for c in curves)
            epochs = list(range(1, length + 1))
            columns = [[c[i] for c in curves if i < len(c) and c[i] is not None] for i in range(length)]
            means = [sum(col) / len(col) if col else math.nan for col in columns]
            ax.plot(epochs, means, color="#111827" if eps is None else colour, linewidth=1.8,
                    linestyle="--" if eps is None else "-",
                    label=NON_PRIVATE if eps is None else f"eps {eps:g}")
            if len(curves) > 1:
                ax.fill_between(epochs, [min(col) if col else math.nan for col in columns],
                                [max(col) if col else math.nan for col in columns],
                                color="#111827" if eps is None else colour, alpha=0.12, linewidth=0)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        style_axes(ax, label, "epoch", "validation accuracy")
        ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def _colours():
    while True:
        yield from PALETTE
