"""Small C kernels for the CPU, compiled on first use with the machine's C compiler.

Why: on the CPU, materialising a convolution's per-example gradients with torch ops means an
im2col copy (prod(kernel) times the input, written to memory and read back) and a batch of
small matrix products that run far below the core's speed. `conv_grads.c` forms each example's
gradient in registers from the input rows where they lie, channels-last: the cnn's stem at batch
428 took 1.9 ms instead of 8.5 (one thread). `conv_rows.c` does the same for layers of any stride in
torch's NCHW layout, where torch's best was one grouped weight-gradient call with the batch as
groups: resnet20's 16-channel layers at 28 px, batch 428, took 17.6 ms instead of 34.1.
`group_norm.c` gives a GroupNorm's per-example gradients in one pass over its input and
output gradient, alone or inside the layer's backward (with the input gradient, in the pass
that torch's backward makes anyway).

The library is built once per source, compiler and CPU (`-O3 -march=native`) into the cache
(`$DPSCOPE_CACHE`, else `$XDG_CACHE_HOME/dpscope` or `~/.cache/dpscope`, under `native/`), by
an atomic rename, so parallel runs never load half a file. Without a compiler, or with
`DPSCOPE_NATIVE=0`, `library()` returns None and the engine keeps to torch ops (the same
values, slower); `unavailable_reason()` says why.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from dpscope.data import locate

SOURCES = tuple(Path(__file__).with_name(name) for name in ("conv_grads.c", "conv_rows.c", "group_norm.c"))
FLAG_SETS = (["-O3", "-march=native"], ["-O3"])  # the second where -march=native is refused
_lock = threading.Lock()
_state: dict[str, object] = {}
_MIN_EXAMPLES_PER_THREAD = 8
_pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="dpscope-native")  # idle: no threads


def cache_dir() -> Path:
    """`$DPSCOPE_CACHE`, else the download cache of the datasets (`dpscope.data.locate`)."""
    explicit = os.environ.get("DPSCOPE_CACHE")
    return Path(explicit) if explicit else locate.cache_dir()


def _cpu_identity() -> str:
    """What -march=native compiles for: the CPU model and its feature flags."""
    try:
        info = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return platform.processor()
    lines = info.splitlines()
    keys = ("model name", "flags", "Features", "CPU part", "CPU implementer")
    wanted = [line for line in lines if line.split(":")[0].strip() in keys]
    return "\n".join(dict.fromkeys(wanted)) or platform.processor()


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def _build(compiler: str) -> tuple[Path, list[str]]:
    """Compile SOURCES into one library (cached): the library and its flags; raises
    RuntimeError with the compiler's complaint."""
    sources, machine = [s.read_bytes() for s in SOURCES], [platform.machine().encode(), _cpu_identity().encode()]
    targets = []
    for flags in FLAG_SETS:
        key = hashlib.sha256(b"\0".join([*sources, compiler.encode(), " ".join(flags).encode(), *machine]))
        targets.append((cache_dir() / "native" / key.hexdigest()[:16] / "kernels.so", flags))
    for target, flags in targets:  # a build from an earlier process, by any flag set
        if target.exists():
            return target, flags
    errors = []
    for target, flags in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        command = [compiler, *flags, "-shared", "-fPIC", "-o", tmp, *map(str, SOURCES), "-lm"]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode == 0:
            os.replace(tmp, target)
            return target, flags
        os.unlink(tmp)
        errors.append(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}")
    raise RuntimeError(f"{compiler} failed: {'; '.join(errors)}")


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    for name in ("dpscope_conv2d_grads_f32", "dpscope_conv2d_grads_f64"):
        fn = getattr(lib, name)
        fn.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_long] * 13
        fn.restype = None
    for name in ("dpscope_conv2d_rows_f32", "dpscope_conv2d_rows_f64"):
        fn = getattr(lib, name)
        fn.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_long] * 17
        fn.restype = ctypes.c_int
    for name in ("dpscope_group_norm_grads_f32", "dpscope_group_norm_grads_f64"):
        fn = getattr(lib, name)
        fn.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_long] * 4 + [ctypes.c_double]
        fn.restype = ctypes.c_int
    for name in ("dpscope_group_norm_backward_f32", "dpscope_group_norm_backward_f64"):
        fn = getattr(lib, name)
        fn.argtypes = [ctypes.c_void_p] * 8 + [ctypes.c_long] * 4
        fn.restype = ctypes.c_int
    return lib


def _load() -> None:
    compiler, lib, reason, how = _compiler(), None, None, None
    if os.environ.get("DPSCOPE_NATIVE", "1") == "0":
        reason = "DPSCOPE_NATIVE=0"
    elif compiler is None:
        reason = "no C compiler found (set CC, or install gcc)"
    else:
        try:
            path, flags = _build(compiler)
            lib, how = _declare(ctypes.CDLL(str(path))), " ".join([Path(compiler).name, *flags])
        except (OSError, RuntimeError, AttributeError) as error:
            reason = f"could not build the C kernels: {error}"
    _state.update(lib=lib, reason=reason, how=how, warned=reason in (None, "DPSCOPE_NATIVE=0"))


def library(warn: bool = True) -> ctypes.CDLL | None:
    """The compiled kernels, or None (see `unavailable_reason`); built at most once a process.
    The first caller that would have used them (`warn`) hears once why they are missing."""
    if "lib" not in _state:
        with _lock:
            if "lib" not in _state:
                _load()
    if warn and not _state["warned"]:
        _state["warned"] = True
        warnings.warn(f"dpscope: {_state['reason']}; per-example convolution gradients use torch ops "
                      "instead (the same values, slower)", RuntimeWarning, stacklevel=2)
    return _state["lib"]  # type: ignore[return-value]


def unavailable_reason() -> str | None:
    """Why `library()` is None (None when it loaded)."""
    library(warn=False)
    return _state.get("reason")  # type: ignore[return-value]


def describe() -> str:
    """One line for benchmark records: how the kernels were built, or why they are off."""
    reason = unavailable_reason()
    return f"C kernels off ({reason})" if reason else f"C kernels ({_state['how']})"


def reset() -> None:
    """Forget the loaded library (tests that change the environment)."""
    with _lock:
        _state.clear()


def in_threads(run, batch: int) -> None:
    """run(slice) over the batch, in up to torch.get_num_threads() threads."""
    threads = max(1, min(torch.get_num_threads(), batch // _MIN_EXAMPLES_PER_THREAD))
    bounds = [batch * k // threads for k in range(threads + 1)]
    slices = [slice(lo, hi) for lo, hi in zip(bounds, bounds[1:]) if hi > lo]
    if len(slices) <= 1:
        for sl in slices:
            run(sl)
        return
    for future in [_pool.submit(run, sl) for sl in slices]:
        future.result()
