"""The sections every study report has: overview, privacy-utility, per-class accuracy,
training curves, layer dynamics (when recorded), every run, and the environment."""

from __future__ import annotations

import html
import importlib.metadata
import platform
from collections import Counter
from datetime import datetime, timezone

from dpscope.study.report.data import RunView, StudyData, mean_and_spread
from dpscope.study.report.figures import (NON_PRIVATE, by_epsilon, per_class_figure,
                                          privacy_utility_figure, training_curves_figure)

_PACKAGES = ("dpscope", "torch", "numpy", "scikit-learn", "dp-accounting", "pydantic", "matplotlib")


def _num(value, digits: int = 4) -> str:
    if value is None or value != value:
        return "&ndash;"
    return f"{value:.{digits}f}" if isinstance(value, float) else html.escape(str(value))


def _pm(mean: float, spread: float, count: int) -> str:
    if not count:
        return "&ndash;"
    return f"{mean:.4f}" + (f" <span class='pm'>&plusmn; {spread:.4f}</span>" if count > 1 else "")


def _table(headers: list[str], rows: list[list[str]], numeric_from: int = 1) -> str:
    head = "".join(f"<th class='{'num' if i >= numeric_from else ''}'>{h}</th>"
                   for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(f"<td class='{'num' if i >= numeric_from else ''}'>{c}</td>"
                                     for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<div class='table-wrap'><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


def _figure_block(img: str, caption: str) -> str:
    return f"<figure>{img}<figcaption>{caption}</figcaption></figure>"


def overview_section(study: StudyData) -> str:
    status = Counter(r.record.status for r in study.runs)
    compute = sum(r.record.seconds or 0.0 for r in study.finished)
    tiles = [("runs", len(study.runs)), ("finished", status["finished"]),
             ("failed", status["failed"]), ("pending", status["pending"] + status["running"]),
             ("training time", f"{compute / 60:.1f} min" if compute >= 60 else f"{compute:.1f} s")]
    cards = "".join(f"<div class='stat'><div class='value'>{v}</div><div class='label'>{k}</div></div>"
                    for k, v in tiles)
    description = f"<p>{html.escape(study.description)}</p>" if study.description else ""
    spec = (f"<details><summary>Study spec</summary><pre>{html.escape(study.spec_text)}</pre></details>"
            if study.spec_text else "")
    return f"<h2>Overview</h2>{description}<div class='stats'>{cards}</div>{spec}"


def privacy_utility_section(study: StudyData) -> str | None:
    series = study.series()
    fig = privacy_utility_figure(series)
    if fig is None:
        return None
    img = study.figure("privacy_utility", fig, "test accuracy and AUC against epsilon")
    rows = []
    for label, runs in series.items():
        for eps, group in by_epsilon(runs).items():
            accuracy = mean_and_spread([r.record.test_accuracy for r in group])
            auc = mean_and_spread([r.record.test_auc for r in group])
            spent = mean_and_spread([r.record.epsilon for r in group])
            rows.append([html.escape(label), NON_PRIVATE if eps is None else f"{eps:g}",
                         _num(spent[0], 3) if spent[2] else "&ndash;", str(accuracy[2]),
                         _pm(*accuracy), _pm(*auc)])
    table = _table(["series", "target epsilon", "epsilon spent", "seeds", "test accuracy",
                    "test AUC"], rows, numeric_from=1)
    caption = ("Mean over seeds; error bars and bands: &plusmn; one standard deviation. "
               "Dashed lines: the non-private runs of the same series.")
    return f"<h2>Privacy vs utility</h2>{_figure_block(img, caption)}{table}"


def per_class_section(study: StudyData) -> str | None:
    return _figure_section(
        study, "Per-class accuracy", "per_class_accuracy", per_class_figure(study.series()),
        "per-class test accuracy against epsilon",
        "Test accuracy of each class, mean over seeds. Privacy usually costs the smaller and "
        "harder classes most.")


def training_curves_section(study: StudyData) -> str | None:
    return _figure_section(
        study, "Training curves", "training_curves", training_curves_figure(study.series()),
        "validation accuracy per epoch",
        "Validation accuracy after each epoch: mean over seeds, band from lowest to highest.")


def _figure_section(study: StudyData, title: str, name: str, fig, alt: str, caption: str) -> str | None:
    if fig is None:
        return None
    return f"<h2>{title}</h2>{_figure_block(study.figure(name, fig, alt), caption)}"


def runs_section(study: StudyData) -> str:
    rows = [_run_row(r) for r in study.runs]
    headers = ["run", "status", "model", "target eps", "eps spent", "delta", "seed",
               "test acc", "balanced acc", "test AUC", "epochs", "seconds", "attempts"]
    return "<h2>All runs</h2>" + _table(headers, rows, numeric_from=3)


def _run_row(run: RunView) -> list[str]:
    record, config = run.record, run.config
    status = f"<span class='badge {record.status}'>{record.status}</span>"
    if record.error:
        status += f"<div class='error'>{html.escape(record.error)}</div>"
    return [f"<code>{html.escape(run.id)}</code>", status, html.escape(str(config.get("model"))),
            _num(config.get("epsilon"), 2) if run.private else NON_PRIVATE,
            _num(record.epsilon, 3), _num(record.delta, 8) if record.delta else "&ndash;",
            str(config.get("seed")), _num(record.test_accuracy), _num(record.test_balanced_accuracy),
            _num(record.test_auc), str(len(run.epochs)), _num(record.seconds, 1),
            str(record.attempts)]


def environment_section(study: StudyData) -> str:
    values: dict[str, Counter] = {}
    for run in study.runs:
        for key, value in run.environment.items():
            values.setdefault(key, Counter())[str(value)] += 1
    rows = [[html.escape(k), "<br>".join(f"{html.escape(v)}" + (f" <span class='pm'>({n} runs)</span>"
                                                                  if len(c) > 1 else "")
                                         for v, n in c.most_common())]
            for k, c in sorted(values.items())]
    runs_table = _table(["recorded by the runs", "value"], rows, numeric_from=99) if rows else \
        "<p>No run folder recorded its environment.</p>"
    here = [["built", datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")],
            ["python", platform.python_version()], ["platform", html.escape(platform.platform())]]
    for package in _PACKAGES:
        try:
            here.append([package, importlib.metadata.version(package)])
        except importlib.metadata.PackageNotFoundError:
            continue
    return ("<h2>Environment</h2>" + runs_table
            + "<h3>This report was built with</h3>" + _table(["", "version"], here, numeric_from=99))
