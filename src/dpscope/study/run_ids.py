"""Readable, deterministic run ids: `eps1-seed0`, `resnet18-nonprivate-seed2`, `lr0.1-bs256-seed0`.

An id is built only from the values that define the run (variant name, grid values, seed), so
expanding the same spec again gives the same ids, and adding a value to a grid axis keeps the
ids of the runs already there.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

# short prefixes for the fields that are swept most often; any other field uses its own name
_PREFIX = {
    "epsilon": "eps",
    "noise_multiplier": "sigma",
    "batch_size": "bs",
    "physical_batch_size": "pbs",
    "max_grad_norm": "C",
    "weight_decay": "wd",
    "seed": "seed",
    "epochs": "ep",
}
# fields whose value alone reads well (`cnn`, `pneumoniamnist`, `adam`)
_VALUE_ONLY = {"model", "dataset", "optimizer", "clipping", "accountant"}
_UNSAFE = re.compile(r"[^A-Za-z0-9.+_]+")


def _value_text(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, Path):
        return value.stem or value.name
    return str(value)


def label(field: str, value: Any) -> str:
    """The id fragment of one field value, safe in a folder name."""
    if value is None:
        text = "nonprivate" if field in {"epsilon", "noise_multiplier"} else f"no-{field}"
    elif isinstance(value, bool):
        text = field.replace("_", "-") if value else f"no-{field.replace('_', '-')}"
    elif field in _VALUE_ONLY:
        text = _value_text(value)
    else:
        text = _PREFIX.get(field, field.replace("_", "-")) + _value_text(value)
    return _UNSAFE.sub("-", text).strip("-") or field


def run_id(parts: list[tuple[str, Any]], variant: str | None = None) -> str:
    """Join the labels of `parts` (in order), after the variant's name when there is one."""
    labels = [label(field, value) for field, value in parts]
    if variant:
        labels.insert(0, _UNSAFE.sub("-", variant).strip("-"))
    return "-".join(labels)
