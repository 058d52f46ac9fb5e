"""Seconds per noise draw, seeded vs secure: `python -m dpscope.optim.bench_noise [coordinates]`."""

from __future__ import annotations

import math
import sys
import time

import torch

from dpscope.optim.noise import GaussianNoise


def bench(count: int, repeats: int = 3) -> dict[str, float]:
    """Best-of-`repeats` seconds to draw `count` noise coordinates from each source."""
    target = torch.empty(count)
    seconds = {}
    for name, noise in (("seeded", GaussianNoise(seed=0)), ("secure", GaussianNoise(secure=True))):
        best = math.inf
        for _ in range(repeats):
            start = time.perf_counter()
            noise.like(target, 1.0)
            best = min(best, time.perf_counter() - start)
        seconds[name] = best
    return seconds


if __name__ == "__main__":
    coordinates = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000_000
    for source, best in bench(coordinates).items():
        print(f"{source:>6}: {best:.3f} s for {coordinates:,} coordinates ({coordinates / best / 1e6:.1f} M/s)")
