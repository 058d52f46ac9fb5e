"""Overhead of `WeightChangeTracker` on training, non-private and private, in one process.

A minimal loop of its own (the library's loop is measured the same way once it is wired):
synthetic images, plain SGD; the private variant computes per-example gradients with
torch.func (vmap of grad), clips them flatly, sums, adds Gaussian noise and fills a full
StepReport (per-parameter norms, clipped-sum norms, noise std), so the tracker does all its
per-step work. Each epoch runs once without and once with the tracker, interleaved, and the
time spent inside the tracker's hooks is also timed directly (less noisy than the difference
of two epochs on a busy machine). Prints a table and writes JSON.

    python benchmarks/dynamics_overhead.py --model resnet20 --epochs 3 --steps 20
    python benchmarks/dynamics_overhead.py --device cuda --batch-size 256 --steps 100
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from dpscope.callbacks import LoopState, StepReport
from dpscope.dynamics import WeightChangeTracker
from dpscope.errors import run_script
from dpscope.models import build_model


class TimedTracker(WeightChangeTracker):
    """The tracker with the seconds spent in its hooks counted."""

    def __init__(self, sync, **kw):
        super().__init__(**kw)
        self.seconds, self._sync = 0.0, sync

    def _timed(self, hook, *args):
        self._sync()
        start = time.perf_counter()
        hook(*args)
        self._sync()
        self.seconds += time.perf_counter() - start

    def on_step_end(self, state, report):
        self._timed(super().on_step_end, state, report)

    def on_epoch_end(self, state, metrics):
        self._timed(super().on_epoch_end, state, metrics)


def private_gradient(model, x, y, max_grad_norm, noise_multiplier, generator):
    """Per-example gradients, flat clipping, noise; sets p.grad to the noisy mean; a report."""
    params = {n: p.detach() for n, p in model.named_parameters()}

    def loss_one(p, xi, yi):
        return F.cross_entropy(functional_call(model, p, (xi[None],)), yi[None])

    grads = vmap(grad(loss_one), in_dims=(None, 0, 0))(params, x, y)  # name -> (B, *shape)
    sq = {n: g.flatten(1).square().sum(1) for n, g in grads.items()}
    norms = torch.stack(list(sq.values())).sum(0).sqrt()
    factor = (max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
    noise_std = noise_multiplier * max_grad_norm
    clipped_norms = {}
    for n, p in model.named_parameters():
        summed = torch.einsum("b,b...->...", factor, grads[n])
        clipped_norms[n] = summed.norm()
        noise = torch.randn(summed.shape, device=summed.device, generator=generator) * noise_std
        p.grad = (summed + noise) / len(y)
    return StepReport(step=0, epoch=0, batch_size=len(y), loss=math.nan, per_example_norms=norms,
                      per_param_sq_norms=sq, max_grad_norm=max_grad_norm, noise_std=noise_std,
                      clipped_sum_norms={n: float(v) for n, v in clipped_norms.items()})


def mean_gradient(model, x, y):
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    return StepReport(step=0, epoch=0, batch_size=len(y), loss=math.nan)


def run_epoch(model, optimizer, state, data, tracker, private, args, generator, sync):
    sync()
    start = time.perf_counter()
    for x, y in data:
        report = (private_gradient(model, x, y, 1.0, 1.0, generator) if private
                  else mean_gradient(model, x, y))
        optimizer.step()
        state.step += 1
        report.step, report.epoch = state.step, state.epoch
        if tracker is not None:
            tracker.on_step_end(state, report)
    state.epoch += 1
    if tracker is not None:
        tracker.on_epoch_end(state, {})
    sync()
    return time.perf_counter() - start


def measure(private, args, device, sync):
    torch.manual_seed(0)
    model = build_model(args.model, in_channels=3, image_size=32, num_classes=10).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    generator = torch.Generator(device=device).manual_seed(0)
    data = [(torch.randn(args.batch_size, 3, 32, 32, device=device),
             torch.randint(0, 10, (args.batch_size,), device=device)) for _ in range(args.steps)]
    state = LoopState(model=model, optimizer=optimizer, run_dir=None)
    tracker = TimedTracker(sync, every_steps=args.every_steps, autosave=False)
    tracker.on_train_start(state)
    run_epoch(model, optimizer, state, data[:2], None, private, args, generator, sync)  # warm-up
    plain, tracked, inside = [], [], []
    for _ in range(args.epochs):
        plain.append(run_epoch(model, optimizer, state, data, None, private, args, generator, sync))
        before = tracker.seconds
        tracked.append(run_epoch(model, optimizer, state, data, tracker, private, args, generator, sync))
        inside.append(tracker.seconds - before)
    snapshot_mb = sum(p.numel() * p.element_size() for p in tracker._params) / 2**20
    params_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    return {
        "private": private,
        "epoch_seconds_without": statistics.median(plain),
        "epoch_seconds_with": statistics.median(tracked),
        "tracker_seconds_per_epoch": statistics.median(inside),
        "overhead_by_difference_pct": 100 * (statistics.median(tracked) / statistics.median(plain) - 1),
        "overhead_inside_hooks_pct": 100 * statistics.median(inside) / statistics.median(plain),
        "snapshot_mb": snapshot_mb, "model_params_mb": params_mb,
        "layers_tracked": len(tracker._params), "points_recorded": len(tracker.series()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--batch-size", type=int, default=64, help="examples per step")
    parser.add_argument("--steps", type=int, default=20, help="steps per epoch")
    parser.add_argument("--epochs", type=int, default=3, help="interleaved epochs per variant")
    parser.add_argument("--every-steps", type=int, default=None, help="interval; default each epoch")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/dynamics_overhead.json"))
    args = parser.parse_args()
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    load_before = os.getloadavg()
    rows = [measure(private, args, device, sync) for private in (False, True)]
    result = {"config": vars(args) | {"out": str(args.out)}, "rows": rows,
              "load_average_before": load_before, "load_average_after": os.getloadavg(),
              "cpu_count": os.cpu_count(), "torch": torch.__version__, "machine": platform.node(),
              "device_name": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor()}
    print(f"{args.model}, batch {args.batch_size}, {args.steps} steps/epoch, device {device}, "
          f"load average before {load_before[0]:.2f}")
    print(f"{'run':<12}{'epoch s (no tracker)':>22}{'epoch s (tracker)':>20}{'in hooks s':>12}"
          f"{'overhead %':>12}{'by diff %':>11}{'snapshot MB':>13}")
    for row in rows:
        print(f"{'private' if row['private'] else 'non-private':<12}{row['epoch_seconds_without']:>22.3f}"
              f"{row['epoch_seconds_with']:>20.3f}{row['tracker_seconds_per_epoch']:>12.4f}"
              f"{row['overhead_inside_hooks_pct']:>12.2f}{row['overhead_by_difference_pct']:>11.2f}"
              f"{row['snapshot_mb']:>13.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    run_script(main)
