"""Accuracy benchmark: private training on real data vs non-private training and Opacus.

    python benchmarks/accuracy.py                                   # the issue's grid (long)
    python benchmarks/accuracy.py --models cnn --epsilons 1 3 8 --seeds 0 1 2 \\
        --variants nonprivate dpscope --jobs 2 --out bench-out/accuracy
    python benchmarks/accuracy.py --dataset digits --epsilons 1 --variants dpscope
    python benchmarks/accuracy.py --models cnn --epsilons 8 --variants nonprivate_augmult \
        dpscope_augmult --jobs 2                          # augmentation multiplicity (crop, K 8)

Runs land in OUT/runs/ (finished runs are reused, interrupted ones resume); the table goes to
stdout and the full record to OUT/accuracy.json (or --json). The logic and the tuned recipes
live in dpscope.bench.accuracy.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dpscope.bench.accuracy import (DEFAULT_EPSILONS, DEFAULT_MODELS, DEFAULT_SEEDS, DEFAULT_VARIANTS, VARIANTS,
                                    run_from_options)
from dpscope.errors import run_script


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", nargs="+", default=["pneumoniamnist"], help="default: pneumoniamnist")
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    parser.add_argument("--epsilons", nargs="+", type=float, default=list(DEFAULT_EPSILONS))
    parser.add_argument("--seeds", nargs="+", type=int, default=list(DEFAULT_SEEDS))
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(DEFAULT_VARIANTS),
                        help="default: %(default)s; the *_augmult ones add the dataset's augmentation")
    parser.add_argument("--accountant", choices=("pld", "rdp"), default="pld",
                        help="dpscope's accountant; Opacus gets rdp for rdp and prv for pld")
    group = parser.add_argument_group("private recipe overrides (default: the tuned recipe per dataset and epsilon)")
    group.add_argument("--batch-size", type=int, help="expected batch size")
    group.add_argument("--lr", type=float)
    group.add_argument("--momentum", type=float)
    group.add_argument("--max-grad-norm", type=float, help="clipping bound C")
    group.add_argument("--epochs", type=int, help="epochs of private AND non-private runs")
    group.add_argument("--ema-decay", type=float, help="evaluate an EMA of the weights (private runs, Opacus too; 0: the last iterate)")
    group.add_argument("--lr-schedule", choices=("constant", "cosine", "linear"), help="learning rate after the warm-up (Opacus too)")
    group.add_argument("--warmup-epochs", type=float, help="linear learning-rate warm-up (Opacus too)")
    group.add_argument("--freeze", help="comma-separated parameter name patterns kept at their random init (Opacus too)")
    group.add_argument("--class-clip", help="clipping bound per class as fractions of C, largest 1, e.g. 1,0.35 (Opacus too)")
    group.add_argument("--auto-clip", action=argparse.BooleanOptionalAction, default=None,
                       help="normalise instead of clip, Bu et al. 2023 (Opacus too)")
    group.add_argument("--auto-clip-stability", type=float,
                       help="automatic clipping's gamma in g C / (||g|| + gamma) (Opacus too)")
    group.add_argument("--input-normalization", choices=("auto", "train", "fixed"),
                       help="input mean and std (Opacus too): fixed (data-independent; auto's choice "
                            "for private runs) or train (the training images', not covered by epsilon)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (separate processes)")
    parser.add_argument("--device", default="auto", help="auto (a CUDA GPU when torch sees one), cpu, cuda or cuda:N")
    parser.add_argument("--out", type=Path, default=Path("bench-out/accuracy"))
    parser.add_argument("--json", type=Path, default=None, help="default: OUT/accuracy.json")
    args = parser.parse_args()

    run_from_options(args.dataset, args.models, args.epsilons, args.seeds, args.variants, args.out,
                     accountant=args.accountant, batch_size=args.batch_size, lr=args.lr,
                     momentum=args.momentum, max_grad_norm=args.max_grad_norm, epochs=args.epochs,
                     ema_decay=args.ema_decay, lr_schedule=args.lr_schedule,
                     warmup_epochs=args.warmup_epochs, freeze=args.freeze, class_clip=args.class_clip,
                     auto_clip=args.auto_clip, auto_clip_stability=args.auto_clip_stability,
                     input_normalization=args.input_normalization, threads=args.threads, jobs=args.jobs, device=args.device, json_path=args.json)

if __name__ == "__main__":
    run_script(main)
