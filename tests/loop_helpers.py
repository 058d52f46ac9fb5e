"""Shared helpers for tests of the training loop."""

from dpscope.callbacks import Callback


class CrashAtEpoch(Callback):
    """Simulates a killed process: raises in the middle of the given epoch."""

    name = "crash"

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_step_end(self, state, report) -> None:
        if report.epoch == self.epoch and report.step % 5 == 0:
            raise KeyboardInterrupt
