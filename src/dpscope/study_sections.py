"""Study report sections for who pays for privacy (fairness under imbalance) and for input
perturbation. They read what runs recorded in summary.json (`fairness`, `imbalance`,
`perturbation`) and never train; the perturbation section draws its example images by
applying the mechanisms to one training image, when the dataset can be loaded. Both are
listed (by name, imported lazily) in dpscope.study.report.sections.
"""

from __future__ import annotations

import html
import math
from collections import defaultdict
from typing import Any

from matplotlib.figure import Figure

from dpscope.study.report.data import RunView, StudyData, mean_and_spread
from dpscope.study.report.figures import NON_PRIVATE, PALETTE
from dpscope.study.report.figures import style_axes

__all__ = ["fairness_section", "perturbation_section", "dynamics_section"]

DPSGD = "dpsgd"
_FAIRNESS_GAPS = ("accuracy_difference", "equal_opportunity_difference")


# -- shared helpers -------------------------------------------------------------------------
def _privacy_label(run: RunView) -> str:
    return NON_PRIVATE if run.epsilon_key is None else f"ε={run.epsilon_key:g}"


def _privacy_order(label: str) -> float:
    return float("inf") if label == NON_PRIVATE else float(label.removeprefix("ε="))


def _cell(values: list[Any]) -> str:
    mean, spread, count = mean_and_spread(values)
    if not count:
        return "&ndash;"
    return f"{mean:.3f}" + (f" <span class='pm'>&plusmn; {spread:.3f}</span>" if count > 1 else "")


def _table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return (f"<div class='table-wrap'><table><thead><tr>{head}</tr></thead>"
            f"<tbody>{body}</tbody></table></div>")


def _legend_outside(ax) -> None:
    """Legend to the right of the axes, where it cannot hide a curve or an error bar."""
    ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.02, 1.0))


def _line(ax, xs: list[float], values: list[list[Any]], colour: str, label: str, **style) -> None:
    points = [(x, *mean_and_spread(v)) for x, v in zip(xs, values)]
    points = [p for p in points if p[3]]
    if points:
        ax.errorbar([p[0] for p in points], [p[1] for p in points], yerr=[p[2] for p in points],
                    color=colour, marker="o", capsize=3, linewidth=1.6, label=label, **style)


# -- fairness under imbalance ---------------------------------------------------------------
_MINORITY_METRICS = {"minority_accuracy": "minority accuracy",
                     "majority_accuracy": "majority accuracy (all other groups)",
                     "accuracy_gap": "accuracy gap (majority − minority)"}
_GAP_TITLES = {"accuracy_difference": "accuracy difference (all groups, max − min)",
               "equal_opportunity_difference": "equal-opportunity difference (TPR gap)"}
CI_RESAMPLES = 1000
"""Bootstrap resamples for the minority-vs-rest intervals drawn in the report."""
_DODGE = 0.06  # x offset between privacy levels, in share-tick units


def _fairness_values(run: RunView) -> dict[str, dict[str, Any]]:
    """Every plotted statistic of a run as {"value", "ci"}: the minority against all other
    groups pooled (fairness.minority_vs_rest, from the per-group counts), and the gaps over
    all groups as the run recorded them."""
    from dpscope.fairness import minority_vs_rest_of_summary

    fairness = run.summary["fairness"]
    minority = run.summary["imbalance"]["minority_group"]
    values = minority_vs_rest_of_summary(fairness, minority, n_resamples=CI_RESAMPLES,
                                         seed=int(run.config.get("seed") or 0))
    return values | {gap: fairness["gaps"][gap] for gap in _FAIRNESS_GAPS}


def _ci_cell(entries: list[dict[str, Any]]) -> str:
    """Mean and spread over seeds, then the mean over seeds of each run's 95 % CI bounds."""
    text = _cell([e["value"] for e in entries])
    cis = [e["ci"] for e in entries if e.get("ci") and None not in e["ci"]]
    if cis:
        low = sum(c[0] for c in cis) / len(cis)
        high = sum(c[1] for c in cis) / len(cis)
        text += f" <span class='ci'>[{low:.3f}, {high:.3f}]</span>"
    return text


