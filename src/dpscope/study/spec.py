"""Study specs: a TOML file that expands into a list of runs.

    name = "quickstart"
    [base]                      # any RunConfig option, shared by every run
    dataset = "digits"
    epochs = 15
    [grid]                      # the cartesian product of these lists
    epsilon = [1.0, 3.0, 8.0, "none"]
    seed = [0, 1]               # `seeds` is accepted as the same axis
    [[variants]]                # optional: named bundles of options, each crossed with the grid
    name = "cnn"
    model = "cnn"

"none" sets an optional option to None: `epsilon = "none"` is a non-private run. Relative paths
(`data_dir`) are relative to the spec file. Every error is one line naming the file, the line
and the option, because tomllib gives no positions, the line is found by scanning the text.
"""

from __future__ import annotations

import difflib
import itertools
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dpscope.config import RunConfig
from dpscope.errors import ConfigError
from dpscope.study.run_ids import label, run_id
from dpscope.study.toml_lines import find_line

NONE_VALUE = "none"
_SEED_ALIASES = {"seed", "seeds"}
_TOP_LEVEL = ("name", "description", "base", "grid", "variants")


class _SpecFile(BaseModel):
    """The shape of the file; option names and values are checked against RunConfig after."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
                      description="study name: letters, digits, '.', '_' and '-'")
    description: str = ""
    base: dict[str, Any] = {}
    grid: dict[str, list[Any]] = {}
    variants: list[dict[str, Any]] = []


@dataclass(frozen=True)
class PlannedRun:
    """One run of a study: its id (also its folder name) and its full configuration."""

    id: str
    config: RunConfig
    position: int


@dataclass(frozen=True)
class StudySpec:
    name: str
    description: str
    path: Path
    text: str
    base: dict[str, Any]
    grid: dict[str, list[Any]]
    variants: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def runs(self) -> list[PlannedRun]:
        """Every run, seeds outermost so an interrupted study already holds whole curves."""
        seeds = self.grid.get("seed", [self.base.get("seed", RunConfig.model_fields["seed"].default)])
        axes = [(k, v) for k, v in self.grid.items() if k != "seed"]
        variants = self.variants or [("", {})]
        planned: list[PlannedRun] = []
        seen: set[str] = set()
        for seed in seeds:
            for variant_name, variant in variants:
                for point in itertools.product(*(values for _, values in axes)):
                    parts = [(key, value) for (key, _), value in zip(axes, point)]
                    values = {**self.base, **variant, **dict(parts), "seed": seed}
                    identifier = run_id([*parts, ("seed", seed)], variant_name or None)
                    if identifier in seen:
                        raise self._error(("grid",), f"two runs get the id {identifier!r}; "
                                          "make the grid values or variant names distinct")
                    seen.add(identifier)
                    planned.append(PlannedRun(identifier, self._run_config(identifier, values, variant),
                                              len(planned)))
        return planned

    def _run_config(self, identifier: str, values: dict[str, Any], variant: dict[str, Any]) -> RunConfig:
        try:
            return RunConfig(**values)
        except ValidationError as error:
            message = "; ".join(e["msg"].removeprefix("Value error, ") for e in error.errors())
            named = [k for k in values if re.search(rf"\b{k}\b", message)] or list(values)
            key = named[0]
            where = ("grid", key) if key in self.grid else ("base", key)
            if key in variant:
                index = next(i for i, (_, v) in enumerate(self.variants) if v is variant)
                where = ("variants", index, key)
            raise self._error(where, f"run {identifier}: {message}") from None

    def _error(self, location: tuple, message: str) -> ConfigError:
        return spec_error(self.path, self.text, location, message)


def spec_error(path: Path, text: str, location: tuple, message: str,
               index: int | None = None) -> ConfigError:
    """One line: `file, line N: field: what is wrong`; `index` names a list element."""
    line = find_line(text, location)
    where = f"{path}, line {line}" if line else f"{path}"
    name = "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else str(p))
                   for i, p in enumerate(location))
    if index is not None:
        name += f"[{index}]"
    return ConfigError(f"invalid study spec {where}: {name}: {message}")


def load_spec(path: Path) -> StudySpec:
    """Read and validate a study spec file; errors are one-line ConfigErrors."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"study spec {path} not found; pass the path of a .toml file like studies/quickstart.toml")
    return parse_spec(path.read_text(encoding="utf-8"), path)


