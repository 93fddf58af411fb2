"""`tqdit doctor`: what this machine can run (each probe is independent and never raises)."""
from __future__ import annotations

import importlib
import platform
import shutil
import subprocess
from typing import Callable

from .hardware import cpu_has_vnni, cpu_name, cuda_gpus


def _version(module: str) -> str | None:
    try:
        return str(getattr(importlib.import_module(module), "__version__", "installed"))
    except Exception:  # noqa: BLE001 - a broken install is reported, not raised
        return None


def _probe(fn: Callable[[], object]) -> object:
    try:
        return fn()
    except Exception as err:  # noqa: BLE001
        return f"error: {err}"


def _torch() -> dict:
    import torch

    cuda = torch.cuda.is_available()
    count = torch.cuda.device_count() if cuda else 0
    return {"version": torch.__version__, "cuda": cuda, "threads": torch.get_num_threads(),
            "gpus": [torch.cuda.get_device_name(i) for i in range(count)],
            "compute_capability": [".".join(map(str, torch.cuda.get_device_capability(i))) for i in range(count)]}


def _onnxruntime() -> dict | None:
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    return {"version": ort.__version__, "providers": ort.get_available_providers()}


def _tensorrt() -> dict | None:
    try:
        import tensorrt as trt
    except ImportError:
        return None
    return {"version": trt.__version__, "builder": hasattr(trt, "Builder"),
            "python_plugins": _version("tensorrt.plugin") is not None}


def _nvcc() -> str | None:
    path = shutil.which("nvcc")
    if path is None:
        return None
    out = subprocess.run([path, "--version"], capture_output=True, text=True).stdout.strip().splitlines()
    return f"{path}: {out[-1] if out else 'unknown version'}"


def _nvidia_smi() -> list[str] | None:
    path = shutil.which("nvidia-smi")
    if path is None:
        return None
    proc = subprocess.run([path, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                          capture_output=True, text=True, timeout=20)
    return [line.strip() for line in proc.stdout.splitlines() if line.strip()] or None


def _tritonserver() -> dict | None:
    from .serving.server import find_tritonserver, stub_environment_path

    try:
        install = find_tritonserver()
    except FileNotFoundError:
        return None
    return {"binary": str(install.binary), "kind": install.kind,
            "stub_environment": (stub_environment_path() / "bin" / "python3").is_file()}


def report() -> dict:
    """Everything `tqdit doctor` prints."""
    trt = _probe(_tensorrt)
    torch_info = _probe(_torch)
    # The GPU as TensorRT will see it, found without torch: a CPU-only torch must not hide it.
    gpus = cuda_gpus()
    can_build = isinstance(trt, dict) and trt["builder"] and bool(gpus)
    fp8_gpu = any(g.has_fp8 for g in gpus)
    return {
        "python": platform.python_version(),
        "cpu": {"name": cpu_name(), "vnni": cpu_has_vnni(), "machine": platform.machine()},
        "torch": torch_info,
        "onnxruntime": _probe(_onnxruntime),
        "tensorrt": trt,
        "pycuda": _version("pycuda"),
        "polygraphy": _version("polygraphy"),
        "nvidia_smi": _probe(_nvidia_smi),
        "cuda_gpus": [{"name": g.name, "compute_capability": g.compute_capability, "seen_by": g.source} for g in gpus],
        "nvcc": _probe(_nvcc),
        "cxx": shutil.which("c++") or shutil.which("g++"),
        "tritonserver": _probe(_tritonserver),
        "tritonclient": _version("tritonclient"),
        "can": {
            "calibrate_and_export": isinstance(torch_info, dict),
            "ort_int8": isinstance(_probe(_onnxruntime), dict),
            "ort_int8_full_range_weights": cpu_has_vnni(),  # without VNNI: 7-bit weight codes
            "build_trt_engines": bool(can_build),
            "build_trt_fp8_engines": bool(can_build and fp8_gpu),
            "edge_runtime_trt": isinstance(trt, dict) and _version("pycuda") is not None,
            "compile_plugin_kernel": shutil.which("nvcc") is not None,
            "serve_with_triton": isinstance(_probe(_tritonserver), dict) and _version("tritonclient") is not None,
        },
    }


def format_report(info: dict) -> str:
    """A short human-readable summary of `report()`."""
    def show(v: object) -> str:
        return "missing" if v is None else str(v)

    t, o, r = info["torch"], info["onnxruntime"], info["tensorrt"]
    lines = [
        f"python       {info['python']}",
        f"cpu          {info['cpu']['name']} ({info['cpu']['machine']}), VNNI {'yes' if info['cpu']['vnni'] else 'no'}",
        f"torch        {t['version']}, CUDA {'yes: ' + ', '.join(t['gpus']) if t['cuda'] else 'no'}"
        if isinstance(t, dict) else f"torch        {show(t)}",
        f"onnxruntime  {o['version']}, providers {', '.join(o['providers'])}" if isinstance(o, dict)
        else f"onnxruntime  {show(o)}",
        f"tensorrt     {r['version']}{'' if r['builder'] else ' (no builder: lean runtime)'}" if isinstance(r, dict)
        else f"tensorrt     {show(r)}",
        f"pycuda       {show(info['pycuda'])}",
        f"nvidia-smi   {show(info['nvidia_smi'])}",
        f"nvcc         {show(info['nvcc'])}",
        f"tritonserver {info['tritonserver']['binary']} ({info['tritonserver']['kind']})"
        if isinstance(info["tritonserver"], dict) else f"tritonserver {show(info['tritonserver'])}",
        "",
        "can: " + ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in info["can"].items()),
    ]
    return "\n".join(lines)