def _band(ax, xs: list[float], entries: list[list[dict[str, Any]]], colour: str) -> None:
    """Shade between the mean (over seeds) lower and upper bootstrap bounds at each x."""
    points = []
    for x, group in zip(xs, entries):
        cis = [e["ci"] for e in group if e.get("ci") and None not in e["ci"]]
        if cis:
            points.append((x, sum(c[0] for c in cis) / len(cis), sum(c[1] for c in cis) / len(cis)))
    if points:
        ax.fill_between([p[0] for p in points], [p[1] for p in points], [p[2] for p in points],
                        color=colour, alpha=0.12, linewidth=0)


def fairness_section(study: StudyData) -> str | None:
    """Minority vs majority accuracy and the gaps against the majority share, one line per
    privacy level, with seed spread (error bars) and bootstrap CIs (bands)."""
    runs = [r for r in study.finished if "fairness" in r.summary and "imbalance" in r.summary]
    if not runs:
        return None
    settings: dict[str, list[RunView]] = defaultdict(list)
    for run in runs:
        imbalance = run.summary["imbalance"]
        settings[f"{run.summary['dataset']}, minority {imbalance['minority_group']}"].append(run)
    values = {run.id: _fairness_values(run) for run in runs}
    defined = [gap for gap in _FAIRNESS_GAPS
               if any(values[r.id][gap]["value"] is not None for r in runs)]
    plotted = [*_MINORITY_METRICS, *[g for g in defined if g != "accuracy_difference"]]
    tabled = [*_MINORITY_METRICS, *defined]
    titles = _MINORITY_METRICS | _GAP_TITLES
    fig = Figure(figsize=(4.2 * len(plotted), 3.4 * len(settings)))
    rows = []
    for row, (setting, members) in enumerate(settings.items()):
        shares = sorted({r.summary["imbalance"]["majority_share"] for r in members})
        levels: dict[str, list[RunView]] = defaultdict(list)
        for run in members:
            levels[_privacy_label(run)].append(run)
        ordered = sorted(levels, key=_privacy_order)

        def at(level: str, share: float) -> list[RunView]:
            return [r for r in levels[level] if r.summary["imbalance"]["majority_share"] == share]

        for column, metric in enumerate(plotted):
            ax = fig.add_subplot(len(settings), len(plotted), row * len(plotted) + column + 1)
            for index, (colour, level) in enumerate(zip(PALETTE, ordered)):
                entries = [[values[r.id][metric] for r in at(level, share)] for share in shares]
                # dodge: levels side by side, so equal values keep every error bar visible
                dodge = (index - (len(ordered) - 1) / 2) * _DODGE
                xs = [position + dodge for position in range(len(shares))]
                _band(ax, xs, entries, colour)
                _line(ax, xs, [[e["value"] for e in group] for group in entries], colour, level)
            if metric == "accuracy_gap":
                ax.axhline(0.0, color="#999999", linewidth=0.8)
            ax.set_xticks(range(len(shares)), [f"{s:g}" for s in shares])
            style_axes(ax, f"{setting}:\n{titles[metric]}", "majority share of training set",
                       metric.replace("_", " "))
            if row == 0 and column == len(plotted) - 1:
                _legend_outside(ax)
        for share in shares:
            for level in ordered:
                group = at(level, share)
                if group:
                    rows.append([html.escape(setting), f"{share:g}", level, str(len(group)),
                                 *[_ci_cell([values[r.id][m] for r in group]) for m in tabled]])
    fig.tight_layout()
    img = study.figure("fairness", fig, "per-group accuracy and gaps against the majority share")
    composition = {r.summary["imbalance"]["test_composition"] for r in runs}
    caption = ("Test accuracy of the minority group and of all other examples pooled, and the "
               "gap between them, against the share of the training set held by the majority "
               "(the minority has the rest); one line per privacy level. Points and error bars: "
               "mean &plusmn; one standard deviation over seeds. Bands and the bracketed "
               "intervals in the table: 95 % stratified bootstrap CIs of one run's test "
               f"estimate (each bound averaged over seeds). Test set: "
               f"{html.escape(', '.join(sorted(composition)))}. Each run's summary.json holds "
               "every group's rates with bootstrap CIs.")
    undefined = [gap.replace("_", " ") for gap in _FAIRNESS_GAPS if gap not in defined]
    if undefined:
        caption += (f" Left out, undefined in every run: {', '.join(undefined)} (with the class "
                    "as the group, only the positive class's group has true positives; each "
                    "group's accuracy is then its class's recall, and the accuracy gap plays "
                    "the role of the TPR gap).")
    table = _table(["setting", "majority share", "privacy", "seeds",
                    *[titles[m] for m in tabled]], rows)
    return (f"<h2>Fairness under imbalance</h2><figure>{img}<figcaption>{caption}</figcaption>"
            f"</figure>{table}")


