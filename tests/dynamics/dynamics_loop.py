"""A tiny model and a hand-written loop that calls the callback hooks like dpscope's loop."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from dpscope.callbacks import LoopState, StepReport


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.norm = nn.GroupNorm(1, 3)
        self.fc = nn.Linear(3 * 4 * 4, 4)

    def forward(self, x):
        return self.fc(F.relu(self.norm(self.conv(x))).flatten(1))


def batch(step: int, size: int = 6):
    gen = torch.Generator().manual_seed(1000 + step)
    return torch.randn(size, 1, 6, 6, generator=gen), torch.randint(0, 4, (size,), generator=gen)


def run_epochs(tracker, model, optimizer, state: LoopState, epochs: int, steps_per_epoch: int = 3,
               hook=None):
    """Non-private SGD; `hook(model, report)` may fill a report before the callback sees it."""
    for _ in range(epochs):
        for _ in range(steps_per_epoch):
            x, y = batch(state.step)
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            report = StepReport(step=state.step + 1, epoch=state.epoch, batch_size=len(y), loss=0.0)
            if hook is not None:
                hook(model, report)
            optimizer.step()
            state.step += 1
            tracker.on_step_end(state, report)
        state.epoch += 1
        tracker.on_epoch_end(state, {})


def new_run(seed: int = 0):
    torch.manual_seed(seed)
    model = TinyNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return model, optimizer, LoopState(model=model, optimizer=optimizer, run_dir=None)
