"""The one training loop, for private and non-private runs alike.

    summary = train(RunConfig(dataset="digits", model="cnn"), run_dir=Path("runs/demo"))

Privacy is a property of the pieces the loop is given (sampler, gradient step, optimiser),
built by `build_training_parts`; the loop itself reads top to bottom and never branches on it.
Every epoch ends with a metrics line and a checkpoint; `resume(run_dir)` continues from the last
checkpoint with the same sampler position, optimiser state, random state and privacy ledger.
"""

from __future__ import annotations

import dataclasses
import json
import math
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence

import torch
from torch.optim.lr_scheduler import LambdaLR

from dpscope.averaging import WeightAverage
from dpscope.callbacks import Callback, LoopState, StepReport
from dpscope.config import RunConfig, make_run_config
from dpscope.data import Dataset, load_dataset
from dpscope.data.augment import BatchAugmenter
from dpscope.data.poisson import ShuffledBatchSampler
from dpscope.device import describe_device, peak_memory_mb, reset_peak_memory, resolve_device
from dpscope.dataset_prep import PreparedData, fairness_entry, input_statistics_line, prepare_dataset
from dpscope.metrics import classification_metrics, predict
from dpscope.models import build_model
from dpscope.models.freeze import describe_frozen, freeze_parameters
from dpscope.optim import make_torch_optimizer
from dpscope.optim.schedule import LRSchedule
from dpscope.run_folder import RunFolder, default_run_dir
from dpscope.steps import (
    BatchSampler,
    GradientStep,
    MeanGradient,
)


class Reporter(Protocol):
    """Progress output; the CLI gives a rich one, library calls default to silence."""

    def start(self, config: RunConfig, run_dir: Path, description: str) -> None: ...
    def epoch_start(self, epoch: int, epochs: int, steps: int | None) -> None: ...
    def step_done(self) -> None: ...
    def epoch_end(self, record: dict[str, Any]) -> None: ...
    def finish(self, summary: dict[str, Any]) -> None: ...


class SilentReporter:
    def start(self, config, run_dir, description): pass
    def epoch_start(self, epoch, epochs, steps): pass
    def step_done(self): pass
    def epoch_end(self, record): pass
    def finish(self, summary): pass


@dataclass
class TrainingParts:
    """What makes a run private or not. `privacy` is None for non-private runs."""

    sampler: BatchSampler
    gradient_step: GradientStep
    optimizer: torch.optim.Optimizer
    privacy: Any = None  # dpscope.private.PrivateTraining
    callbacks: list[Callback] = field(default_factory=list)
    augmenter: BatchAugmenter | None = None  # its generator state goes into the checkpoint
    weight_average: WeightAverage | None = None  # evaluated instead of the last iterate
    lr_schedule: LRSchedule | None = None
    lr_scheduler: LambdaLR | None = None  # stepped after every optimizer step

    def evaluated_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """The weights a run evaluates and reports: the EMA when configured, else `model`."""
        return model if self.weight_average is None else self.weight_average.module


AUGMENT_SEED_OFFSET = 104729  # augmentations draw from their own seeded stream


def build_augmenter(config: RunConfig) -> BatchAugmenter | None:
    config.check_augment()
    if config.augment is None:
        return None
    return BatchAugmenter.from_spec(config.augment, config.augment_multiplicity,
                                    seed=config.seed + AUGMENT_SEED_OFFSET)


def build_training_parts(config: RunConfig, dataset: Dataset, model: torch.nn.Module) -> TrainingParts:
    config.check_class_clip()
    augmenter = build_augmenter(config)
    if config.private:
        from dpscope.private import build_private_parts

        return build_private_parts(config, dataset, model, augmenter)
    return TrainingParts(
        sampler=ShuffledBatchSampler(len(dataset.train), config.batch_size, seed=config.seed),
        gradient_step=MeanGradient(model, augmenter),
        optimizer=make_torch_optimizer(model.parameters(), kind=config.optimizer, lr=config.lr,
                                       momentum=config.momentum,
                                       weight_decay=config.weight_decay),
        augmenter=augmenter,
    )


def build_lr_schedule(config: RunConfig, steps_per_epoch: int) -> LRSchedule:
    """The configured schedule in optimizer steps (the sampler's steps per epoch; Poisson:
    round(1/q), the same every epoch)."""
    config.check_schedule()
    return LRSchedule(config.lr_schedule, warmup_steps=math.ceil(config.warmup_epochs * steps_per_epoch),
                      total_steps=config.epochs * steps_per_epoch)


