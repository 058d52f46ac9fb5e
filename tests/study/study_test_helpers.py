"""Tiny studies for the study tests: digits, mlp, one thread, well under a second per run."""

from __future__ import annotations

import importlib.util
from pathlib import Path

# private runs appear in the tiny study once private training is part of the package
HAS_PRIVATE = importlib.util.find_spec("dpscope.private") is not None


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
epsilon = {epsilons}
seed = [0, 1]
""".format(epsilons='["none", 2.0, 8.0]' if HAS_PRIVATE else '["none"]')

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
