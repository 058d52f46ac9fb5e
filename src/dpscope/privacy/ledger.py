"""The privacy ledger: what a run actually executed, as the accountant needs it.

The ledger is the record from which a run's epsilon is computed, so it holds what happened, not
what was planned: one segment per run of consecutive steps with the same (sample_rate,
noise_multiplier). It is saved in the run folder (`to_dict`, plain JSON) and restored on resume,
so a resumed run keeps spending from the same budget.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import dp_accounting

from dpscope.errors import PrivacyError
from dpscope.privacy.accounting import (Accountant, Segment, _check_step, dp_sgd_event,
                                        epsilon_for_segments)

_FORMAT = "dpscope.privacy_ledger/1"


@dataclass
class PrivacyLedger:
    """Segments (sample_rate, noise_multiplier, steps) of DP-SGD steps, in execution order."""

    segments: list[Segment] = field(default_factory=list)

    def record_step(self, sample_rate: float, noise_multiplier: float) -> None:
        """Record one executed step; equal consecutive steps merge into one segment."""
        self.record_steps(sample_rate, noise_multiplier, 1)

    def record_steps(self, sample_rate: float, noise_multiplier: float, steps: int) -> None:
        _check_step(sample_rate, noise_multiplier, steps)
        if steps == 0:
            return
        sample_rate, noise_multiplier = float(sample_rate), float(noise_multiplier)
        if self.segments and self.segments[-1][:2] == (sample_rate, noise_multiplier):
            self.segments[-1] = (sample_rate, noise_multiplier, self.segments[-1][2] + int(steps))
        else:
            self.segments.append((sample_rate, noise_multiplier, int(steps)))

    @property
    def steps(self) -> int:
        """Steps recorded in total."""
        return sum(steps for _, _, steps in self.segments)

    def dp_event(self) -> dp_accounting.DpEvent:
        """The composed dp_accounting event of everything recorded."""
        return dp_sgd_event(self.segments)

    def epsilon(self, delta: float, accountant: Accountant = "pld") -> float:
        """Epsilon spent so far at `delta`."""
        return epsilon_for_segments(self.segments, delta, accountant)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": _FORMAT,
            "neighboring_relation": "add_or_remove_one",
            "segments": [
                {"sample_rate": q, "noise_multiplier": sigma, "steps": steps}
                for q, sigma, steps in self.segments
            ],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PrivacyLedger":
        if data.get("format") != _FORMAT:
            raise PrivacyError(
                f"not a dpscope privacy ledger (format {data.get('format')!r}, expected {_FORMAT!r}); "
                "pass the run folder's privacy_ledger.json"
            )
        ledger = cls()
        for item in data["segments"]:
            ledger.record_steps(item["sample_rate"], item["noise_multiplier"], item["steps"])
        return ledger
