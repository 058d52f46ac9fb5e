"""Per-example clipping benchmark: ms/step and peak memory of every strategy vs non-private and Opacus.

    python benchmarks/clipping.py                                  # all default cases
    python benchmarks/clipping.py --case cnn:128 --case resnet20:128 --variant nonprivate \\
        --variant auto --variant opacus_hooks --repeats 9 --json out.json

The logic lives in dpscope.bench.clipping (also behind `dpscope bench clipping`).
"""

from __future__ import annotations

import argparse

from dpscope.bench.clipping import DEFAULT_CASES, VARIANTS, run_clipping_benchmark
from dpscope.errors import run_script


def _case(text: str) -> tuple[str, int]:
    model, _, batch = text.partition(":")
    return model, int(batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", action="append", type=_case, help="MODEL:BATCH (repeatable); default: the issue's six")
    parser.add_argument("--variant", action="append", choices=VARIANTS, help="repeatable; default: all")
    parser.add_argument("--repeats", type=int, default=7, help="timed steps per variant (median reported)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--naive-max-batch", type=int, default=32, help="skip naive above this batch size")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-variant memory subprocesses")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cpu-time", action="store_true", help="time by process CPU time (use with --threads 1 on a busy machine)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (GPU steps are synchronised before the clock stops)")
    parser.add_argument("--json", default=None, help="write the full record here")
    args = parser.parse_args()
    run_clipping_benchmark(
        args.case or DEFAULT_CASES, args.variant or VARIANTS, repeats=args.repeats, warmup=args.warmup,
        naive_max_batch=args.naive_max_batch, memory=not args.no_memory, threads=args.threads,
        cpu_time=args.cpu_time, device=args.device, json_path=args.json,
    )


if __name__ == "__main__":
    run_script(main)
