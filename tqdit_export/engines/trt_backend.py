"""TensorRT backend for the torch sampler: the engines of an export folder, on torch CUDA tensors.

The execution is `edge.trt_runtime.TrtRunner`, the one runner both runtimes share; this
module only says how torch tensors reach the engines (`TorchCudaIO`) and builds (or reuses
from the cache) the engines of the export's graphs (`trt_build.build_engine`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..edge.trt_runtime import TrtRunner, deserialize_engines, import_tensorrt
from ..onnx.manifest import ExportManifest, Layout, graph_path
from .trt_build import BuildSettings, build_engine


class TorchCudaIO:
    """torch tensors in and out, enqueued on the caller's current CUDA stream.

    Enqueuing on the caller's stream (not a private one) orders the engine after whatever
    produced the inputs and before whatever reads the output, as any torch op is ordered,
    with no synchronisation of the host.
    """

    def __init__(self) -> None:
        self._keep: list[torch.Tensor] = []  # inputs staged for the call in flight

    def allocate(self, nbytes: int) -> tuple[torch.Tensor, int]:
        buf = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
        return buf, buf.data_ptr()

    def stage(self, name: str, value: Any, dtype: str) -> tuple[tuple[int, ...], int]:
        tensor = torch.as_tensor(value).to(device="cuda", dtype=getattr(torch, dtype)).contiguous()
        self._keep.append(tensor)
        return tuple(tensor.shape), tensor.data_ptr()

    def output(self, shape: tuple[int, ...]) -> tuple[torch.Tensor, int]:
        out = torch.empty(shape, dtype=torch.float32, device="cuda")
        return out, out.data_ptr()

    def stream(self) -> int:
        return torch.cuda.current_stream().cuda_stream

    def finish(self, out: torch.Tensor) -> torch.Tensor:
        # The staged inputs were allocated on this stream: the caching allocator does not
        # reuse their memory before the work queued on it (the engine) has run.
        self._keep.clear()
        return out

    def concat(self, parts: list) -> torch.Tensor:
        return torch.cat(parts)


class TrtBackend:
    """Denoiser over TensorRT engines built from an export folder (per-group, single or plugin layout).

    Inputs and outputs are torch CUDA tensors bound by address; per-group engines share one
    user-managed activation buffer, sized to the largest engine.
    """

    name = "trt"

    def __init__(self, export_dir: str | Path, cache_dir: str | Path | None = None,
                 settings: BuildSettings = BuildSettings()) -> None:
        trt = import_tensorrt(builder=True)
        if not torch.cuda.is_available():
            raise RuntimeError("--backend trt runs the engines on torch CUDA tensors, and this torch sees no GPU "
                               f"(torch {torch.__version__}); install a CUDA build of torch, or run the engines "
                               "without torch: `tqdit build` then `python -m tqdit_export.edge --engines DIR`")
        self.manifest = ExportManifest.read(export_dir)
        cache_dir = Path(cache_dir) if cache_dir else self.manifest.folder / "engines"
        plugin = self.manifest.layout is Layout.PLUGIN
        plans = [build_engine(graph_path(self.manifest.folder, g), cache_dir, settings, load_plugin=plugin)
                 for g in self.manifest.graphs]
        self.runtime, engines = deserialize_engines(trt, [(str(p), p.read_bytes()) for p in plans])
        self.runner = TrtRunner(trt, engines, self.manifest.time_groups, self.manifest.layout, settings.max_batch,
                                TorchCudaIO())

    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.runner(x, t, y)
