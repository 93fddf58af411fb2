"""The one TensorRT runner: engines of an export or build folder, run per time group (no torch here).

Both runtimes use it: `TrtDenoiser` below (numpy + pycuda, the Jetson path, reading a build
folder written by `tqdit build`) and `engines.trt_backend.TrtBackend` (torch CUDA tensors).
They differ only in how memory is allocated and copied (`DeviceIO`); the choice of engine
per time group, the batch split at the optimisation profile's maximum, the shape checks and
the shared activation memory are written once, in `TrtRunner`.

Per-group engines share one activation buffer (user-managed device memory, sized to the
largest engine), so G engines cost the activation memory of one. Plugin-layout engines need
the TimeGroupQuantize plugin registered first (`load_time_group_plugin`).
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from calibration.time_groups import TimeGroups

from ..onnx.manifest import BUILD_MANIFEST, BuildManifest, Layout, verified_bytes

PLUGIN_LIBRARY_ENV = "TQDIT_TRT_PLUGIN_LIB"


def import_tensorrt(builder: bool = False) -> ModuleType:
    """`tensorrt`, or an error naming what is missing. `builder=True`: the full package that builds engines."""
    try:
        import tensorrt as trt
    except ImportError as err:
        # The lean and dispatch runtimes are other modules (tensorrt_lean, tensorrt_dispatch):
        # they run version-compatible engines but build none, so they are named, not used.
        others = [m for m in ("tensorrt_lean", "tensorrt_dispatch") if importlib.util.find_spec(m) is not None]
        found = f" (only {', '.join(others)} is installed: a runtime without the builder)" if others else ""
        raise RuntimeError(
            f"TensorRT is not installed{found}: `pip install 'tqdit-export[trt-cu12]'` (TensorRT 10.x) or "
            "'[trt-cu13]' (TensorRT 11) on a machine with an NVIDIA GPU; the ONNX export and the ONNX Runtime "
            "backend work without it") from err
    if builder and not hasattr(trt, "Builder"):
        raise RuntimeError(f"this TensorRT package ({getattr(trt, '__file__', 'tensorrt')}) has no builder: "
                           "install the full `tensorrt` to build engines")
    return trt


def trt_major(trt: ModuleType) -> int:
    """The major version of a `tensorrt` module (10 or 11)."""
    return int(str(trt.__version__).split(".")[0])


def _existing_library(library: str | Path) -> Path:
    if not Path(library).is_file():
        raise FileNotFoundError(f"plugin library {library} does not exist; build it with "
                                "`cmake -S trt_plugins/csrc -B build/trt_plugins && cmake --build build/trt_plugins`")
    return Path(library)


def load_plugin_library(trt: ModuleType, library: str | Path) -> None:
    """Load libtqdit_trt_plugins.so (the C++ TimeGroupQuantize) into TensorRT's plugin registry."""
    _existing_library(library)
    if trt.get_plugin_registry().load_library(str(library)) is None:
        raise RuntimeError(f"TensorRT could not load the plugin library {library} (built for another TensorRT "
                           "or CUDA?); see the log above")


def chosen_plugin_library(plugin_library: str | Path | None = None) -> Path | None:
    """The C++ plugin library asked for: `plugin_library`, else $TQDIT_TRT_PLUGIN_LIB, else None
    (the `tensorrt.plugin` Python variant). A library that does not exist is refused here."""
    library = plugin_library or os.environ.get(PLUGIN_LIBRARY_ENV)
    return _existing_library(library) if library else None


def load_time_group_plugin(trt: ModuleType, plugin_library: str | Path | None = None,
                           python_fallback: bool = True) -> str:
    """Register TimeGroupQuantize: the C++ library when given (or $TQDIT_TRT_PLUGIN_LIB), else the
    `tensorrt.plugin` Python variant (TensorRT >= 10.7; its kernel runs with torch, so the torch-free
    edge passes `python_fallback=False`). Returns which one was registered."""
    library = chosen_plugin_library(plugin_library)
    if library:
        load_plugin_library(trt, library)
        return str(library)
    if not python_fallback:
        raise RuntimeError("plugin-layout engines need the TimeGroupQuantize plugin: pass plugin_library= or "
                           f"set {PLUGIN_LIBRARY_ENV} to libtqdit_trt_plugins.so (cmake -S trt_plugins/csrc)")
    from trt_plugins.python_plugin import register

    register()
    return "trt_plugins.python_plugin"


