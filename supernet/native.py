"""Build and load the native CPU kernels (``supernet/csrc``) with the system C++ compiler.

A plain shared library over raw pointers: no torch headers and no ninja, so a build takes a
few seconds (about 5 s of CPU with g++ 12). It is built on first use (and by ``make install``:
``python -m supernet.native --build``) into ``$XDG_CACHE_HOME/hwnas/kernels/<hash of source
and flags>/`` (``~/.cache`` when unset), written to a temporary name and renamed, so processes
building at once (DDP ranks) never load a half-written file. Without a compiler, after a
failed build or with ``HWNAS_NATIVE_KERNELS=0`` it warns once and the callers keep their torch
kernels.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

SOURCE = Path(__file__).resolve().parent / "csrc" / "fake_quant.cpp"
# no fast-math, no FMA contraction: the eager kernels' floats; -fno-trapping-math changes no
# value (FP exceptions are never read) and lets the loops' compares vectorise
FLAGS = ("-shared", "-fPIC", "-O3", "-fno-fast-math", "-fno-trapping-math", "-ffp-contract=off",
         "-std=c++17", "-pthread")
SWITCH = "HWNAS_NATIVE_KERNELS"

_PTR, _I64, _I32, _F64 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32, ctypes.c_double
# (name, argument types); every function returns 0, or −1 for a mix it cannot take
SIGNATURES = {
    "hwnas_act_forward": (_PTR, _PTR, _I64, _I32, _PTR, _PTR, _PTR, _PTR, _PTR, _PTR, _F64, _I32),
    "hwnas_act_backward": (_PTR, _PTR, _PTR, _I64, _I32, _PTR, _PTR, _PTR, _PTR, _PTR, _PTR,
                           _I64, _F64, _PTR, _PTR, _I32),
    "hwnas_weight_forward": (_PTR, _PTR, _I64, _I64, _I32, _PTR, _PTR, _PTR),
    "hwnas_weight_backward": (_PTR, _PTR, _PTR, _I64, _I64, _I32, _PTR, _PTR, _PTR, _PTR),
}


class NativeBuildError(RuntimeError):
    """The native kernels cannot be built here (no compiler, or it failed)."""


def compiler() -> str | None:
    """The system C++ compiler (``$CXX`` first), or None."""
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and (path := shutil.which(name)):
            return path
    return None


def library_path(cxx: str) -> Path:
    """Where the library built from the current source with ``cxx`` lives."""
    key = hashlib.sha256(SOURCE.read_bytes())
    key.update(" ".join((cxx, *FLAGS, platform.machine(), sys.platform)).encode())
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "hwnas" / "kernels" / key.hexdigest()[:16] / "libhwnas_fake_quant.so"


def build() -> Path:
    """The library's path, compiling it first unless a build of this source is cached."""
    cxx = compiler()
    if cxx is None:
        raise NativeBuildError("no C++ compiler found (set CXX or install g++)")
    target = library_path(cxx)
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so.tmp", dir=target.parent)
    os.close(fd)
    try:
        done = subprocess.run([cxx, *FLAGS, str(SOURCE), "-o", tmp], capture_output=True,
                              text=True, check=False)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise NativeBuildError(f"{Path(cxx).name} failed on {SOURCE.name}: {last}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _load(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    for name, args in SIGNATURES.items():
        for suffix in ("_f32", "_f64"):
            fn = getattr(lib, name + suffix)
            fn.argtypes, fn.restype = args, ctypes.c_int
    lib.hwnas_use_avx2.argtypes, lib.hwnas_use_avx2.restype = (_I32,), ctypes.c_int
    return lib


@functools.cache
def library() -> ctypes.CDLL | None:
    """The loaded kernels, or None (warned once) when they are off or cannot be built."""
    if os.environ.get(SWITCH, "1").strip().lower() in ("0", "false", "no", "off"):
        reason = f"{SWITCH}=0"
    else:
        try:
            return _load(build())
        except (NativeBuildError, OSError) as err:
            reason = str(err)
    warnings.warn(f"native CPU quantizer kernels off ({reason}); using the torch kernels",
                  RuntimeWarning, stacklevel=2)
    return None


def main(argv: list[str] | None = None) -> int:
    """``--build``: build the kernels now; one line either way, never a failing exit."""
    argv = sys.argv[1:] if argv is None else argv
    if argv != ["--build"]:
        print("usage: python -m supernet.native --build")
        return 2
    try:
        print(f"native CPU quantizer kernels: {build()}")
    except (NativeBuildError, OSError) as err:
        print(f"native CPU quantizer kernels not built ({err}); the torch kernels will run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
