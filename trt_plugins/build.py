"""Compile the plugin sources with the tools this machine has (used by tests and `tqdit doctor`).

    python -m trt_plugins.build --out build/trt_plugins     # CPU reference (+ CUDA kernel with nvcc)

CMake (`csrc/CMakeLists.txt`) is the build for the TensorRT plugin library itself; these
helpers compile the pieces that need no TensorRT: the CPU reference with the system C++
compiler, and the CUDA kernel as a shared library with nvcc.
"""
from __future__ import annotations

import argparse
import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np

from .reference import check_table

CSRC = Path(__file__).resolve().parent / "csrc"


def _compile(cmd: list[str], out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"compiling {out.name} failed:\n{' '.join(cmd)}\n{proc.stderr}")
    return out


def build_cpu_reference(out_dir: str | Path, compiler: str | None = None) -> Path:
    """csrc/cpuReference.cpp -> libtqdit_cpu_reference.so (no fast-math: IEEE division and rint)."""
    cxx = compiler or shutil.which("c++") or shutil.which("g++")
    if cxx is None:
        raise RuntimeError("no C++ compiler (c++/g++) on PATH")
    out = Path(out_dir) / "libtqdit_cpu_reference.so"
    return _compile([cxx, "-O2", "-std=c++17", "-shared", "-fPIC", str(CSRC / "cpuReference.cpp"), "-o", str(out)], out)


def build_cuda_kernel(out_dir: str | Path, arch: str | None = None) -> Path:
    """csrc/timeGroupQuantizeKernel.cu -> libtqdit_kernels.so with nvcc (no GPU needed to compile)."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        raise RuntimeError("nvcc is not on PATH (install the CUDA toolkit)")
    out = Path(out_dir) / "libtqdit_kernels.so"
    cmd = [nvcc, "-O2", "-std=c++17", "-shared", "-Xcompiler", "-fPIC", str(CSRC / "timeGroupQuantizeKernel.cu"),
           "-o", str(out)]
    if arch:
        cmd[1:1] = [f"-arch={arch}"]
    return _compile(cmd, out)


def run_library(lib_path: str | Path, symbol: str, x: np.ndarray, scales: np.ndarray, time_group: int,
                bits: int) -> np.ndarray:
    """Call `symbol` (tqdit_time_group_quantize_cpu or _cuda) of a built library on host arrays."""
    table = check_table(scales, bits)
    x = np.ascontiguousarray(x, dtype=np.float32)
    q = np.empty(x.shape, dtype=np.int8)
    fn = getattr(ctypes.CDLL(str(lib_path)), symbol)
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int32,
                   ctypes.c_int32, ctypes.c_int32]
    rc = fn(x.ctypes.data, q.ctypes.data, x.size, table.ctypes.data, table.size, int(time_group), int(bits))
    if rc != 0:
        raise RuntimeError(f"{symbol} returned {rc}")
    return q


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("build/trt_plugins"))
    args = p.parse_args(argv)
    print(f"built {build_cpu_reference(args.out)}")
    try:
        print(f"built {build_cuda_kernel(args.out)}")
    except RuntimeError as err:
        print(f"CUDA kernel not built: {err}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
