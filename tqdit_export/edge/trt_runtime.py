"""TensorRT engines run with pycuda and numpy only (no torch): the Jetson path.

Reads a build folder written by `tqdit build` (its `build.json` names the engines, the
layout and the time groups). Per-group engines share one activation buffer
(user-managed device memory, sized to the largest engine), so G engines cost the
activation memory of one. Plugin-layout engines need the TimeGroupQuantize plugin
library loaded first (`plugin_library=` or TQDIT_TRT_PLUGIN_LIB).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from calibration.time_groups import TimeGroups

from ..onnx.manifest import in_group_order, verified_bytes

BUILD_MANIFEST = "build.json"


PLUGIN_LIBRARY_ENV = "TQDIT_TRT_PLUGIN_LIB"


def load_plugin_library(trt, library: str | Path) -> None:
    """Load libtqdit_trt_plugins.so (the C++ TimeGroupQuantize) into TensorRT's plugin registry."""
    if not Path(library).exists():
        raise FileNotFoundError(f"plugin library {library} does not exist; build it with "
                                "`cmake -S trt_plugins/csrc -B build/trt_plugins && cmake --build build/trt_plugins`")
    trt.get_plugin_registry().load_library(str(library))


def batch_chunks(n: int, max_batch: int) -> list[slice]:
    """Slices of a batch of `n` rows, each at most `max_batch` (the engine's optimisation
    profile maximum): a larger batch is run in profile-sized pieces, never sent whole."""
    if n < 1:
        raise ValueError(f"batch of {n}: nothing to run")
    if max_batch < 1:
        raise ValueError(f"an optimisation profile's largest batch must be at least 1, not {max_batch}")
    return [slice(start, min(start + max_batch, n)) for start in range(0, n, max_batch)]


def set_input_shape(context, name: str, shape: tuple[int, ...]) -> None:
    """IExecutionContext.set_input_shape, whose False (a shape outside the profile) must not pass."""
    if not context.set_input_shape(name, tuple(shape)):
        raise RuntimeError(f"TensorRT refused input {name!r} of shape {tuple(shape)}: outside the engine's "
                           "optimisation profile (rebuild with a larger --target batch)")


def output_shape(context, name: str = "out") -> tuple[int, ...]:
    """The output's shape once every input shape is set; a -1 left in it is an error, not an allocation."""
    shape = tuple(context.get_tensor_shape(name))
    if any(d < 0 for d in shape):
        raise RuntimeError(f"TensorRT left output {name!r} with an unknown dimension {shape}: an input shape is unset")
    return shape


def shared_memory_contexts(trt, engines: list, allocate) -> tuple[list, object]:
    """One execution context per engine, all on one user-managed activation buffer sized to the
    largest engine, so G group engines cost the activation memory of one.

    `allocate(nbytes) -> (buffer, device address)`; the buffer must outlive the contexts.
    """
    size = max(max(getattr(e, "device_memory_size_v2", None) or e.device_memory_size for e in engines), 1)
    buffer, address = allocate(size)
    contexts = []
    for engine in engines:
        context = engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
        if hasattr(context, "set_device_memory"):  # TensorRT >= 10.1
            context.set_device_memory(address, size)
        else:
            context.device_memory = address
        contexts.append(context)
    return contexts, buffer


def read_build(build_dir: str | Path) -> dict:
    """The build manifest, or a clear error when the folder has no engines."""
    path = Path(build_dir) / BUILD_MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{build_dir}: no {BUILD_MANIFEST}; create it with `tqdit build`")
    try:
        build = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable build manifest ({err}); build the folder again with "
                         "`tqdit build`") from err
    if not isinstance(build, dict):
        raise ValueError(f"{path}: not a build manifest (a JSON {type(build).__name__}); build the folder again "
                         "with `tqdit build`")
    if not build.get("engines"):
        raise RuntimeError(f"{build_dir}: the build has no engines ({build.get('status', 'unknown status')}); "
                           "rerun `tqdit build` on a machine with TensorRT and a GPU, or run its graphs with "
                           f"ONNX Runtime (--onnx {Path(build_dir) / 'onnx'})")
    return build


