"""TensorRT backend: INT8 engines built from the same Q/DQ ONNX graphs, run with torch CUDA tensors.

`tensorrt` is imported lazily: this module imports (and its pure helpers work) without it.
Version handling, from the TensorRT documentation:
- TensorRT 11: every network is strongly typed; the precision builder flags (INT8, FP16,
  FP8) and calibrators are gone, so a Q/DQ graph builds as is.
- TensorRT 10.x: strongly typed networks via NetworkDefinitionCreationFlag.STRONGLY_TYPED
  (the default here); the weakly typed path with BuilderFlag.INT8 (+ FP16) is kept for
  TensorRT 10.3 on JetPack 6, where users build that way.
Engines are cached by (ONNX sha256, TensorRT version, GPU name), and a timing cache is
reused between builds. One engine per time group can share one activation buffer:
contexts are created with user-managed device memory sized to the largest engine.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch

from calibration.time_groups import TimeGroups

from ..edge.trt_runtime import (PLUGIN_LIBRARY_ENV, batch_chunks, load_plugin_library, output_shape, set_input_shape,
                                shared_memory_contexts)
from ..io import atomic_output, file_sha256
from ..onnx.manifest import graph_path, in_group_order, read_manifest


def import_tensorrt() -> ModuleType:
    """`tensorrt`, or a clear error naming what is missing."""
    try:
        import tensorrt as trt
    except ImportError as err:
        raise RuntimeError(
            "TensorRT is not installed: `pip install tqdit-export[trt]` on a machine with an NVIDIA GPU "
            "(the ONNX export and the ORT backend work without it)"
        ) from err
    if not hasattr(trt, "Builder"):
        raise RuntimeError("this TensorRT package has no builder (tensorrt-lean?): install the full `tensorrt`")
    return trt


def trt_major(trt: ModuleType) -> int:
    return int(str(trt.__version__).split(".")[0])


@dataclass(frozen=True)
class BuildSettings:
    """How to build: strongly typed (default) or the weak INT8 path (TensorRT 10.x only)."""

    strongly_typed: bool = True
    fp16_fallback: bool = True  # weakly typed path only: let float layers run in FP16
    workspace_mib: int = 4096
    max_batch: int = 64
    fp8: bool = False  # the graph has float8e4m3fn Q/DQ (weakly typed path: FP8 flag)


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
    flags = [trt.BuilderFlag.FP8 if settings.fp8 else trt.BuilderFlag.INT8]
    if settings.fp16_fallback:
        flags.append(trt.BuilderFlag.FP16)
    return flags


def engine_cache_key(onnx_path: Path, trt_version: str, gpu_name: str, settings: BuildSettings) -> str:
    """Engines depend on the graph, the TensorRT version, the GPU and the build settings."""
    key = json.dumps([file_sha256(onnx_path), trt_version, gpu_name, settings.__dict__], sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:24]


def load_time_group_plugin(trt: ModuleType, plugin_library: str | Path | None = None) -> str:
    """Register TimeGroupQuantize with TensorRT: the C++ library when given (or TQDIT_TRT_PLUGIN_LIB),
    else the `tensorrt.plugin` Python variant. Returns which one."""
    import os

    library = plugin_library or os.environ.get(PLUGIN_LIBRARY_ENV)
    if library:
        load_plugin_library(trt, library)
        return str(library)
    from trt_plugins.python_plugin import register

    register()
    return "trt_plugins.python_plugin"


def build_engine(onnx_path: Path, cache_dir: Path, settings: BuildSettings = BuildSettings(),
                 input_shape: tuple[int, int, int] | None = None, plugin_library: str | Path | None = None,
                 load_plugin: bool = False) -> Path:
    """Build (or reuse from `cache_dir`) the serialized engine of one ONNX graph; returns its path.

    `load_plugin` (plugin layout): register the TimeGroupQuantize plugin before parsing.
    """
    trt = import_tensorrt()
    if load_plugin:
        load_time_group_plugin(trt, plugin_library)
    if not torch.cuda.is_available():
        raise RuntimeError("building a TensorRT engine needs a CUDA GPU; none is visible")
    gpu = torch.cuda.get_device_name(0)
    cache_dir.mkdir(parents=True, exist_ok=True)
    plan = cache_dir / f"{onnx_path.stem}-{engine_cache_key(onnx_path, trt.__version__, gpu, settings)}.plan"
    if plan.exists():
        return plan
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
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


class TrtBackend:
    """Denoiser over TensorRT engines built from an export folder (per-group or single layout).

    Inputs and outputs are torch CUDA tensors bound by address; per-group engines share one
    user-managed activation buffer, sized to the largest engine.
    """

    name = "trt"

    def __init__(self, export_dir: str | Path, cache_dir: str | Path | None = None,
                 settings: BuildSettings = BuildSettings()) -> None:
        trt = import_tensorrt()
        export_dir = Path(export_dir)
        self.manifest = read_manifest(export_dir)
        self.groups = TimeGroups(tuple(self.manifest["time_groups"]))
        cache_dir = Path(cache_dir) if cache_dir else export_dir / "engines"
        graphs = in_group_order(self.manifest["graphs"], export_dir)
        plugin = self.manifest["layout"] == "plugin"
        plans = [build_engine(graph_path(export_dir, g), cache_dir, settings, load_plugin=plugin) for g in graphs]
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engines = [runtime.deserialize_cuda_engine(p.read_bytes()) for p in plans]
        self.contexts, self.activations = shared_memory_contexts(
            trt, self.engines, lambda n: (buf := torch.empty(n, dtype=torch.uint8, device="cuda"), buf.data_ptr()))
        self.single = self.manifest["layout"] in ("single", "plugin")
        self.max_batch = settings.max_batch
        self.stream = torch.cuda.Stream()

    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # CFG doubles the batch: anything above the profile's largest batch runs in pieces.
        parts = [self._run(x[s], t[s], y[s]) for s in batch_chunks(len(x), self.max_batch)]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _run(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        g = self.groups.group_of(t)
        context = self.contexts[0] if self.single else self.contexts[g]
        feeds = {"x": x.float().cuda().contiguous(), "t": t.long().cuda().contiguous(),
                 "y": y.long().cuda().contiguous()}
        if self.single:
            feeds["time_group"] = torch.tensor(g, dtype=torch.long, device="cuda")
        for name, tensor in feeds.items():
            set_input_shape(context, name, tuple(tensor.shape))
            context.set_tensor_address(name, tensor.data_ptr())
        out = torch.empty(output_shape(context), dtype=torch.float32, device="cuda")
        context.set_tensor_address("out", out.data_ptr())
        if not context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        self.stream.synchronize()
        return out