def batch_chunks(n: int, max_batch: int) -> list[slice]:
    """Slices of a batch of `n` rows, each at most `max_batch` (the engine's optimisation
    profile maximum): a larger batch is run in profile-sized pieces, never sent whole."""
    if n < 1:
        raise ValueError(f"batch of {n}: nothing to run")
    if max_batch < 1:
        raise ValueError(f"an optimisation profile's largest batch must be at least 1, not {max_batch}")
    return [slice(start, min(start + max_batch, n)) for start in range(0, n, max_batch)]


def set_input_shape(context: Any, name: str, shape: tuple[int, ...]) -> None:
    """IExecutionContext.set_input_shape, whose False (a shape outside the profile) must not pass."""
    if not context.set_input_shape(name, tuple(shape)):
        raise RuntimeError(f"TensorRT refused input {name!r} of shape {tuple(shape)}: outside the engine's "
                           "optimisation profile (rebuild with a larger --target batch)")


def output_shape(context: Any, name: str = "out") -> tuple[int, ...]:
    """The output's shape once every input shape is set; a -1 left in it is an error, not an allocation."""
    shape = tuple(context.get_tensor_shape(name))
    if any(d < 0 for d in shape):
        raise RuntimeError(f"TensorRT left output {name!r} with an unknown dimension {shape}: an input shape is unset")
    return shape


def engine_device_memory(engine: Any) -> int:
    """Activation memory one execution context of `engine` needs. TensorRT 10 has
    device_memory_size (deprecated in 10.1 for device_memory_size_v2); TensorRT 11 only the _v2."""
    if hasattr(engine, "device_memory_size_v2"):
        return int(engine.device_memory_size_v2)
    return int(engine.device_memory_size)


def shared_memory_contexts(trt: ModuleType, engines: Sequence[Any],
                           allocate: Callable[[int], tuple[object, int]]) -> tuple[list, object]:
    """One execution context per engine, all on one user-managed activation buffer sized to the
    largest engine, so G group engines cost the activation memory of one.

    `allocate(nbytes) -> (buffer, device address)`; the buffer must outlive the contexts.
    """
    size = max(max(engine_device_memory(e) for e in engines), 1)
    buffer, address = allocate(size)
    contexts = []
    for engine in engines:
        context = engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
        if context is None:
            raise RuntimeError("TensorRT could not create an execution context (out of GPU memory?)")
        if hasattr(context, "set_device_memory"):  # TensorRT >= 10.1
            context.set_device_memory(address, size)
        else:
            context.device_memory = address
        contexts.append(context)
    return contexts, buffer


def deserialize_engines(trt: ModuleType, plans: Sequence[tuple[str, bytes]]) -> tuple[Any, list]:
    """(runtime, ICudaEngines) of serialized plans [(name, bytes)]; a plan TensorRT rejects (None)
    is named. The caller keeps the runtime as long as the engines (TensorRT's ownership rule)."""
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engines = []
    for name, data in plans:
        engine = runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise RuntimeError(f"{name}: TensorRT {trt.__version__} could not deserialize this engine (built with "
                               "another TensorRT version or for another GPU?); rebuild it with `tqdit build`")
        engines.append(engine)
    return runtime, engines


class DeviceIO(Protocol):
    """How a runner gets its inputs onto the GPU and its output back: numpy + pycuda, or torch."""

    def allocate(self, nbytes: int) -> tuple[object, int]:
        """A device buffer of `nbytes` and its address (the shared activation memory)."""

    def stage(self, name: str, value: Any, dtype: str) -> tuple[tuple[int, ...], int]:
        """Put input `name` (an array or tensor of any dtype) on the device as `dtype`: (shape, address)."""

    def output(self, shape: tuple[int, ...]) -> tuple[Any, int]:
        """An uninitialised float32 output of `shape` and its device address."""

    def stream(self) -> int:
        """The CUDA stream to enqueue on."""

    def finish(self, out: Any) -> Any:
        """The output as the caller receives it, once the enqueued work is done (or ordered)."""

    def concat(self, parts: list) -> Any:
        """The outputs of a batch run in pieces, joined along the batch axis."""