# -- input perturbation ---------------------------------------------------------------------
def _method(run: RunView) -> tuple[str, float | None]:
    """(mechanism or "dpsgd" or non-private, its epsilon parameter)."""
    record = run.summary.get("perturbation")
    if record is not None:
        return record["mechanism"], record["parameters"].get("epsilon")
    if run.private:
        return DPSGD, run.epsilon_key
    return NON_PRIVATE, None


def _no_guarantee(by_epsilon: dict[float | None, list[RunView]]) -> bool:
    """Whether a method's runs carry no privacy guarantee for images (singh2020)."""
    from dpscope.data.perturb import KIND_NONE

    return any((r.summary.get("perturbation") or {}).get("guarantee", {}).get("kind")
               == KIND_NONE for runs in by_epsilon.values() for r in runs)


def _method_label(name: str, by_epsilon: dict[float | None, list[RunView]]) -> str:
    return f"{name}\n(NOT image-level privacy)" if _no_guarantee(by_epsilon) else name


def _guarantee_text(run: RunView) -> str:
    record = run.summary.get("perturbation")
    if record is None:
        return ("(ε, δ)-DP for the training set (DP-SGD)" if run.private else "none")
    kind = html.escape(record["guarantee"]["kind"])
    return f"<strong>{kind}</strong>" if record["guarantee"]["epsilon"] is None else kind


