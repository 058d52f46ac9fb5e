"""Where a run computes: the CPU, or an accelerator torch can see.

    device = resolve_device("auto")   # cuda when torch sees a GPU, else cpu

"auto" keeps a run portable: the same config.json trains on a laptop and on a GPU server. A
named device that is not there is a user error at start, never a silent fall-back to the CPU,
since a benchmark timed on the wrong device would mislead. Poisson sampling draws on the CPU, so
batches are the same on every device; seeded noise comes from each device's own generator, so
the CPU and a GPU draw different noise (each reproducible).
"""

from __future__ import annotations

import os
import platform
from contextlib import contextmanager
from typing import Iterator

import torch

from dpscope.errors import ConfigError

DEVICE_HELP = "auto (a CUDA GPU when torch sees one, else the CPU), cpu, cuda or cuda:N"


def check_device_spec(spec: str) -> str:
    """`spec` if torch can parse it as a device ("auto" too), else ConfigError; needs no device."""
    if spec == "auto":
        return spec
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError):
        raise ConfigError(f"device {spec!r} is not a device torch knows; use {DEVICE_HELP}") from None
    if device.type not in ("cpu", "cuda"):  # mps: no float64, which the run statistics use
        raise ConfigError(f"device {spec!r} is not supported; use {DEVICE_HELP}")
    return spec


def device_present(device: torch.device) -> bool:
    """Whether this machine has `device` (a saved CUDA stream may come from another machine)."""
    if device.type == "cuda":
        return torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()
    return True


def resolve_device(spec: str) -> torch.device:
    """The torch device for `spec`; ConfigError when it names one this machine does not have."""
    check_device_spec(spec)
    if spec == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {spec!r} asked for, but torch sees no CUDA GPU here (torch "
                              f"{torch.__version__}); use --device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device {spec!r} asked for, but torch sees "
                              f"{torch.cuda.device_count()} CUDA GPU(s); use cuda:0 to cuda:"
                              f"{torch.cuda.device_count() - 1}")
    return device


def describe_device(device: torch.device) -> str:
    """The device and what it is, e.g. 'cuda:0 (NVIDIA H100 80GB HBM3)' or 'cpu (AMD EPYC,
    family 26 model 2, AVX512, x86_64)'. The CPU matters to a reader: oneDNN picks other kernels
    on other CPUs, so float sums round differently and a chaotic run can end elsewhere. Virtual
    machines often name only the brand, so the x86 family and model (the generation) and the
    vector instructions torch dispatches to are given too."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    if device.type == "cpu":
        parts = [cpu_model(), cpu_generation(), torch.backends.cpu.get_cpu_capability(), platform.machine()]
        return f"cpu ({', '.join(part for part in parts if part)})"
    return str(device)


CPUINFO = "/proc/cpuinfo"  # Linux's description of the CPUs


def _cpuinfo_fields(*names: str) -> dict[str, str]:
    """The first CPU's values of the named CPUINFO fields (those it has; none off Linux)."""
    found: dict[str, str] = {}
    try:
        with open(CPUINFO) as info:
            for line in info:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key in names and key not in found:
                    found[key] = value.strip()
                if not line.strip() and found:  # the first CPU's block ends
                    break
    except OSError:
        pass
    return found


def cpu_model() -> str:
    """The CPU's model name ('' where the system does not say): Linux's CPUINFO, else
    platform.processor()."""
    return _cpuinfo_fields("model name").get("model name") or platform.processor().strip()


def cpu_generation() -> str:
    """'family F model M' from CPUINFO (x86), '' where it does not say."""
    fields = _cpuinfo_fields("cpu family", "model")
    if "cpu family" not in fields or "model" not in fields:
        return ""
    return f"family {fields['cpu family']} model {fields['model']}"


def machine_record() -> dict[str, object]:
    """The machine a benchmark ran on, for its JSON record."""
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_model": cpu_model(), "cpu_generation": cpu_generation(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpus": os.cpu_count()}


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that a wall-clock reading includes it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak for `peak_memory_mb` (CUDA only)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float | None:
    """Peak memory allocated on a CUDA device since the last reset; None elsewhere."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return None


@contextmanager
def exact_float32(device: torch.device) -> Iterator[None]:
    """Full float32 in cuDNN convolutions and CUDA matmuls within the block (no TF32).

    cuDNN runs float32 convolutions in TF32 by default, which keeps 10 mantissa bits. A
    per-example norm and the clipped sum come from different kernels, so in TF32 they could
    disagree by about 1e-3, and a clipped contribution could exceed its bound: the sensitivity
    the accountant assumes. In full float32 they agree to float32 rounding, as on the CPU. The
    forward and backward passes themselves may stay in TF32: they define the gradients, and
    only the norms and sums of the same gradients need to agree. A no-op off CUDA.
    """
    if device.type != "cuda":
        yield
        return
    conv, matmul = getattr(torch.backends.cudnn, "conv", None), torch.backends.cuda.matmul
    if hasattr(conv, "fp32_precision"):  # torch >= 2.9, whose legacy flags must not be mixed in
        owners, flag, off = (conv, matmul), "fp32_precision", "ieee"
    else:
        owners, flag, off = (torch.backends.cudnn, matmul), "allow_tf32", False
    before = [getattr(owner, flag) for owner in owners]
    for owner in owners:
        setattr(owner, flag, off)
    try:
        yield
    finally:
        for owner, value in zip(owners, before):
            setattr(owner, flag, value)
