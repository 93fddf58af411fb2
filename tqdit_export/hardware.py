"""What this machine is: CPU model and the instruction sets that decide ONNX Runtime's kernels."""
from __future__ import annotations

import platform


def _cpuinfo_field(name: str) -> str | None:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith(name):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_name() -> str:
    """The CPU model (from /proc/cpuinfo where there is one)."""
    return _cpuinfo_field("model name") or platform.processor() or platform.machine()


# The instruction sets that decide ONNX Runtime's CPU kernels (integer GEMM above all).
KERNEL_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")


def cpu_flags() -> dict[str, bool]:
    """Which of `KERNEL_FLAGS` this CPU has (all False where /proc/cpuinfo is missing)."""
    flags = set((_cpuinfo_field("flags") or "").split())
    return {f: f in flags for f in KERNEL_FLAGS}


def cpu_has_vnni() -> bool:
    """True when this CPU has AVX-VNNI or AVX512-VNNI (ORT's u8 x s8 kernel is exact with 8-bit weights)."""
    flags = cpu_flags()
    return flags["avx512_vnni"] or flags["avx_vnni"]


def cpu_kind() -> str:
    """The CPU kind benchmark figures belong to: "vnni" (integer GEMM ~3x FP32 in ORT), "avx2"
    (integer GEMM at about the FP32 rate), or "other". Figures of one kind never stand for another."""
    flags = cpu_flags()
    return "vnni" if cpu_has_vnni() else "avx2" if flags["avx2"] else "other"


def cpu_description() -> dict:
    """The CPU as benchmarks record it with every result: name, kind and kernel flags."""
    return {"name": cpu_name(), "kind": cpu_kind(), "flags": cpu_flags()}
