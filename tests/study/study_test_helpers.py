"""Tiny studies for the study tests: digits, mlp, one thread, well under a second per run."""

from __future__ import annotations

from pathlib import Path


def write_spec(folder: Path, name: str, body: str) -> Path:
    path = folder / f"{name}.toml"
    path.write_text(f'name = "{name}"\n' + body)
    return path


TINY = """\
[base]
dataset = "digits"
model = "mlp"
epochs = 2
threads = 1
batch_size = 128
lr = 0.1
[grid]
epsilon = ["none", 2.0, 8.0]
seed = [0, 1]
"""

TINY_NONPRIVATE = """\
[base]
dataset = "digits"
model = "mlp"
epochs = 2
threads = 1
[grid]
lr = [0.05, 0.2]
seed = [0, 1]
"""
