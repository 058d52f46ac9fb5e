"""Speed and memory of one full DP training step (forward, per-example clipping, optimizer step;
no noise) for every clipping strategy, against non-private training and Opacus.

Timing: one process; every variant builds its own model copy once, warms up, then variants are
interleaved step by step (a rotating order each repeat) and each variant's median step time is
reported. Memory: each variant runs again alone in a fresh subprocess, which reports its RSS
high-water mark (VmHWM, reset just before the first step through /proc/self/clear_refs) minus
its RSS at that moment: torch's CPU allocator is invisible to tracemalloc, while RSS counts
every page the steps touched. Model, data and imports are excluded; the model's gradients and
optimizer state are included. Linux only.

On a GPU (`device="cuda"`) each timed step ends with a device synchronisation, so the wall clock
covers the kernels it queued, and memory is torch's peak allocation during the first steps of a
fresh copy of the variant (after the timing, one variant at a time) minus what was allocated
before them.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch.nn import functional as F

from dpscope import clipping, native
from dpscope.bench import _opacus
from dpscope.device import describe_device, machine_record, reset_peak_memory, resolve_device, synchronize
from dpscope.device import peak_memory_mb as device_peak_mb
from dpscope.errors import ConfigError
from dpscope.io import write_json_atomic
from dpscope.models import build_model

# model -> (in_channels, image_size), as the issue specifies
IMAGES = {"cnn": (1, 28), "resnet20": (3, 32), "wrn16_4": (3, 32), "vit_tiny": (3, 32), "mlp": (1, 28), "resnet18": (3, 32)}
DEFAULT_CASES = (("cnn", 32), ("cnn", 128), ("resnet20", 32), ("resnet20", 128), ("wrn16_4", 32), ("vit_tiny", 64))
NUM_CLASSES = 10
MAX_GRAD_NORM = 1.0
LR = 0.01
VARIANTS = ("nonprivate", *clipping.STRATEGIES, "opacus_hooks", "opacus_ghost")


@dataclass
class VariantResult:
    variant: str
    median_ms: float | None = None
    min_ms: float | None = None  # robust to other processes on a shared machine
    times_ms: list[float] = field(default_factory=list)
    peak_mb: float | None = None
    error: str | None = None


@dataclass
class CaseResult:
    model: str
    batch_size: int
    variants: list[VariantResult]
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]


def _xent(out, y):
    return F.cross_entropy(out, y, reduction="none")


def make_step(variant: str, model_name: str, batch_size: int, seed: int = 0,
              device: torch.device | str = "cpu") -> Callable[[], None]:
    """A closure running one training step of `variant` on fixed random data on `device`."""
    channels, size = IMAGES[model_name]
    torch.manual_seed(seed)
    model = build_model(model_name, in_channels=channels, image_size=size,
                        num_classes=NUM_CLASSES).to(device)
    x = torch.randn(batch_size, channels, size, size).to(device)
    y = torch.randint(0, NUM_CLASSES, (batch_size,)).to(device)
    if variant.startswith("opacus_"):
        return _opacus.opacus_step(variant.removeprefix("opacus_"), model, x, y, MAX_GRAD_NORM, LR)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    if variant == "nonprivate":

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y, reduction="sum").backward()
            optimizer.step()

        return step
    engine = clipping.ClippingEngine(model, variant)

    def private_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        engine.clipped_grad_sum(_xent, x, y, MAX_GRAD_NORM)
        optimizer.step()

    return private_step


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024  # kB -> MB


def _peak_mb_here(variant: str, model_name: str, batch_size: int, steps: int) -> float:
    """RSS high-water during `steps` steps minus RSS before them (Linux: VmHWM reset via clear_refs)."""
    step = make_step(variant, model_name, batch_size)
    before = _status_mb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets the high-water mark to the current RSS
    for _ in range(steps):
        step()
    return _status_mb("VmHWM") - before


def _cuda_peak_mb(variant: str, model_name: str, batch_size: int, device: torch.device,
                  steps: int = 3) -> float:
    """Peak CUDA allocation during `steps` steps of a fresh model minus the allocation before
    them (model and data): as on the CPU, the gradients and optimizer state count. A model
    that already stepped would hide them (its gradients and Opacus's grad_sample stay
    allocated between steps)."""
    step = make_step(variant, model_name, batch_size, device=device)
    synchronize(device)
    torch.cuda.empty_cache()
    before_mb = torch.cuda.memory_allocated(device) / 2**20
    reset_peak_memory(device)
    for _ in range(steps):
        step()
    synchronize(device)
    return device_peak_mb(device) - before_mb


def peak_memory_mb(variant: str, model_name: str, batch_size: int, threads: int, steps: int = 3) -> float:
    """RSS growth over `steps` steps of `variant`, measured alone in a fresh process."""
    code = (
        "import torch, sys; torch.set_num_threads(%d); from dpscope.bench.clipping import _peak_mb_here; "
        "print(_peak_mb_here(%r, %r, %d, %d))" % (threads, variant, model_name, batch_size, steps)
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def _variants_for(variants: Sequence[str], batch_size: int, naive_max_batch: int) -> list[str]:
    chosen = [v for v in variants if not (v.startswith("opacus_") and not _opacus.available())]
    return [v for v in chosen if not (v == "naive" and batch_size > naive_max_batch)]


def run_case(
    model_name: str, batch_size: int, variants: Sequence[str], *, repeats: int, warmup: int, memory: bool, threads: int,
    cpu_time: bool = False, device: torch.device = torch.device("cpu"),
) -> CaseResult:
    results = {v: VariantResult(v) for v in variants}
    steps: dict[str, Callable[[], None]] = {}
    for v in variants:
        try:
            steps[v] = make_step(v, model_name, batch_size, device=device)
            for _ in range(warmup):
                steps[v]()
            synchronize(device)
        except Exception as exc:  # a variant that cannot run this model is reported, not fatal
            results[v].error = f"{type(exc).__name__}: {exc}"[:200]
            steps.pop(v, None)
    load_before = os.getloadavg()
    order = list(steps)
    clock = time.process_time if cpu_time else time.perf_counter
    for r in range(repeats):
        shift = r % len(order) if order else 0
        for v in order[shift:] + order[:shift]:
            start = clock()
            steps[v]()
            synchronize(device)
            results[v].times_ms.append((clock() - start) * 1000)
    load_after = os.getloadavg()
    for v, res in results.items():
        if res.times_ms:
            res.median_ms = statistics.median(res.times_ms)
            res.min_ms = min(res.times_ms)
        if memory and v in steps and device.type == "cuda":
            res.peak_mb = _cuda_peak_mb(v, model_name, batch_size, device)
        elif memory and v in steps:
            try:
                res.peak_mb = peak_memory_mb(v, model_name, batch_size, threads)
            except subprocess.CalledProcessError as exc:
                res.error = f"memory run failed: {exc.stderr.strip().splitlines()[-1:]}"
    return CaseResult(model_name, batch_size, list(results.values()), load_before, load_after)


def run_clipping_benchmark(
    cases: Sequence[tuple[str, int]] = DEFAULT_CASES,
    variants: Sequence[str] = VARIANTS,
    *,
    repeats: int = 7,
    warmup: int = 2,
    naive_max_batch: int = 32,
    memory: bool = True,
    threads: int = 2,
    cpu_time: bool = False,
    device: str = "cpu",
    json_path: str | None = None,
    echo: Callable[[str], None] = print,
) -> dict:
    """Run every case, print a table per case, optionally write JSON; returns the JSON record.

    cpu_time=True times steps by process CPU time instead of wall time: on a machine shared
    with other work (where wall times swing 10x) CPU time with threads=1 still ranks variants
    faithfully; the targets are stated for wall time with 2 threads on an idle machine.
    """
    torch.set_num_threads(threads)
    where = resolve_device(device)
    if cpu_time and where.type != "cpu":
        raise ConfigError("--cpu-time measures the CPU's work only; time a GPU by wall clock "
                          "(drop --cpu-time)")
    record = {
        "device": describe_device(where),
        "machine": machine_record(),
        "torch": torch.__version__,
        "native_kernels": native.describe(),
        "threads": threads,
        "clock": "process CPU time" if cpu_time else "wall time",
        "repeats": repeats,
        "memory_method": ("torch.cuda peak allocation during the first 3 steps of a fresh model "
                          "minus the allocation before them"
                          if where.type == "cuda" else
                          "VmHWM reset before the first step, minus VmRSS then; fresh process per variant"),
        "cases": [],
    }
    echo(f"torch {torch.__version__}, {record['device']}, {threads} threads, {platform.platform()}, "
         f"load {os.getloadavg()}, {record['native_kernels']}")
    for model_name, batch_size in cases:
        chosen = _variants_for(variants, batch_size, naive_max_batch)
        case = run_case(
            model_name, batch_size, chosen, repeats=repeats, warmup=warmup, memory=memory, threads=threads,
            cpu_time=cpu_time, device=where,
        )
        record["cases"].append(asdict(case))
        echo(format_case(case))
    if json_path:
        write_json_atomic(Path(json_path), record)
    return record


def format_case(case: CaseResult) -> str:
    by_name = {v.variant: v for v in case.variants}
    base = by_name.get("nonprivate")
    opacus = [v.median_ms for n, v in by_name.items() if n.startswith("opacus_") and v.median_ms]
    opacus_best = min(opacus) if opacus else None
    lines = [
        f"\n{case.model} batch {case.batch_size} (load avg before {case.load_before[0]:.2f}, after {case.load_after[0]:.2f})",
        f"{'variant':<14}{'ms/step':>10}{'x nonpriv':>11}{'x opacus':>10}{'min ms':>9}{'x (min)':>9}{'peak MB':>10}{'x mem':>8}",
    ]
    for v in case.variants:
        if v.median_ms is None:
            lines.append(f"{v.variant:<14}  {v.error}")
            continue
        ratio = f"{v.median_ms / base.median_ms:.2f}" if base and base.median_ms else "-"
        min_ratio = f"{v.min_ms / base.min_ms:.2f}" if base and base.min_ms else "-"
        vs_opacus = f"{v.median_ms / opacus_best:.2f}" if opacus_best else "-"
        peak = f"{v.peak_mb:.0f}" if v.peak_mb is not None else "-"
        mem = f"{v.peak_mb / base.peak_mb:.2f}" if v.peak_mb is not None and base and base.peak_mb else "-"
        lines.append(
            f"{v.variant:<14}{v.median_ms:>10.1f}{ratio:>11}{vs_opacus:>10}{v.min_ms:>9.1f}{min_ratio:>9}{peak:>10}{mem:>8}"
        )
    return "\n".join(lines)