class TrtRunner:
    """`runner(x, t, y) -> out` over the engines of one export: the engine of t's time group
    (per-group layout) or one engine fed the group (single, plugin layouts)."""

    def __init__(self, trt: ModuleType, engines: Sequence[Any], groups: TimeGroups, layout: Layout,
                 max_batch: int, io: DeviceIO) -> None:
        if layout.feeds_time_group and len(engines) != 1:
            raise ValueError(f"a {layout.value} export has one engine, not {len(engines)}")
        if not layout.feeds_time_group and len(engines) != groups.num_groups:
            raise ValueError(f"a per-group export has one engine per time group ({groups.num_groups}), "
                             f"not {len(engines)}")
        self.engines, self.groups, self.layout, self.max_batch, self.io = list(engines), groups, layout, max_batch, io
        self.contexts, self.activations = shared_memory_contexts(trt, self.engines, io.allocate)

    def __call__(self, x: Any, t: Any, y: Any) -> Any:
        # CFG doubles the batch: anything above the profile's largest batch runs in pieces.
        parts = [self._run(x[s], t[s], y[s]) for s in batch_chunks(len(x), self.max_batch)]
        return parts[0] if len(parts) == 1 else self.io.concat(parts)

    def _run(self, x: Any, t: Any, y: Any) -> Any:
        g = self.groups.group_of(t)
        context = self.contexts[0] if self.layout.feeds_time_group else self.contexts[g]
        feeds = [("x", x, "float32"), ("t", t, "int64"), ("y", y, "int64")]
        if self.layout.feeds_time_group:
            feeds.append(("time_group", np.array(g, dtype=np.int64), "int64"))
        for name, value, dtype in feeds:
            shape, address = self.io.stage(name, value, dtype)
            set_input_shape(context, name, shape)
            context.set_tensor_address(name, address)
        out, address = self.io.output(output_shape(context))
        context.set_tensor_address("out", address)
        if not context.execute_async_v3(self.io.stream()):
            raise RuntimeError("TensorRT execution failed; see the log above")
        return self.io.finish(out)


class PycudaIO:
    """numpy in, numpy out, through pycuda device buffers on the runner's own stream."""

    def __init__(self, cuda: ModuleType) -> None:
        self.cuda = cuda
        self._stream = cuda.Stream()
        self._buffers: dict[str, tuple[int, object]] = {}
        self._pending: list = []  # host arrays whose asynchronous copies are in flight
        self._out_buffer = None

    def _device(self, name: str, nbytes: int):
        """A device buffer for tensor `name`, grown when a larger batch arrives."""
        size, buf = self._buffers.get(name, (0, None))
        if nbytes > size:
            buf = self.cuda.mem_alloc(max(nbytes, 1))
            self._buffers[name] = (nbytes, buf)
        return buf

    def allocate(self, nbytes: int) -> tuple[object, int]:
        buf = self.cuda.mem_alloc(nbytes)
        return buf, int(buf)

    def stage(self, name: str, value: Any, dtype: str) -> tuple[tuple[int, ...], int]:
        host = np.ascontiguousarray(value, dtype=dtype)
        buf = self._device(name, host.nbytes)
        self.cuda.memcpy_htod_async(buf, host, self._stream)
        self._pending.append(host)  # the copy reads it later: keep it alive until finish()
        return host.shape, int(buf)

    def output(self, shape: tuple[int, ...]) -> tuple[np.ndarray, int]:
        out = np.empty(shape, dtype=np.float32)
        self._out_buffer = self._device("out", out.nbytes)
        return out, int(self._out_buffer)

    def stream(self) -> int:
        return self._stream.handle

    def finish(self, out: np.ndarray) -> np.ndarray:
        self.cuda.memcpy_dtoh_async(out, self._out_buffer, self._stream)
        self._stream.synchronize()
        self._pending.clear()
        return out

    def concat(self, parts: list) -> np.ndarray:
        return np.concatenate(parts)


def read_build(build_dir: str | Path) -> BuildManifest:
    """The build manifest of a `tqdit build` folder, or a clear error when it has no engines."""
    return BuildManifest.read(build_dir)


class TrtDenoiser:
    """`denoiser(x, t, y) -> out` on numpy arrays over the engines of a `tqdit build` folder."""

    def __init__(self, build_dir: str | Path, plugin_library: str | Path | None = None) -> None:
        self.build = read_build(build_dir)
        try:
            import pycuda.autoinit  # noqa: F401  (creates the CUDA context)
            import pycuda.driver as cuda
        except ImportError as err:
            raise RuntimeError("the edge runtime needs pycuda (pip install pycuda) beside TensorRT "
                               "(JetPack ships TensorRT)") from err
        trt = import_tensorrt()
        if self.build.layout is Layout.PLUGIN:  # the library given, else the build's own copy
            load_time_group_plugin(trt, plugin_library or self.build.plugin_library(), python_fallback=False)
        folder = self.build.folder
        self.runtime, engines = deserialize_engines(trt, [(str(folder / e["file"]),
                                                           verified_bytes(folder, e["file"], e.get("sha256")))
                                                          for e in self.build.engines])
        self.runner = TrtRunner(trt, engines, self.build.time_groups, self.build.layout, self.build.max_batch,
                                PycudaIO(cuda))

    def __call__(self, x: np.ndarray, t: np.ndarray, y: np.ndarray) -> np.ndarray:
        return self.runner(x, t, y)
