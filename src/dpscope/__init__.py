"""dpscope: train image classifiers with differential privacy, fast, and see what privacy does."""

from __future__ import annotations

__version__ = "0.1.0"
