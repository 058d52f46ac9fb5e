"""The report's sections: an ordered registry of builders, each `function(study) -> HTML or None`.

A builder returns an HTML fragment, or None when the study has nothing for it (no private runs,
no dynamics recorded). Builders are named by "module:function" and imported only when a report
is built, so a section can come from any package (layer dynamics, fairness) without that
package being imported by the others, and a new section touches no existing one:

    register_section("fairness", "Fairness", "dpscope.fairness.report:study_section")
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

from dpscope.study.report.data import StudyData

SectionBuilder = Callable[[StudyData], "str | None"]


@dataclass(frozen=True)
class Section:
    name: str  # the anchor in the page
    title: str  # the entry in the page's navigation
    builder: str | SectionBuilder  # "module:function" or the function itself

    def resolve(self) -> SectionBuilder:
        if callable(self.builder):
            return self.builder
        module, _, function = self.builder.partition(":")
        return getattr(importlib.import_module(module), function)


_BUILTIN = "dpscope.study.report.builtin"
_SECTIONS: list[Section] = [
    Section("overview", "Overview", f"{_BUILTIN}:overview_section"),
    Section("privacy-utility", "Privacy vs utility", f"{_BUILTIN}:privacy_utility_section"),
    Section("per-class", "Per-class accuracy", f"{_BUILTIN}:per_class_section"),
    Section("training", "Training curves", f"{_BUILTIN}:training_curves_section"),
    Section("dynamics", "Layer dynamics", "dpscope.study_sections:dynamics_section"),
    Section("fairness", "Fairness", "dpscope.study_sections:fairness_section"),
    Section("perturbation", "Input perturbation", "dpscope.study_sections:perturbation_section"),
    Section("runs", "All runs", f"{_BUILTIN}:runs_section"),
    Section("environment", "Environment", f"{_BUILTIN}:environment_section"),
]


def registered_sections() -> list[Section]:
    """The registered sections, in page order."""
    return list(_SECTIONS)


def register_section(name: str, title: str, builder: str | SectionBuilder, *,
                     before: str | None = "runs") -> None:
    """Add (or replace) a section; by default it goes before the table of all runs."""
    _SECTIONS[:] = [s for s in _SECTIONS if s.name != name]
    section = Section(name, title, builder)
    names = [s.name for s in _SECTIONS]
    _SECTIONS.insert(names.index(before) if before in names else len(_SECTIONS), section)