class TrtDenoiser:
    """`denoiser(x, t, y) -> out` on numpy arrays over the engines of a `tqdit build` folder."""

    def __init__(self, build_dir: str | Path, plugin_library: str | Path | None = None) -> None:
        self.build = read_build(build_dir)
        try:
            import pycuda.autoinit  # noqa: F401  (creates the CUDA context)
            import pycuda.driver as cuda
            import tensorrt as trt
        except ImportError as err:
            raise RuntimeError("the edge runtime needs tensorrt and pycuda (JetPack ships TensorRT; "
                               "pip install pycuda)") from err
        self.cuda, build_dir = cuda, Path(build_dir)
        self.groups = TimeGroups(tuple(self.build["time_groups"]))
        self.max_batch = int(self.build.get("target", {}).get("max_batch") or 1)
        self.feeds_group = self.build["layout"] in ("single", "plugin")
        logger = trt.Logger(trt.Logger.WARNING)
        if self.build["layout"] == "plugin":
            library = plugin_library or os.environ.get(PLUGIN_LIBRARY_ENV)
            if not library:
                raise RuntimeError("plugin-layout engines need the TimeGroupQuantize plugin: pass plugin_library= or "
                                   f"set {PLUGIN_LIBRARY_ENV} to libtqdit_trt_plugins.so (cmake -S trt_plugins/csrc)")
            load_plugin_library(trt, library)
        runtime = trt.Runtime(logger)
        entries = in_group_order(self.build["engines"], build_dir)
        self.engines = [runtime.deserialize_cuda_engine(verified_bytes(build_dir, e["file"], e.get("sha256")))
                        for e in entries]
        if any(e is None for e in self.engines):
            raise RuntimeError(f"{build_dir}: an engine did not deserialize (built for another TensorRT or GPU?)")
        self.contexts, self.activations = shared_memory_contexts(
            trt, self.engines, lambda n: (buf := cuda.mem_alloc(n), int(buf)))
        self.stream = cuda.Stream()
        self._buffers: dict[str, tuple[int, object]] = {}

    def _device(self, name: str, nbytes: int):
        """A device buffer for tensor `name`, grown when a larger batch arrives."""
        size, buf = self._buffers.get(name, (0, None))
        if nbytes > size:
            buf = self.cuda.mem_alloc(max(nbytes, 1))
            self._buffers[name] = (nbytes, buf)
        return buf

    def __call__(self, x: np.ndarray, t: np.ndarray, y: np.ndarray) -> np.ndarray:
        # CFG doubles the batch: anything above the profile's largest batch runs in pieces.
        parts = [self._run(x[s], t[s], y[s]) for s in batch_chunks(len(x), self.max_batch)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _run(self, x: np.ndarray, t: np.ndarray, y: np.ndarray) -> np.ndarray:
        g = self.groups.group_of(t)
        context = self.contexts[0] if len(self.contexts) == 1 else self.contexts[g]
        feeds = {"x": np.ascontiguousarray(x, dtype=np.float32), "t": np.ascontiguousarray(t, dtype=np.int64),
                 "y": np.ascontiguousarray(y, dtype=np.int64)}
        if self.feeds_group:
            feeds["time_group"] = np.array(g, dtype=np.int64)
        for name, host in feeds.items():
            buf = self._device(name, host.nbytes)
            self.cuda.memcpy_htod_async(buf, host, self.stream)
            set_input_shape(context, name, host.shape)
            context.set_tensor_address(name, int(buf))
        out = np.empty(output_shape(context), dtype=np.float32)
        out_buf = self._device("out", out.nbytes)
        context.set_tensor_address("out", int(out_buf))
        if not context.execute_async_v3(self.stream.handle):
            raise RuntimeError("TensorRT execution failed")
        self.cuda.memcpy_dtoh_async(out, out_buf, self.stream)
        self.stream.synchronize()
        return out
