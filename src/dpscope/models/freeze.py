"""Keep chosen parameters at their initial values during training.

Under DP-SGD every trained coordinate receives noise of the same scale while the clipping bound
is shared by all of them, so training fewer coordinates leaves each more signal. Freezing part
of a model at its random initialisation (pre-pruning in the spirit of Adamczewski et al. 2023)
uses no data, so it costs no privacy; frozen parameters get neither gradient nor noise.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from torch import nn

from dpscope.errors import ConfigError


def parse_freeze_patterns(spec: str | None) -> tuple[str, ...]:
    """'a.*.weight,b' -> ('a.*.weight', 'b'); None or '' -> ()."""
    if not spec:
        return ()
    patterns = tuple(part.strip() for part in spec.split(","))
    if any(not p for p in patterns):
        raise ConfigError(f"freeze {spec!r} has an empty pattern; give comma-separated parameter "
                          "name patterns such as 'stages.2.*.conv?.weight'")
    return patterns


def freeze_parameters(model: nn.Module, spec: str | None) -> list[str]:
    """Freeze every parameter whose name matches one of the comma-separated glob patterns in
    `spec` (a pattern without wildcards also matches everything under that module path).
    Returns the frozen names. A pattern that matches nothing, or a spec that would leave
    nothing to train, is a ConfigError."""
    patterns = parse_freeze_patterns(spec)
    names = [name for name, _ in model.named_parameters()]

    def matches(name: str, pattern: str) -> bool:
        return fnmatchcase(name, pattern) or name.startswith(pattern + ".")

    for pattern in patterns:
        if not any(matches(name, pattern) for name in names):
            raise ConfigError(f"freeze pattern {pattern!r} matches no parameter; names look like "
                              f"{', '.join(names[:3])}, ...")
    frozen = [name for name in names if any(matches(name, p) for p in patterns)]
    if patterns and len(frozen) == len(names):
        raise ConfigError(f"freeze {spec!r} would freeze every parameter: nothing would train")
    for name, param in model.named_parameters():
        if name in frozen:
            param.requires_grad_(False)
    return frozen


def describe_frozen(model: nn.Module, frozen: list[str]) -> str:
    """One line for the run's plan: how much of the model trains."""
    sizes = {name: param.numel() for name, param in model.named_parameters()}
    kept = sum(sizes[name] for name in frozen)
    total = sum(sizes.values())
    return (f"frozen at init (no gradient, no noise): {len(frozen)} tensors, {kept:,} of {total:,} "
            f"parameters; {total - kept:,} train")