def parse_spec(text: str, path: Path) -> StudySpec:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"invalid study spec {path}: not valid TOML ({error})") from None
    try:
        shape = _SpecFile(**raw)
    except ValidationError as error:
        item = error.errors()[0]
        location = tuple(item["loc"])
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = f"unknown option; the top-level keys are {', '.join(_TOP_LEVEL)}"
        elif item["type"] == "list_type":
            message = f"must be a list of values, e.g. {location[-1]} = [1, 2] (got {item['input']!r})"
        raise spec_error(path, text, location, message) from None
    spec_dir = path.parent
    base = {key: _option(path, text, ("base", key), key, value, spec_dir)
            for key, value in shape.base.items()}
    grid = _grid(path, text, shape.grid, spec_dir, declared="grid" in raw)
    variants = _variants(path, text, shape.variants, grid, spec_dir)
    spec = StudySpec(shape.name, shape.description, path, text, base, grid, variants)
    spec.runs()  # surface cross-option errors (epsilon with noise_multiplier...) now
    return spec


def _grid(path: Path, text: str, grid: dict[str, list[Any]], spec_dir: Path,
          declared: bool) -> dict[str, list[Any]]:
    if declared and not grid:
        raise spec_error(path, text, ("grid",), "empty; list at least one option, "
                         "e.g. epsilon = [1.0, 8.0], or remove [grid]")
    if _SEED_ALIASES <= grid.keys():
        raise spec_error(path, text, ("grid", "seeds"), "give seed or seeds, not both")
    out: dict[str, list[Any]] = {}
    for key, values in grid.items():
        name = "seed" if key in _SEED_ALIASES else key
        if not values:
            raise spec_error(path, text, ("grid", key), "empty list; give at least one value")
        checked = [_option(path, text, ("grid", key), name, v, spec_dir, index=i)
                   for i, v in enumerate(values)]
        labels = [label(name, v) for v in checked]
        for i, text_label in enumerate(labels):
            if text_label in labels[:i]:
                raise spec_error(path, text, ("grid", key),
                                 f"value {values[i]!r} appears twice (as {text_label!r})")
        out[name] = checked
    return out


def _variants(path: Path, text: str, variants: list[dict[str, Any]], grid: dict[str, list[Any]],
              spec_dir: Path) -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    for index, raw in enumerate(variants):
        options = {k: v for k, v in raw.items() if k != "name"}
        checked = {}
        for key, value in options.items():
            if key in _SEED_ALIASES:
                raise spec_error(path, text, ("variants", index, key),
                                 "every variant runs at every seed; set seed in [base] or [grid]")
            if key in grid:
                raise spec_error(path, text, ("variants", index, key),
                                 "also set in [grid]; set it in one place")
            checked[key] = _option(path, text, ("variants", index, key), key, value, spec_dir)
        name = raw.get("name")
        if name is not None and not isinstance(name, str):
            raise spec_error(path, text, ("variants", index, "name"), "must be a string")
        name = name or "-".join(label(k, v) for k, v in checked.items()) or "base"
        if any(name == other for other, _ in out):
            raise spec_error(path, text, ("variants", index, "name"),
                             f"variant name {name!r} is used twice")
        out.append((name, checked))
    return out


def _option(path: Path, text: str, location: tuple, key: str, value: Any, spec_dir: Path,
            index: int | None = None) -> Any:
    """Check one option value against RunConfig; resolve "none" and relative paths."""
    fields = RunConfig.model_fields
    if key not in fields:
        close = difflib.get_close_matches(key, [*fields, "seeds"], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise spec_error(path, text, location, f"unknown option {key!r}{hint}")
    if value == NONE_VALUE and _allows_none(fields[key].annotation):
        value = None
    try:
        checked = getattr(RunConfig(**{key: value}), key)
    except ValidationError as error:
        message = "; ".join(e["msg"].removeprefix("Value error, ") for e in error.errors())
        raise spec_error(path, text, location, f"{message} (got {value!r})", index) from None
    if isinstance(checked, Path) and not checked.is_absolute():
        checked = (spec_dir / checked).resolve()
    return checked


def _allows_none(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    return (origin is typing.Union or origin is types.UnionType) and type(None) in typing.get_args(annotation)
