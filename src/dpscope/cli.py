"""The `dpscope` command: thin subcommands over the library.

User errors (a `DpscopeError`) print one line and exit with code 2, never a traceback.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from dpscope.console import RichReporter, err_console
from dpscope.errors import ConfigError, DpscopeError

app = typer.Typer(
    help="Train image classifiers with differential privacy, fast, and see what privacy does.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
bench_app = typer.Typer(help="Speed and memory benchmarks.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
privacy_app = typer.Typer(help="Privacy spent across runs.", no_args_is_help=True)
app.add_typer(privacy_app, name="privacy")


def user_errors_exit_2(command):
    """Turn a DpscopeError into one red line on stderr and exit code 2."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except DpscopeError as error:
            err_console.print(f"[bold red]error:[/bold red] {escape(str(error))}",
                              highlight=False, soft_wrap=True)
            raise typer.Exit(code=2) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/yellow]: completed epochs are saved; "
                              "continue with --resume")
            raise typer.Exit(code=130) from None

    return wrapper


@bench_app.command("clipping")
@user_errors_exit_2
def bench_clipping(
    case: Annotated[Optional[list[str]], typer.Option(help="MODEL:BATCH, repeatable (default: cnn:32 cnn:128 resnet20:32 resnet20:128 wrn16_4:32 vit_tiny:64)")] = None,
    variant: Annotated[Optional[list[str]], typer.Option(help="nonprivate, a strategy, opacus_hooks or opacus_ghost; repeatable (default: all)")] = None,
    repeats: Annotated[int, typer.Option(help="timed steps per variant; the median is reported")] = 7,
    threads: Annotated[int, typer.Option(help="torch threads")] = 2,
    cpu_time: Annotated[bool, typer.Option("--cpu-time", help="time by process CPU time (for a busy machine, with --threads 1)")] = False,
    no_memory: Annotated[bool, typer.Option("--no-memory", help="skip the per-variant memory measurement")] = False,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto (GPU steps are synchronised before the clock stops)")] = "cpu",
    json_path: Annotated[Optional[Path], typer.Option("--json", help="write the full record here")] = None,
) -> None:
    """Per-step time and peak memory of every clipping strategy against non-private training."""
    from dpscope.bench.clipping import DEFAULT_CASES, VARIANTS, run_clipping_benchmark
    from dpscope.errors import ConfigError

    cases = DEFAULT_CASES
    if case:
        try:
            cases = tuple((name, int(batch)) for name, batch in (c.split(":") for c in case))
        except ValueError:
            raise ConfigError(f"--case takes MODEL:BATCH, e.g. cnn:128; got {case}") from None
    unknown = sorted(set(variant or ()) - set(VARIANTS))
    if unknown:
        raise ConfigError(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    run_clipping_benchmark(cases, tuple(variant) if variant else VARIANTS, repeats=repeats,
                           threads=threads, cpu_time=cpu_time, memory=not no_memory, device=device,
                           json_path=str(json_path) if json_path else None)


@bench_app.command("accuracy")
@user_errors_exit_2
def bench_accuracy(
    dataset: Annotated[Optional[list[str]], typer.Option(help="dataset, repeatable (default: pneumoniamnist)")] = None,
    model: Annotated[Optional[list[str]], typer.Option(help="model, repeatable (default: cnn resnet20 resnet20_centred resnet18)")] = None,
    epsilon: Annotated[Optional[list[float]], typer.Option(help="target epsilon, repeatable (default: 1 3 8)")] = None,
    seed: Annotated[Optional[list[int]], typer.Option(help="seed, repeatable (default: 0 1 2)")] = None,
    variant: Annotated[Optional[list[str]], typer.Option(help="nonprivate, dpscope, opacus, nonprivate_augmult or dpscope_augmult; repeatable (default: the first three)")] = None,
    accountant: Annotated[str, typer.Option(help="pld or rdp (Opacus gets prv for pld)")] = "pld",
    batch_size: Annotated[Optional[int], typer.Option(help="override the tuned private expected batch size")] = None,
    lr: Annotated[Optional[float], typer.Option(help="override the tuned private learning rate")] = None,
    momentum: Annotated[Optional[float], typer.Option(help="override the tuned private momentum")] = None,
    max_grad_norm: Annotated[Optional[float], typer.Option(help="override the clipping bound C")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="epochs of private and non-private runs")] = None,
    ema_decay: Annotated[Optional[float], typer.Option(help="override: evaluate an EMA of the weights with this decay (private runs, Opacus too; 0: the last iterate)")] = None,
    lr_schedule: Annotated[Optional[str], typer.Option(help="override: constant, cosine or linear learning rate after the warm-up (private runs, Opacus too)")] = None,
    warmup_epochs: Annotated[Optional[float], typer.Option(help="override: linear learning-rate warm-up epochs (private runs, Opacus too)")] = None,
    freeze: Annotated[Optional[str], typer.Option(help="override: comma-separated parameter name patterns kept at their random init (private runs, Opacus too)")] = None,
    class_clip: Annotated[Optional[str], typer.Option(help="override: clipping bound per class as fractions of C, largest 1, e.g. 1,0.35 (private runs, Opacus too)")] = None,
    auto_clip: Annotated[Optional[bool], typer.Option("--auto-clip/--no-auto-clip", help="override: normalise instead of clip, Bu et al. 2023 (private runs, Opacus too)")] = None,
    auto_clip_stability: Annotated[Optional[float], typer.Option(help="override: automatic clipping's gamma in g C / (||g|| + gamma) (private runs, Opacus too)")] = None,
    input_normalization: Annotated[Optional[str], typer.Option(help="override: input mean and std, fixed, train or auto (private runs, Opacus too; default auto: fixed)")] = None,
    threads: Annotated[int, typer.Option(help="torch threads per run")] = 1,
    jobs: Annotated[int, typer.Option(help="runs at a time (separate processes)")] = 1,
    device: Annotated[str, typer.Option(help="auto (a CUDA GPU when torch sees one, else the CPU), cpu, cuda or cuda:N")] = "auto",
    out: Annotated[Path, typer.Option(help="runs go to OUT/runs (finished ones are reused)")] = Path("bench-out/accuracy"),
    json_path: Annotated[Optional[Path], typer.Option("--json", help="full record (default OUT/accuracy.json)")] = None,
) -> None:
    """Test accuracy and AUC of private training on real data vs non-private training and Opacus."""
    from dpscope.bench.accuracy import (DEFAULT_EPSILONS, DEFAULT_MODELS, DEFAULT_SEEDS, DEFAULT_VARIANTS,
                                        VARIANTS, run_from_options)

    unknown = sorted(set(variant or ()) - set(VARIANTS))
    if unknown:
        raise ConfigError(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    run_from_options(dataset or ["pneumoniamnist"], model or list(DEFAULT_MODELS),
                     epsilon or list(DEFAULT_EPSILONS), seed or list(DEFAULT_SEEDS), variant or list(DEFAULT_VARIANTS), out,
                     accountant=accountant, batch_size=batch_size, lr=lr, momentum=momentum,
                     max_grad_norm=max_grad_norm, epochs=epochs, ema_decay=ema_decay,
                     lr_schedule=lr_schedule, warmup_epochs=warmup_epochs, freeze=freeze, class_clip=class_clip,
                     auto_clip=auto_clip, auto_clip_stability=auto_clip_stability,
                     input_normalization=input_normalization, threads=threads, jobs=jobs, device=device, json_path=json_path,
                     echo=typer.echo)


def _given(**options) -> dict:
    return {k: v for k, v in options.items() if v is not None and v is not False}


@app.command()
@user_errors_exit_2
def train(
    dataset: Annotated[Optional[str], typer.Option(help="digits, pneumoniamnist, any MedMNIST name or .npz path, imagefolder, mnist/fashionmnist/cifar10 (torchvision)")] = None,
    data_dir: Annotated[Optional[Path], typer.Option(help="where to look for data files first")] = None,
    model: Annotated[Optional[str], typer.Option(help="mlp, cnn, resnet20, resnet20_centred, resnet18, wrn16_4, vit_tiny")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="passes over the training set")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", "--logical-batch-size", help="examples per step (the expected size under Poisson sampling)")] = None,
    lr: Annotated[Optional[float], typer.Option(help="learning rate")] = None,
    optimizer: Annotated[Optional[str], typer.Option(help="sgd, adam or adamw")] = None,
    momentum: Annotated[Optional[float], typer.Option(help="SGD momentum")] = None,
    weight_decay: Annotated[Optional[float], typer.Option(help="L2 weight decay")] = None,
    lr_schedule: Annotated[Optional[str], typer.Option(help="learning rate after the warm-up: constant, cosine or linear (decay to 0 by the last step)")] = None,
    warmup_epochs: Annotated[Optional[float], typer.Option(help="linear learning-rate warm-up over this many epochs (fractions allowed)")] = None,
    seed: Annotated[Optional[int], typer.Option(help="seed for data split, init, sampling and noise")] = None,
    threads: Annotated[Optional[int], typer.Option(help="torch threads (default: all cores)")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto (a CUDA GPU when torch sees one, else the CPU), cpu, cuda or cuda:N; may change on --resume")] = None,
    epsilon: Annotated[Optional[float], typer.Option(help="train privately to this epsilon (noise calibrated)")] = None,
    delta: Annotated[Optional[float], typer.Option(help="privacy delta (default min(1e-5, 1/(10 N)))")] = None,
    noise_multiplier: Annotated[Optional[float], typer.Option(help="train privately with this noise multiplier instead of a target epsilon")] = None,
    max_grad_norm: Annotated[Optional[float], typer.Option(help="per-example clipping bound C")] = None,
    clipping: Annotated[Optional[str], typer.Option(help="per-example strategy: auto, bookkeeping, ghost, materialize, crb, vmap, naive")] = None,
    accountant: Annotated[Optional[str], typer.Option(help="pld or rdp")] = None,
    physical_batch_size: Annotated[Optional[int], typer.Option(help="largest chunk computed at once (virtual batches)")] = None,
    secure_rng: Annotated[bool, typer.Option("--secure-rng", help="draw noise from the OS's randomness (slower, not reproducible)")] = False,
    clip_per_layer: Annotated[bool, typer.Option("--clip-per-layer", help="a clipping bound per layer, total sensitivity still C")] = False,
    auto_clip: Annotated[bool, typer.Option("--auto-clip", help="normalise per-example gradients instead of clipping (Bu et al. 2023)")] = False,
    auto_clip_stability: Annotated[Optional[float], typer.Option(help="with --auto-clip, gamma in g C / (||g|| + gamma) (default 0.01): larger, well-fit examples (small gradients) pull less; sensitivity unchanged")] = None,
    input_normalization: Annotated[Optional[str], typer.Option(help="input mean and std: fixed (0.5, 0.25; data-independent), train (the training images': not covered by epsilon) or auto (fixed when private, else train)")] = None,
    class_clip: Annotated[Optional[str], typer.Option(help="per class, the fraction of --max-grad-norm its examples are clipped to, largest 1, e.g. 1,0.35 against a majority class 1 (sensitivity unchanged)")] = None,
    augment: Annotated[Optional[str], typer.Option(help="augment training images: crop, crop,flip or crop:2,flip (random crop with reflect padding, 4 px unless given; horizontal flip)")] = None,
    augment_multiplicity: Annotated[Optional[int], typer.Option(help="augmented copies per example (needs --augment); private: the mean over copies is clipped, the guarantee is unchanged")] = None,
    ema_decay: Annotated[Optional[float], typer.Option(help="evaluate an exponential moving average of the weights, e.g. 0.95 (about the last 20 steps), not the last iterate; no privacy cost")] = None,
    freeze: Annotated[Optional[str], typer.Option(help="keep parameters matching these comma-separated name patterns at their random init (no gradient, no noise; fewer noisy coordinates), e.g. 'stages.2.*.conv?.weight'")] = None,
    track_dynamics: Annotated[bool, typer.Option("--track-dynamics", help="record layer-wise relative weight change")] = False,
    dynamics_every_steps: Annotated[Optional[int], typer.Option(help="record layer dynamics every N steps instead of each epoch (implies --track-dynamics)")] = None,
    perturb: Annotated[Optional[str], typer.Option(help="perturb training images first: laplace:eps=1, gaussian:eps=1,delta=1e-5, dp_pix:eps=1,b=4,m=1, singh2020_brightness_shift:eps=1")] = None,
    groups: Annotated[Optional[str], typer.Option(help="group attribute for per-group test metrics: 'class' or a CSV of id,group rows (ids train/0, test/12, ...)")] = None,
    minority_group: Annotated[Optional[str], typer.Option(help="make this group (a class name or index with --groups class) the training minority")] = None,
    majority_share: Annotated[Optional[float], typer.Option(help="share of the training set held by all other groups, e.g. 0.99")] = None,
    imbalance_test: Annotated[Optional[str], typer.Option(help="test set under imbalance: balanced (minority 50 %) or same_imbalance")] = None,
    out: Annotated[Optional[Path], typer.Option(help="run folder (default runs/<dataset>-<model>-<privacy>-seed<seed>-<time>)")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue the run in --out from its last checkpoint")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="print nothing but errors")] = False,
) -> None:
    """Train one model; with --epsilon or --noise-multiplier, privately (DP-SGD)."""
    from dpscope.class_clip import parse_class_clip
    from dpscope.config import make_run_config
    from dpscope.train import SilentReporter
    from dpscope.train import resume as resume_training
    from dpscope.train import train as run_training

    options = _given(
        dataset=dataset, data_dir=data_dir, model=model, epochs=epochs, batch_size=batch_size,
        lr=lr, optimizer=optimizer, momentum=momentum, weight_decay=weight_decay,
        lr_schedule=lr_schedule, warmup_epochs=warmup_epochs, seed=seed, threads=threads, device=device, epsilon=epsilon, delta=delta, noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm, clipping=clipping, accountant=accountant,
        physical_batch_size=physical_batch_size, secure_rng=secure_rng,
        clip_per_layer=clip_per_layer, auto_clip=auto_clip, auto_clip_stability=auto_clip_stability,
        input_normalization=input_normalization,
        augment=augment,
        augment_multiplicity=augment_multiplicity, ema_decay=ema_decay, freeze=freeze,
        class_clip=None if class_clip is None else parse_class_clip(class_clip),
        track_dynamics=track_dynamics,
        dynamics_every_steps=dynamics_every_steps, perturb=perturb, groups=groups,
        minority_group=minority_group, majority_share=majority_share,
        imbalance_test=imbalance_test,
    )
    reporter = SilentReporter() if quiet else RichReporter()
    if resume:
        if out is None:
            raise ConfigError("--resume needs --out naming the run folder to continue")
        fixed = {k: v for k, v in options.items() if k != "device"}  # where it runs may change
        if fixed:
            raise ConfigError(
                "--resume continues the run as it was configured; drop these options: "
                + ", ".join("--" + k.replace("_", "-") for k in fixed)
            )
        resume_training(out, reporter=reporter, device=options.get("device"))
    else:
        run_training(make_run_config(**options), run_dir=out, reporter=reporter)


@app.command()
@user_errors_exit_2
def dynamics(
    run_dirs: Annotated[list[Path], typer.Argument(help="run folders trained with --track-dynamics (holding dynamics.json)")],
    out: Annotated[Path, typer.Option(help="folder for the figures and tables")] = Path("dynamics_out"),
    k: Annotated[Optional[int], typer.Option("--k", help="number of layer clusters (default: chosen by the elbow rule)")] = None,
    drop_first_last: Annotated[bool, typer.Option("--drop-first-last", help="leave the first and last layer out of the clustering")] = False,
    metric: Annotated[str, typer.Option(help="RWC form clustered and drawn: rwc_l1 (||dw||_1/||w||_1, the paper's equation; prefer it) or rwc_mean (mean of |dw|/|w|, the authors' code: spikes on near-zero weights, which gives singleton clusters)")] = "rwc_mean",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="print nothing but errors")] = False,
) -> None:
    """Figures and tables of layer-wise learning dynamics from finished runs, with the findings
    (depth trend of RWC, most-changing layers, private runs against the noise alone)."""
    from dpscope.dynamics.findings import RWC_METRICS

    if metric not in RWC_METRICS:
        raise ConfigError(f"--metric must be rwc_l1 or rwc_mean, got {metric!r}")
    from dpscope.dynamics import analyze_runs

    for run_dir in run_dirs:
        if not run_dir.is_dir():
            raise ConfigError(f"{run_dir}: no such run folder")
        if not (run_dir / "dynamics.json").is_file():
            raise ConfigError(f"{run_dir}: no dynamics.json; train the run with --track-dynamics "
                              "(track_dynamics = true in a study spec)")
    if k is not None and k < 1:
        raise ConfigError(f"--k must be at least 1, got {k}")
    written = analyze_runs(run_dirs, out, k=k, drop_first_last=drop_first_last, metric=metric)
    if not quiet:
        rows = [(run["title"], f"k={run['clusters']['k']}") for run in written["runs"]]
        _print_written("dynamics", rows, [*written["tables"], *written["figures"]])
        for sentence in written["findings"]:
            typer.echo(sentence)


@app.command()
@user_errors_exit_2
def perturb(
    dataset: Annotated[str, typer.Option(help="dataset name or .npz path, as for `dpscope train`")],
    mechanism: Annotated[str, typer.Option(help="laplace:eps=1, gaussian:eps=1,delta=1e-5, dp_pix:eps=1,b=4,m=1 or singh2020_brightness_shift:eps=1")],
    out: Annotated[Path, typer.Option(help="the private copy, an .npz file (its record goes beside it as .json)")],
    seed: Annotated[int, typer.Option(help="seed of the noise (and of the split, for datasets without one)")] = 0,
    data_dir: Annotated[Optional[Path], typer.Option(help="where to look for data files first")] = None,
    split: Annotated[Optional[list[str]], typer.Option(help="split to perturb, repeatable (default: train only)")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="print nothing but errors")] = False,
) -> None:
    """Write a private copy of a dataset, made by perturbing its images, with the guarantee."""
    from dpscope.dataset_prep import perturbation_statement
    from dpscope.private_copy import write_private_copy

    record = write_private_copy(dataset, mechanism, out, seed=seed, data_dir=data_dir,
                                splits=tuple(split or ("train",)))
    if not quiet:
        _print_written("perturb", [("guarantee", perturbation_statement(record))],
                      [str(out), str(out.with_suffix(".json"))])