def train(
    config: RunConfig,
    *,
    run_dir: Path | None = None,
    callbacks: Sequence[Callback] = (),
    reporter: Reporter | None = None,
) -> dict[str, Any]:
    """Train a new run into `run_dir` and return its summary (also written to summary.json)."""
    folder = RunFolder(Path(run_dir) if run_dir else default_run_dir(config))
    folder.check_new()
    return _run(config, folder, False, callbacks, reporter or SilentReporter())


def resume(
    run_dir: Path, *, callbacks: Sequence[Callback] = (), reporter: Reporter | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Continue the run in `run_dir` from its last checkpoint, exactly as configured; `device`
    moves it (e.g. a GPU run onto a CPU): the privacy of a run does not depend on where it
    computes, and each device keeps its own noise stream."""
    folder = RunFolder(Path(run_dir))
    config = folder.read_config()
    if device is not None:
        config = make_run_config(**{**config.model_dump(), "device": device})
    reporter = reporter or SilentReporter()
    if folder.is_finished():
        summary = json.loads(folder.summary_path.read_text())
        reporter.finish(summary)
        return summary
    return _run(config, folder, folder.has_checkpoint(), callbacks, reporter)


def _run(config: RunConfig, folder: RunFolder, from_checkpoint: bool,
         callbacks: Sequence[Callback], reporter: Reporter) -> dict[str, Any]:
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)

    device = resolve_device(config.device)
    prepared = prepare_dataset(
        config, load_dataset(config.dataset, data_dir=config.data_dir, seed=config.seed))
    prepared = dataclasses.replace(prepared, dataset=prepared.dataset.to(device))
    dataset = prepared.dataset
    model = build_model(config.model, in_channels=dataset.in_channels,  # drawn on the CPU: the
                        image_size=dataset.image_size,  # same initial weights on every device
                        num_classes=dataset.num_classes).to(device)
    reset_peak_memory(device)
    frozen = freeze_parameters(model, config.freeze)
    parts = build_training_parts(config, dataset, model)
    if config.ema_decay is not None:
        parts.weight_average = WeightAverage(model, config.ema_decay)
    parts.lr_schedule = build_lr_schedule(config, len(parts.sampler))
    parts.lr_scheduler = parts.lr_schedule.scheduler(parts.optimizer)
    all_callbacks = [*parts.callbacks, *_builtin_callbacks(config), *callbacks]
    state = LoopState(model=model, optimizer=parts.optimizer, run_dir=folder.path, config=config)
    here = describe_device(device)
    seconds_before, devices = 0.0, [here]
    if from_checkpoint:
        seconds_before, earlier = _restore(folder, state, parts, all_callbacks)
        devices = earlier if earlier[-1:] == [here] else [*earlier, here]
        folder.keep_metrics_before(state.epoch)
    else:
        folder.write_config(config)

    plan = _describe(config, prepared, parts) + "\n" + _describe_devices(devices)
    if frozen:
        plan += "\n" + describe_frozen(model, frozen)
    reporter.start(config, folder.path, plan)
    for callback in all_callbacks:
        callback.on_train_start(state)
    started = time.perf_counter()
    stopped_early = None
    while state.epoch < config.epochs and stopped_early is None:
        record = _train_one_epoch(state, parts, dataset, all_callbacks, reporter)
        record.update(_prefixed("val", _evaluate(parts.evaluated_model(model), dataset,
                                                 dataset.val)))
        if parts.privacy is not None:
            record.update(parts.privacy.epoch_record())
            if state.epoch < config.epochs:
                stopped_early = parts.privacy.exhausted_reason()
        record["seconds"] = seconds_before + time.perf_counter() - started
        for callback in all_callbacks:
            callback.on_epoch_end(state, record)
        folder.append_metrics(record)
        _checkpoint(folder, state, parts, all_callbacks, record["seconds"], devices)
        reporter.epoch_end(record)

    summary = _summary(config, prepared, model, parts, state,
                       seconds_before + time.perf_counter() - started, stopped_early, device)
    summary["devices"] = devices
    for callback in all_callbacks:
        callback.on_train_end(state, summary)
    folder.write_summary(summary)
    reporter.finish(summary)
    return summary


def _train_one_epoch(state: LoopState, parts: TrainingParts, dataset: Dataset,
                     callbacks: Sequence[Callback], reporter: Reporter) -> dict[str, Any]:
    model, epoch = state.model, state.epoch
    model.train()
    loss_sum, seen, steps, lr_used = 0.0, 0, 0, math.nan
    reporter.epoch_start(epoch, state.config.epochs, _len_or_none(parts.sampler))
    for indices in parts.sampler.epoch_batches():
        if parts.privacy is not None and not parts.privacy.can_step():
            break
        inputs, targets = dataset.batch(dataset.train, indices)
        result = parts.gradient_step(inputs, targets)
        lr_used = parts.optimizer.param_groups[0]["lr"]
        parts.optimizer.step()
        if parts.lr_scheduler is not None:
            parts.lr_scheduler.step()
        if parts.weight_average is not None:
            parts.weight_average.update(model)
        state.step += 1
        steps += 1
        loss_sum += result.loss_sum
        seen += result.batch_size
        report = StepReport(
            step=state.step, epoch=epoch, batch_size=result.batch_size,
            loss=result.loss_sum / result.batch_size if result.batch_size else math.nan,
            per_example_norms=result.per_example_norms,
            per_param_sq_norms=result.per_param_sq_norms,
        )
        if parts.privacy is not None:
            parts.privacy.fill_report(report)
        for callback in callbacks:
            callback.on_step_end(state, report)
        reporter.step_done()
    state.epoch += 1
    return {"epoch": epoch, "steps": steps, "train_loss": loss_sum / seen if seen else math.nan,
            "train_examples": seen, "lr": lr_used}  # the rate of the epoch's last step


def _evaluate(model: torch.nn.Module, dataset: Dataset, split) -> dict[str, Any]:
    images = dataset.normalize(split.images)
    return classification_metrics(predict(model, images), split.labels, dataset.num_classes)


def _prefixed(prefix: str, metrics: dict[str, Any]) -> dict[str, Any]:
    return {f"{prefix}_{k}": v for k, v in metrics.items()}


def _len_or_none(sampler) -> int | None:
    try:
        return len(sampler)
    except TypeError:
        return None


def _builtin_callbacks(config: RunConfig) -> list[Callback]:
    callbacks: list[Callback] = []
    if config.track_dynamics:
        from dpscope.dynamics import WeightChangeTracker

        callbacks.append(WeightChangeTracker(every_steps=config.dynamics_every_steps))
    return callbacks


def _describe(config: RunConfig, prepared: PreparedData, parts: TrainingParts) -> str:
    dataset = prepared.dataset
    text = (f"{dataset.name} ({len(dataset.train)} train / {len(dataset.val)} val / "
            f"{len(dataset.test)} test), model {config.model}, {config.epochs} epochs")
    if parts.privacy is not None:
        text += "\n" + parts.privacy.describe()
        if parts.privacy.class_clip is not None:
            text += "\n" + parts.privacy.class_clip.describe(config.max_grad_norm)
    else:
        text += ", non-private"
    if parts.augmenter is not None:
        text += "\n" + parts.augmenter.describe()
    if parts.weight_average is not None:
        text += "\n" + parts.weight_average.describe()
    if parts.lr_scheduler is not None:
        text += "\n" + parts.lr_schedule.describe(config.lr)
    if "imbalance" in prepared.records:
        record = prepared.records["imbalance"]
        text += (f"\nimbalance: {record['minority_group']} is "
                 f"{record['train']['group_share']:.2%} of training, "
                 f"{record['test']['group_share']:.2%} of test ({record['test_composition']})")
    if "perturbation" in prepared.records:
        text += "\nperturbation: " + prepared.records["perturbation"]["statement"]
    if parts.privacy is not None:
        text += "\n" + input_statistics_line(prepared.records["input_normalization"])
    return text


def _describe_devices(devices: list[str]) -> str:
    """The plan's device line; a resume elsewhere says what that changes (and what it does not)."""
    if len(devices) == 1:
        return f"device: {devices[0]}"
    return (f"device: {devices[-1]}, resumed; earlier epochs ran on {', then '.join(devices[:-1])}. "
            "Another device rounds float sums differently, so the run will not repeat an "
            "uninterrupted one bit for bit; its privacy is unchanged")


def _checkpoint(folder: RunFolder, state: LoopState, parts: TrainingParts,
                callbacks: Sequence[Callback], seconds: float, devices: list[str]) -> None:
    folder.save_checkpoint({
        "epoch": state.epoch,
        "step": state.step,
        "seconds": seconds,
        "devices": devices,  # every device the run has computed on, in order
        "model": state.model.state_dict(),
        "optimizer": parts.optimizer.state_dict(),
        "sampler": parts.sampler.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
        "privacy": parts.privacy.state_dict() if parts.privacy is not None else None,
        "augment": parts.augmenter.state_dict() if parts.augmenter is not None else None,
        "weight_average": (parts.weight_average.state_dict()
                           if parts.weight_average is not None else None),
        "lr_scheduler": parts.lr_scheduler.state_dict() if parts.lr_scheduler is not None else None,
        "callbacks": {f"{i}:{c.name}": c.state_dict() for i, c in enumerate(callbacks)},
    })
    if parts.privacy is not None:
        parts.privacy.save_ledger(folder.ledger_path)


def _restore(folder: RunFolder, state: LoopState, parts: TrainingParts,
             callbacks: Sequence[Callback]) -> tuple[float, list[str]]:
    """Load the checkpoint into the run's parts; the seconds trained so far and the devices
    they ran on (none known for checkpoints that predate the record)."""
    checkpoint = folder.load_checkpoint()
    state.epoch, state.step = checkpoint["epoch"], checkpoint["step"]
    state.model.load_state_dict(checkpoint["model"])
    parts.optimizer.load_state_dict(checkpoint["optimizer"])
    parts.sampler.load_state_dict(checkpoint["sampler"])
    torch.set_rng_state(checkpoint["torch_rng"])
    cuda_rng = checkpoint.get("cuda_rng")
    if cuda_rng and torch.cuda.is_available() and len(cuda_rng) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_rng)
    if parts.privacy is not None:
        parts.privacy.load_state_dict(checkpoint["privacy"])
    if parts.augmenter is not None:
        parts.augmenter.load_state_dict(checkpoint["augment"])
    if parts.weight_average is not None:
        parts.weight_average.load_state_dict(checkpoint["weight_average"])
    if parts.lr_scheduler is not None:
        parts.lr_scheduler.load_state_dict(checkpoint["lr_scheduler"])
    for i, callback in enumerate(callbacks):
        callback.load_state_dict(checkpoint["callbacks"].get(f"{i}:{callback.name}", {}))
    return float(checkpoint["seconds"]), list(checkpoint.get("devices", []))


