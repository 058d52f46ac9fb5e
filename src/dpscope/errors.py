"""User-facing errors: one line that says what is wrong and how to fix it.

The CLI turns any `DpscopeError` into that line on stderr and exit code 2, with no traceback.
Library code raises the most specific subclass; programming errors stay ordinary exceptions.
"""

from __future__ import annotations

import sys
from typing import Callable


class DpscopeError(Exception):
    """A problem with the user's input or setup, explained in one line."""


class DataError(DpscopeError):
    """A dataset file or folder is missing, corrupt or inconsistent."""


class ConfigError(DpscopeError):
    """A run or study configuration is invalid."""


class PrivacyError(DpscopeError):
    """A privacy budget or setup cannot be honoured as asked."""


class UnsupportedLayerError(DpscopeError):
    """A trainable layer has no per-example gradient rule."""


def run_script(main: Callable[[], None]) -> None:
    """Run a script's `main` as the CLI runs a command: a DpscopeError becomes one line on
    stderr and exit code 2 (the benchmark scripts use it)."""
    try:
        main()
    except DpscopeError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