@privacy_app.command("compose")
@user_errors_exit_2
def privacy_compose(
    run_dirs: Annotated[list[Path], typer.Argument(help="run folders trained on the same data (dpscope runs, or the accuracy benchmark's Opacus twins)")],
    delta: Annotated[Optional[float], typer.Option(help="delta of the total (default: the runs' own, when they agree)")] = None,
    accountant: Annotated[str, typer.Option(help="pld or rdp")] = "pld",
    json_path: Annotated[Optional[Path], typer.Option("--json", help="write the record here")] = None,
) -> None:
    """Epsilon of several runs on the same data together, e.g. everything a tuning procedure
    trained: their ledgers composed by dp_accounting (unfinished runs count their whole plan)."""
    from dpscope.console import console
    from dpscope.io import write_json_atomic
    from dpscope.privacy import ACCOUNTANTS
    from dpscope.privacy.composition import compose_runs, spend_table

    if accountant not in ACCOUNTANTS:
        raise ConfigError(f"--accountant must be one of {', '.join(ACCOUNTANTS)}, got {accountant!r}")
    if delta is not None and not 0 < delta < 1:
        raise ConfigError(f"--delta must lie in (0, 1), got {delta:g}")
    composed = compose_runs(run_dirs, delta=delta, accountant=accountant)
    console.print(spend_table(composed))
    console.print(f"[bold]together[/bold]: epsilon {composed.epsilon:.4g} at delta "
                  f"{composed.delta:g} ({len(composed.runs)} runs, {accountant}, "
                  "add-or-remove-one)", highlight=False)
    uncovered = composed.uncovered_input_statistics
    if uncovered:
        console.print(f"[bold red]WARNING[/bold red]: {len(uncovered)} of the runs normalised their "
                      "inputs by their training images' mean and std, which no epsilon here covers "
                      "(runs from before fixed input statistics, or --input-normalization train)",
                      highlight=False)
    if json_path is not None:
        write_json_atomic(json_path, composed.to_dict())
        console.print(f"wrote {escape(str(json_path))}", highlight=False)


def _print_written(command: str, facts: list[tuple[str, str]], paths: list[str]) -> None:
    """What a command found and the files it wrote, one per line."""
    from dpscope.console import console

    for name, value in facts:
        console.print(f"[bold]{command}[/bold] {escape(name)}: {escape(value)}", highlight=False,
                      soft_wrap=True)
    for path in paths:
        console.print(f"[bold]{command}[/bold] wrote {escape(path)}", highlight=False,
                      soft_wrap=True)


def main() -> None:  # pragma: no cover - console entry point
    app()


# studies: `dpscope study`, `dpscope report`, `dpscope runs` (dpscope/study/commands.py)
from dpscope.study.commands import report as _study_report  # noqa: E402
from dpscope.study.commands import runs as _study_runs  # noqa: E402
from dpscope.study.commands import study as _study  # noqa: E402

app.command("study")(_study)
app.command("report")(_study_report)
app.command("runs")(_study_runs)
