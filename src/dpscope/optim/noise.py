"""Gaussian noise for DP-SGD: a seeded generator (reproducible) or the OS's CSPRNG (secure).

Seeded (default): `torch.normal` from a `torch.Generator` per device, seeded with the run's seed.
Reproducible and resumable (its state is in `state_dict`), but a pseudo-random generator whose
state an adversary could in principle reconstruct; fine for research, not for a deployed model.

Secure (`secure=True`): uniforms from `os.urandom` (the kernel CSPRNG), 53 random bits each, turned
into normals by the Box-Muller transform in float64, then cast to the parameter's dtype. Not
reproducible by design. Caveat: like every floating-point Gaussian sampler, it is not the exact
discrete Gaussian of Canonne et al. 2020; float64 keeps the representational gaps far below the
noise scale, which is what practical libraries accept.

Cost of the secure path, 10M coordinates (one ResNet-18 step), on this project's 2-core CPU VM
while other jobs kept it busy (load ~6): 1.35 s, against 0.095 s seeded (about half of it is
os.urandom, half the float64 Box-Muller arithmetic). Repeat with
    python -m dpscope.optim.bench_noise 10000000
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import torch

from dpscope.device import device_present

_TWO_PI = 2 * math.pi


def secure_standard_normal(count: int) -> np.ndarray:
    """`count` independent N(0, 1) float64 draws from the OS's CSPRNG (Box-Muller)."""
    pairs = (count + 1) // 2
    u1, u2 = _secure_uniform(pairs), _secure_uniform(pairs)
    radius = np.sqrt(-2.0 * np.log(u1))
    angle = _TWO_PI * u2
    return np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])[:count]


def _secure_uniform(count: int) -> np.ndarray:
    """Uniform on (0, 1]: (k + 1) / 2^53 for k from 53 random bits (never 0, so log is finite)."""
    words = np.frombuffer(os.urandom(8 * count), dtype=np.uint64)
    return ((words >> np.uint64(11)).astype(np.float64) + 1.0) * 2.0**-53


class GaussianNoise:
    """Draws N(0, std^2) tensors shaped like a given tensor, from one of the two sources."""

    def __init__(self, *, seed: int = 0, secure: bool = False) -> None:
        self.seed = seed
        self.secure = secure
        self._generators: dict[str, torch.Generator] = {}
        self._elsewhere: dict[str, torch.Tensor] = {}  # saved states of devices not present here

    def like(self, tensor: torch.Tensor, std: float) -> torch.Tensor:
        """Noise with `tensor`'s shape, dtype and device."""
        if self.secure:
            draws = torch.from_numpy(secure_standard_normal(tensor.numel()))
            return (draws * std).reshape(tensor.shape).to(device=tensor.device, dtype=tensor.dtype)
        generator = self._generator(tensor.device)
        return torch.normal(0.0, std, tensor.shape, generator=generator,
                            device=tensor.device, dtype=tensor.dtype)

    def _generator(self, device: torch.device) -> torch.Generator:
        key = str(device)
        if key not in self._generators:
            self._generators[key] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[key]

    def state_dict(self) -> dict[str, Any]:
        """Generator states per device; empty for the secure source (nothing to restore)."""
        states = dict(self._elsewhere)
        states.update({key: gen.get_state() for key, gen in self._generators.items()})
        return {"seed": self.seed, "secure": self.secure, "generators": states}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore each device's stream. A stream of a device this machine lacks (a GPU run
        resumed on a CPU) is kept as saved, so it continues if the run goes back there; the
        new device starts its own stream, which this run has never drawn from."""
        self.seed, self.secure = state["seed"], state["secure"]
        self._generators, self._elsewhere = {}, {}
        for key, generator_state in state["generators"].items():
            if device_present(torch.device(key)):
                self._generator(torch.device(key)).set_state(generator_state)
            else:
                self._elsewhere[key] = generator_state