def _peak_memory_mb(device: torch.device) -> float:
    """Peak memory of the device the run trained on (the process's peak RSS on the CPU)."""
    on_device = peak_memory_mb(device)
    if on_device is not None:
        return on_device
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _summary(config: RunConfig, prepared: PreparedData, model: torch.nn.Module,
             parts: TrainingParts, state: LoopState, seconds: float,
             stopped_early: str | None, device: torch.device) -> dict[str, Any]:
    dataset = prepared.dataset
    test_images = dataset.normalize(dataset.test.images)
    logits = predict(parts.evaluated_model(model), test_images)
    test = classification_metrics(logits, dataset.test.labels, dataset.num_classes)
    summary: dict[str, Any] = {
        "dataset": dataset.name,
        "model": config.model,
        "test_accuracy": test["accuracy"],
        "test_balanced_accuracy": test["balanced_accuracy"],
        "test_loss": test["loss"],
        "test_auc": test["auc"],
        "per_class_accuracy": test["per_class_accuracy"],
        "class_names": list(dataset.class_names),
        "seconds": seconds,
        "peak_memory_mb": _peak_memory_mb(device),
        "device": describe_device(device),
        "epochs": state.epoch,
        "steps": state.step,
        "seed": config.seed,
        "private": config.private,
        "epsilon": None,
        "delta": None,
        "stopped_early": stopped_early,
        "augment": config.augment,
        "augment_multiplicity": config.augment_multiplicity,
        "evaluated_weights": "last iterate",
    }
    if parts.weight_average is not None:
        last = classification_metrics(predict(model, test_images), dataset.test.labels,
                                      dataset.num_classes)
        summary.update(evaluated_weights=f"ema (decay {config.ema_decay:g})",
                       ema_decay=config.ema_decay,
                       test_accuracy_last_iterate=last["accuracy"],
                       test_auc_last_iterate=last["auc"])
    if parts.privacy is not None:
        summary.update(parts.privacy.summary())
    summary.update(prepared.records)
    if parts.privacy is not None:
        summary["privacy_statement"] += "\n" + input_statistics_line(prepared.records["input_normalization"])
    if prepared.group_names is not None:
        summary["fairness"] = fairness_entry(prepared, logits.argmax(1).cpu().numpy(),
                                             seed=config.seed)
    return summary
