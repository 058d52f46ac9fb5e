"""Set up dpscope in a local virtual environment and run its main job or its tests.

    python3 dev.py demo    # install (once), then the quickstart study on digits and its report
    python3 dev.py test    # install (once), then run the whole test suite

Only Python 3.11+ and pip are needed. The environment lives in .venv and is reused: a second
call installs nothing unless pyproject.toml changed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")
STAMP = VENV / ".dpscope-installed"
# The CPU build that this project is developed and tested with; any torch >= 2.4 works.
PREFERRED_TORCH = "torch==2.13.0"


def _run(cmd: list[str], **kwargs) -> int:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    return subprocess.call([str(c) for c in cmd], cwd=ROOT, **kwargs)


def _pip(*args: str) -> int:
    return _run([PYTHON, "-m", "pip", "--disable-pip-version-check", *args])


def _requirements_hash() -> str:
    return hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()


def ensure_installed() -> None:
    if not PYTHON.exists():
        print(f"creating virtual environment in {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    if STAMP.exists() and STAMP.read_text() == _requirements_hash():
        return
    has_torch = subprocess.call([PYTHON, "-c", "import torch"], stderr=subprocess.DEVNULL) == 0
    if not has_torch and _pip("install", "-q", PREFERRED_TORCH) != 0:
        if _pip("install", "-q", "torch>=2.4") != 0:
            sys.exit("could not install PyTorch; install torch>=2.4 into .venv by hand and rerun")
    if _pip("install", "-q", "-e", ".[test]") != 0:
        sys.exit("could not install dpscope; see the pip output above")
    STAMP.write_text(_requirements_hash())


def ensure_chromium() -> None:
    """The report tests render HTML in headless Chromium; install Debian's package if we can."""
    if shutil.which("chromium") or os.name == "nt" or not shutil.which("apt-get"):
        return
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        print("chromium not found: the report screenshot test will be skipped "
              "(install Debian's chromium package to run it)", flush=True)
        return
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    print("installing chromium for the report tests (apt-get)", flush=True)
    if subprocess.call(["apt-get", "update", "-q"], env=env, **quiet) != 0 or subprocess.call(
        ["apt-get", "install", "-y", "-q", "chromium"], env=env, **quiet
    ) != 0:
        print("could not install chromium: the report screenshot test will be skipped", flush=True)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"demo", "test", "setup"}:
        print(__doc__)
        return 2
    ensure_installed()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if argv[0] == "demo":
        status = _run([BIN / "dpscope", "study", "studies/quickstart.toml", *argv[1:]], env=env)
        if status != 0:
            return status
        return _run([BIN / "dpscope", "report", "studies_out/quickstart"], env=env)
    if argv[0] == "test":
        ensure_chromium()
        return _run([PYTHON, "-m", "pytest", "-q", *argv[1:]], env=env)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
