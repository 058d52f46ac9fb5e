"""The study report: report.html (self-contained) and figures/*.png, built from the results
store and the run folders only; it never trains or evaluates a model.

    build_report(Path("studies_out/quickstart"))   # -> studies_out/quickstart/report.html
"""

from __future__ import annotations

from pathlib import Path

from dpscope.io import write_text_atomic
from dpscope.study.report.data import RunView, StudyData, load_study
from dpscope.study.report.page import render_page
from dpscope.study.report.sections import Section, register_section, registered_sections

REPORT_FILE = "report.html"

__all__ = ["build_report", "register_section", "registered_sections", "Section", "StudyData", "RunView",
           "load_study", "REPORT_FILE"]


def build_report(study_dir: Path) -> Path:
    """Write the report of the study in `study_dir` and return its path."""
    study = load_study(Path(study_dir))
    parts = []
    for section in registered_sections():
        fragment = section.resolve()(study)
        if fragment:
            parts.append((section.name, section.title, fragment))
    done = len(study.finished)
    subtitle = f"dpscope study report: {done} of {len(study.runs)} runs finished"
    path = Path(study_dir) / REPORT_FILE
    write_text_atomic(path, render_page(f"Study {study.name}", subtitle, parts))
    return path
