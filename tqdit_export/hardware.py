"""What this machine is: CPU model and the instruction sets that decide ONNX Runtime's kernels."""
from __future__ import annotations

import platform
import shutil
import subprocess
from dataclasses import dataclass


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


@dataclass(frozen=True)
class CudaGpu:
    """One CUDA GPU: its name, compute capability ("9.0") where known, and which probe saw it."""

    name: str
    compute_capability: str | None
    source: str

    @property
    def has_fp8(self) -> bool:
        """FP8 tensor cores: Ada (8.9), Hopper (9.0) and newer."""
        if self.compute_capability is None:
            return False
        major, minor = (int(p) for p in self.compute_capability.split(".")[:2])
        return (major, minor) >= (8, 9)


def _gpus_cuda_python() -> list[CudaGpu]:
    try:  # cuda-python >= 12.3 names it cuda.bindings; older releases cuda.cudart
        from cuda.bindings import runtime as cudart
    except ImportError:
        from cuda import cudart
    err, count = cudart.cudaGetDeviceCount()
    if int(err) != 0:
        return []
    gpus = []
    for i in range(count):
        err, prop = cudart.cudaGetDeviceProperties(i)
        if int(err) == 0:
            name = prop.name.decode() if isinstance(prop.name, bytes) else str(prop.name)
            gpus.append(CudaGpu(name.rstrip("\x00"), f"{prop.major}.{prop.minor}", "cuda-python"))
    return gpus


def _gpus_pycuda() -> list[CudaGpu]:
    import pycuda.driver as cuda

    cuda.init()
    return [CudaGpu(cuda.Device(i).name(), "{}.{}".format(*cuda.Device(i).compute_capability()), "pycuda")
            for i in range(cuda.Device.count())]


def _gpus_nvidia_smi() -> list[CudaGpu]:
    path = shutil.which("nvidia-smi")
    if path is None:
        return []
    proc = subprocess.run([path, "--query-gpu=name,compute_cap", "--format=csv,noheader"],
                          capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:  # drivers before 510 have no compute_cap field: ask for the name alone
        proc = subprocess.run([path, "--query-gpu=name", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30)
    gpus = []
    for line in proc.stdout.splitlines() if proc.returncode == 0 else []:
        fields = [f.strip() for f in line.split(",")]
        if fields and fields[0]:
            cc = fields[1] if len(fields) > 1 and fields[1][:1].isdigit() else None
            gpus.append(CudaGpu(fields[0], cc, "nvidia-smi"))
    return gpus


def _gpus_torch() -> list[CudaGpu]:
    import torch

    if not torch.cuda.is_available():
        return []
    return [CudaGpu(torch.cuda.get_device_name(i), "{}.{}".format(*torch.cuda.get_device_capability(i)), "torch")
            for i in range(torch.cuda.device_count())]


# Asked in this order; torch last because the project's machines install a CPU torch, which
# sees no GPU even where TensorRT and a driver are present.
GPU_PROBES = (("cuda-python", _gpus_cuda_python), ("pycuda", _gpus_pycuda), ("nvidia-smi", _gpus_nvidia_smi),
              ("torch", _gpus_torch))


def cuda_gpus() -> list[CudaGpu]:
    """The CUDA GPUs of this machine, from the first probe that sees any (cuda-python, pycuda,
    nvidia-smi, torch); [] when none does. Never raises: a probe that is missing or broken is skipped."""
    for _, probe in GPU_PROBES:
        try:
            gpus = probe()
        except Exception:  # noqa: BLE001 - a missing or broken probe means "not from here"
            continue
        if gpus:
            return gpus
    return []
