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


def cpu_has_vnni() -> bool:
    """True when this CPU has AVX-VNNI or AVX512-VNNI (ORT's u8 x s8 kernel is exact with 8-bit weights)."""
    flags = (_cpuinfo_field("flags") or "").split()
    return "avx512_vnni" in flags or "avx_vnni" in flags
