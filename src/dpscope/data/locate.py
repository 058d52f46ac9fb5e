"""Where dataset files are looked for, and the checked download of a missing one.

Search order for a file name: `data_dir` (when given), `$DPSCOPE_DATA`, the `shared/data`
folder beside the project root (the root found from this package's source, and from the
working directory: its nearest ancestor with a pyproject.toml, else the working directory
itself), then the download cache (`$XDG_CACHE_HOME/dpscope` or `~/.cache/dpscope`).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
from pathlib import Path

from dpscope.errors import DataError

DOWNLOAD_TIMEOUT_S = 10.0  # per socket operation: offline machines fail fast


def _project_root(start: Path) -> Path | None:
    for folder in (start, *start.parents):
        if (folder / "pyproject.toml").is_file():
            return folder
    return None


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "dpscope"


def download_dir(data_dir: str | Path | None) -> Path:
    """Where a download goes: `data_dir`, else `$DPSCOPE_DATA`, else the cache."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    if os.environ.get("DPSCOPE_DATA"):
        return Path(os.environ["DPSCOPE_DATA"]).expanduser()
    return cache_dir()


def search_dirs(data_dir: str | Path | None) -> list[Path]:
    """The folders searched for a dataset file, in order, without duplicates."""
    candidates = [Path(data_dir)] if data_dir is not None else []
    if os.environ.get("DPSCOPE_DATA"):
        candidates.append(Path(os.environ["DPSCOPE_DATA"]))
    package_root = _project_root(Path(__file__).resolve().parent)
    cwd = Path.cwd().resolve()
    for root in (package_root, _project_root(cwd) or cwd):
        if root is not None:
            candidates.append(root.parent / "shared" / "data")
    candidates.append(cache_dir())
    unique: list[Path] = []
    for folder in candidates:
        if folder.expanduser().resolve() not in [u.resolve() for u in unique]:
            unique.append(folder.expanduser())
    return unique


def find_file(filename: str, data_dir: str | Path | None) -> tuple[Path | None, list[Path]]:
    """(first existing path or None, every folder searched)."""
    folders = search_dirs(data_dir)
    for folder in folders:
        if (folder / filename).is_file():
            return folder / filename, folders
    return None, folders


def download_verified(url: str, md5: str, target: Path, *, timeout_s: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """Download `url` to `target`, keeping it only if its MD5 is `md5`.

    Written to a temporary sibling and renamed, so an interrupted or corrupt download never
    leaves a file that a later search would find. Raises OSError when the host is unreachable
    and DataError on a checksum mismatch.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.md5()
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout_s) as response:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != md5:
            raise DataError(
                f"download of {url} has MD5 {digest.hexdigest()}, expected {md5}; the file was discarded, "
                "try again or download it by hand"
            )
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return target