def perturbation_section(study: StudyData) -> str | None:
    """Accuracy and AUC against epsilon for each perturbation mechanism and for DP-SGD."""
    runs = study.finished
    if not any("perturbation" in r.summary for r in runs):
        return None
    methods: dict[str, dict[float | None, list[RunView]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        name, epsilon = _method(run)
        methods[name][epsilon].append(run)
    metrics = [("test_accuracy", "test accuracy")]
    if any(r.record.test_auc is not None for r in runs):
        metrics.append(("test_auc", "test ROC AUC"))
    fig = Figure(figsize=(5.4 * len(metrics), 4.0))
    for index, (metric, title) in enumerate(metrics):
        ax = fig.add_subplot(1, len(metrics), index + 1)
        curves = [m for m in methods if m != NON_PRIVATE]
        for colour, name in zip(PALETTE, curves):
            epsilons = sorted(e for e in methods[name] if e is not None)
            values = [[getattr(r.record, metric) for r in methods[name][e]] for e in epsilons]
            _line(ax, epsilons, values, colour, _method_label(name, methods[name]),
                  linestyle=":" if _no_guarantee(methods[name]) else "-")
        baseline = mean_and_spread([getattr(r.record, metric)
                                    for r in methods.get(NON_PRIVATE, {}).get(None, [])])
        if baseline[2]:
            ax.axhline(baseline[0], color="#555555", linestyle="--", linewidth=1.1,
                       label=NON_PRIVATE)
        ax.set_xscale("log")
        ticks = sorted({e for m in curves for e in methods[m] if e is not None})
        ax.set_xticks(ticks, [f"{e:g}" for e in ticks])
        ax.minorticks_off()
        style_axes(ax, title, "epsilon (each method's own parameter)", title)
    _legend_outside(ax)
    fig.tight_layout()
    img = study.figure("perturbation", fig, "accuracy and AUC against epsilon per mechanism")
    rows = []
    for name, by_eps in methods.items():
        for epsilon in sorted(by_eps, key=lambda e: (e is None, e or 0.0)):
            group = by_eps[epsilon]
            rows.append([html.escape(name), "&ndash;" if epsilon is None else f"{epsilon:g}",
                         _guarantee_text(group[0]), str(len(group)),
                         *[_cell([getattr(r.record, m) for r in group]) for m, _ in metrics]])
    caption = ("Mean &plusmn; one standard deviation over seeds; dashed: non-private; dotted: "
               "a method without an image-level guarantee. The "
               "epsilons are not comparable across rows whose guarantees differ: see the "
               "guarantee column.")
    warning = ""
    if "singh2020_brightness_shift" in methods:
        warning = ("<p><strong>singh2020_brightness_shift is NOT image-level privacy</strong>: "
                   "it adds one Laplace draw per image to every pixel, as the pneumonia paper's "
                   "code did; its epsilon is that paper's noise parameter, not a guarantee.</p>")
    examples = _examples_block(study, runs, methods)
    headers = ["method", "epsilon", "guarantee", "seeds", *[t for _, t in metrics]]
    return (f"<h2>Input perturbation vs DP-SGD</h2>{warning}<figure>{img}<figcaption>{caption}"
            f"</figcaption></figure>{_table(headers, rows)}{examples}")


def _examples_block(study: StudyData, runs: list[RunView], methods: dict) -> str:
    """One training image under each mechanism at each epsilon, when the data can be loaded."""
    from dpscope.errors import DpscopeError

    perturbed = [r for r in runs if "perturbation" in r.summary]
    specs = sorted({(r.summary["perturbation"]["mechanism"],
                     r.summary["perturbation"]["parameters"].get("epsilon"),
                     r.summary["perturbation"]["spec"]) for r in perturbed})
    config = perturbed[0].config
    try:
        fig = _examples_figure(config["dataset"], config.get("data_dir"), specs)
    except (DpscopeError, OSError) as error:
        return f"<p>Example images left out: {html.escape(str(error))}</p>"
    img = study.figure("perturbation_examples", fig, "one training image under each mechanism")
    caption = ("The first training image (seed 0 split) under each mechanism at each epsilon, "
               "noise seed 0.")
    shifted = sorted({eps for name, eps, _ in specs if name == "singh2020_brightness_shift"})
    if shifted:
        shares = ", ".join(f"{math.exp(-eps):.0%} at ε={eps:g}" for eps in shifted)
        caption += (" singh2020_brightness_shift adds one Laplace draw of scale 255/ε to the "
                    "whole image and clips to [0, 255], as the authors' code did, so a draw "
                    "beyond &plusmn;255 leaves a blank white or black image: e<sup>−ε</sup> of "
                    f"the training images shift that far ({html.escape(shares)}).")
    return f"<figure>{img}<figcaption>{caption}</figcaption></figure>"


def _examples_figure(dataset: str, data_dir: Any, specs: list[tuple]) -> Figure:
    from dpscope.data import load_dataset
    from dpscope.data.perturb import parse_mechanism

    loaded = load_dataset(dataset, data_dir=data_dir, seed=0)
    image = loaded.train.images[:1]  # (1, C, H, W)
    names = sorted({name for name, _, _ in specs})
    epsilons = sorted({eps for _, eps, _ in specs})
    fig = Figure(figsize=(1.6 * (len(epsilons) + 1), 1.7 * len(names)))
    for row, name in enumerate(names):
        ax = fig.add_subplot(len(names), len(epsilons) + 1, row * (len(epsilons) + 1) + 1)
        _show(ax, image[0], "original" if row == 0 else "", name)
        for column, eps in enumerate(epsilons):
            spec = next((s for n, e, s in specs if n == name and e == eps), None)
            ax = fig.add_subplot(len(names), len(epsilons) + 1,
                                 row * (len(epsilons) + 1) + column + 2)
            if spec is None:
                ax.axis("off")
                continue
            mech = parse_mechanism(spec)
            _show(ax, mech.apply(image, 0)[0], f"ε={eps:g}" if row == 0 else "", "")
    fig.tight_layout()
    return fig


def _show(ax, image, title: str, ylabel: str) -> None:
    picture = image.permute(1, 2, 0).numpy()  # (H, W, C)
    ax.imshow(picture[..., 0] if picture.shape[2] == 1 else picture, cmap="gray", vmin=0,
              vmax=255)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=7)


# -- layer dynamics -------------------------------------------------------------------------
def dynamics_section(study: StudyData) -> str | None:
    """Layer dynamics (dpscope.dynamics) of the runs that recorded them, with every figure
    also written next to the report as figures/dynamics_*.png."""
    folders = [r.folder for r in study.finished if (r.folder / "dynamics.json").exists()]
    if not folders:
        return None
    from dpscope.dynamics.analyze import dynamics_html

    return dynamics_html(folders, figure=study.figure)
