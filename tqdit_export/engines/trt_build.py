"""Building TensorRT engines from the Q/DQ ONNX graphs (no torch: a CPU-only torch never decides here).

`tensorrt` is imported lazily: this module imports, and its pure helpers work, without it.
Version handling, from the TensorRT documentation:
- TensorRT 11: every network is strongly typed; the precision builder flags (INT8, FP16,
  FP8) and calibrators are gone, so a Q/DQ graph builds as is.
- TensorRT 10.x: strongly typed networks via NetworkDefinitionCreationFlag.STRONGLY_TYPED
  (the default here); the weakly typed path with BuilderFlag.INT8 (+ FP16) is kept for
  TensorRT 10.3 on JetPack 6, where users build that way.
Engines are cached by (ONNX sha256, TensorRT version, GPU name, settings), and a timing
cache is reused between builds of the same GPU.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType

from ..edge.trt_runtime import import_tensorrt, load_time_group_plugin, trt_major
from ..hardware import CudaGpu, cuda_gpus
from ..io import atomic_output, file_sha256

# FP8 Q/DQ with per-channel weight scales (what the FP8 export writes) builds on Hopper from
# TensorRT 10.6 (release notes); earlier 10.x reject or mis-handle it.
FP8_MIN_VERSION = (10, 6)


@dataclass(frozen=True)
class BuildSettings:
    """How to build: strongly typed (default) or the weak INT8 path (TensorRT 10.x only)."""

    strongly_typed: bool = True
    fp16_fallback: bool = True  # weakly typed path only: let float layers run in FP16
    workspace_mib: int = 4096
    max_batch: int = 64
    fp8: bool = False  # the graph has float8e4m3fn Q/DQ (weakly typed path: FP8 flag)


def version_tuple(version: str) -> tuple[int, ...]:
    """"10.13.3.9" -> (10, 13, 3, 9), ignoring suffixes such as ".post1"."""
    parts = []
    for p in str(version).split("."):
        if not p.isdigit():
            break
        parts.append(int(p))
    return tuple(parts)


def check_precision_supported(trt_version: str, precision: str, gpu: CudaGpu | None = None) -> None:
    """Refuse, before any build, a precision this TensorRT or GPU cannot build."""
    if precision == "fp8":
        if version_tuple(trt_version) < FP8_MIN_VERSION:
            raise RuntimeError(f"--precision fp8 needs TensorRT >= {'.'.join(map(str, FP8_MIN_VERSION))} (FP8 Q/DQ "
                               f"with per-channel weight scales); this is TensorRT {trt_version}: upgrade, or build "
                               "--precision int8")
        if gpu is not None and gpu.compute_capability is not None and not gpu.has_fp8:
            raise RuntimeError(f"--precision fp8: {gpu.name} (compute capability {gpu.compute_capability}) has no "
                               "FP8 tensor cores (Ada 8.9 or Hopper 9.0 and newer); build --precision int8")


def network_flags(trt: ModuleType, settings: BuildSettings) -> int:
    """Creation flags of the network for this TensorRT version and build settings."""
    if trt_major(trt) >= 11:
        if not settings.strongly_typed:
            raise ValueError("TensorRT >= 11 builds strongly typed networks only; drop the weakly typed option")
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if settings.strongly_typed else 0


def builder_flags(trt: ModuleType, settings: BuildSettings) -> list:
    """Precision flags the builder config needs: none when strongly typed, INT8 or FP8 (+FP16) otherwise."""
    if settings.strongly_typed:
        return []
    if trt_major(trt) >= 11:  # the precision flags are gone in 11: the graph's Q/DQ types decide
        raise ValueError("TensorRT >= 11 builds strongly typed networks only; drop the weakly typed option")
    flags = [trt.BuilderFlag.FP8 if settings.fp8 else trt.BuilderFlag.INT8]
    if settings.fp16_fallback:
        flags.append(trt.BuilderFlag.FP16)
    return flags


def engine_cache_key(onnx_path: Path, trt_version: str, gpu_name: str, settings: BuildSettings) -> str:
    """Engines depend on the graph, the TensorRT version, the GPU and the build settings."""
    key = json.dumps([file_sha256(onnx_path), trt_version, gpu_name, asdict(settings)], sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:24]


def build_gpu() -> CudaGpu:
    """The GPU engines are built on (the first one), found without torch; an error when there is none."""
    gpus = cuda_gpus()
    if not gpus:
        raise RuntimeError("building a TensorRT engine needs a CUDA GPU; none is visible (checked cuda-python, "
                           "pycuda, nvidia-smi and torch)")
    return gpus[0]


def build_engine(onnx_path: Path, cache_dir: Path, settings: BuildSettings = BuildSettings(),
                 input_shape: tuple[int, int, int] | None = None, plugin_library: str | Path | None = None,
                 load_plugin: bool = False) -> Path:
    """Build (or reuse from `cache_dir`) the serialized engine of one ONNX graph; returns its path.

    `load_plugin` (plugin layout): register the TimeGroupQuantize plugin before parsing.
    """
    trt = import_tensorrt(builder=True)
    if settings.fp8:
        check_precision_supported(trt.__version__, "fp8")
    if load_plugin:
        load_time_group_plugin(trt, plugin_library)
    gpu = build_gpu().name
    cache_dir.mkdir(parents=True, exist_ok=True)
    plan = cache_dir / f"{onnx_path.stem}-{engine_cache_key(onnx_path, trt.__version__, gpu, settings)}.plan"
    if plan.exists():
        return plan
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    if builder is None:
        raise RuntimeError("TensorRT could not create a builder (no usable CUDA device or driver?); see the log above")
    network = builder.create_network(network_flags(trt, settings))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # reads external data beside the file
        errors = "\n".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}:\n{errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_mib << 20)
    for flag in builder_flags(trt, settings):
        config.set_flag(flag)
    timing_file = cache_dir / "timing.cache"
    cache = config.create_timing_cache(timing_file.read_bytes() if timing_file.exists() else b"")
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        # A cache written on another GPU or TensorRT version: TensorRT drops it and times every
        # tactic again (slower, same engine). Say so instead of letting it pass silently.
        warnings.warn(f"{timing_file}: TensorRT rejected this timing cache (written on another GPU or TensorRT "
                      "version); building without it, and the cache is rewritten for this GPU", stacklevel=2)
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = list(tensor.shape)
        if shape and shape[0] == -1:  # the dynamic batch axis
            rest = shape[1:] if input_shape is None or tensor.name != "x" else list(input_shape)
            profile.set_shape(tensor.name, [1, *rest], [max(1, settings.max_batch // 2), *rest],
                              [settings.max_batch, *rest])
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build {onnx_path}; see the log above")
    with atomic_output(timing_file) as tmp:
        tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
    with atomic_output(plan) as tmp:
        tmp.write_bytes(bytes(serialized))
    return plan
