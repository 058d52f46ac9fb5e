"""The run folder: config, per-epoch metrics, summary, privacy ledger and checkpoint.

Layout (every file written atomically):
    config.json      the resolved RunConfig plus code and library versions
    metrics.jsonl    one line per finished epoch
    summary.json     final test metrics, privacy spent, time, memory (only once finished)
    checkpoint.pt    everything needed to resume exactly
"""

from __future__ import annotations

import json
import platform
import subprocess
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from dpscope import __version__, native
from dpscope.config import RunConfig
from dpscope.errors import ConfigError
from dpscope.io import append_jsonl_atomic, read_jsonl, torch_save_atomic, write_json_atomic, write_text_atomic


def code_version() -> str:
    """`git describe` of the source tree when available, else the package version."""
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5,
        )
        if out.returncode == 0 and out.stdout.strip():
            return f"{__version__}+{out.stdout.strip()}"
    except (OSError, subprocess.SubprocessError):
        pass
    return __version__


def environment() -> dict[str, Any]:
    return {
        "dpscope": code_version(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "native_kernels": native.describe(),  # they sum floats in another order than torch ops
    }


def default_run_dir(config: RunConfig, root: Path = Path("runs")) -> Path:
    if config.epsilon is not None:
        privacy = f"eps{config.epsilon:g}"
    elif config.noise_multiplier is not None:
        privacy = f"sigma{config.noise_multiplier:g}"
    else:
        privacy = "nonprivate"
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return root / f"{config.dataset}-{config.model}-{privacy}-seed{config.seed}-{stamp}"


@dataclass(frozen=True)
class RunFolder:
    path: Path

    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def summary_path(self) -> Path:
        return self.path / "summary.json"

    @property
    def checkpoint_path(self) -> Path:
        return self.path / "checkpoint.pt"

    @property
    def ledger_path(self) -> Path:
        return self.path / "privacy_ledger.json"

    def is_finished(self) -> bool:
        return self.summary_path.exists()

    def has_checkpoint(self) -> bool:
        return self.checkpoint_path.exists()

    def check_new(self) -> None:
        """Refuse to write a new run over an existing one."""
        if self.path.exists() and (self.has_checkpoint() or self.is_finished()):
            raise ConfigError(
                f"run folder {self.path} already holds a run; pass --resume to continue it "
                "or choose another --out"
            )
        self.metrics_path.unlink(missing_ok=True)  # left by a run killed before its checkpoint

    def write_config(self, config: RunConfig) -> None:
        payload = {"config": json.loads(config.model_dump_json()), "environment": environment()}
        write_json_atomic(self.config_path, payload)

    def read_config(self) -> RunConfig:
        if not self.config_path.exists():
            raise ConfigError(f"{self.path} is not a run folder: config.json is missing")
        try:
            payload = json.loads(self.config_path.read_text())
            return RunConfig.from_saved(payload["config"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            raise ConfigError(f"{self.config_path} is unreadable ({error}); start a new run") from None

    def metrics(self) -> list[dict]:
        return read_jsonl(self.metrics_path)

    def keep_metrics_before(self, epoch: int) -> None:
        """Drop lines of epochs not covered by the checkpoint (a crash between the two writes)."""
        rows = [r for r in self.metrics() if r["epoch"] < epoch]
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
        write_text_atomic(self.metrics_path, text)

    def append_metrics(self, record: dict) -> None:
        append_jsonl_atomic(self.metrics_path, record)

    def write_summary(self, summary: dict) -> None:
        write_json_atomic(self.summary_path, summary)

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        torch_save_atomic(self.checkpoint_path, state)

    def load_checkpoint(self) -> dict[str, Any]:
        try:
            return torch.load(self.checkpoint_path, map_location="cpu", weights_only=False)
        except Exception as error:  # a corrupt checkpoint is the user's problem to know about
            raise ConfigError(
                f"checkpoint {self.checkpoint_path} is unreadable ({type(error).__name__}); "
                "delete it to restart the run from scratch"
            ) from None
