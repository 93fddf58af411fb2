"""TensorRT build and runtime: pure helpers here, a real build where TensorRT and a GPU exist.

The build settings against the real bindings of each TensorRT version are in
tests/trt_bindings (no fake TensorRT module stands in for the real one).
"""
from pathlib import Path

import pytest
import torch

from tqdit_export.engines.trt_build import (
    BuildSettings,
    check_precision_supported,
    engine_cache_key,
    import_tensorrt,
    version_tuple,
)
from tqdit_export.hardware import CudaGpu


def test_engine_cache_key_changes_with_version_gpu_and_settings(tmp_path):
    graph = tmp_path / "g.onnx"
    graph.write_bytes(b"graph")
    key = engine_cache_key(graph, "10.13.0", "H100", BuildSettings())
    assert key == engine_cache_key(graph, "10.13.0", "H100", BuildSettings())
    assert key != engine_cache_key(graph, "10.3.0", "H100", BuildSettings())
    assert key != engine_cache_key(graph, "10.13.0", "Orin", BuildSettings())
    assert key != engine_cache_key(graph, "10.13.0", "H100", BuildSettings(strongly_typed=False))
    graph.write_bytes(b"other graph")
    assert key != engine_cache_key(graph, "10.13.0", "H100", BuildSettings())


def test_missing_tensorrt_is_a_clear_error():
    try:
        import tensorrt  # noqa: F401
        has_builder = hasattr(tensorrt, "Builder")
    except ImportError:
        has_builder = False
    if has_builder:
        pytest.skip("full TensorRT is installed")
    with pytest.raises(RuntimeError, match="TensorRT"):
        import_tensorrt()


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_trt_engines_match_onnx_runtime(tmp_path, make_tiny_dit):
    trt = pytest.importorskip("tensorrt")
    if not hasattr(trt, "Builder") or not torch.cuda.is_available():
        pytest.skip("needs the full TensorRT and a CUDA GPU")
    from calibration.calibrate import CalibrationConfig
    from tqdit_export.engines.ort_backend import OrtBackend
    from tqdit_export.engines.trt_backend import TrtBackend
    from tqdit_export.onnx import export_dit
    from tqdit_export.quant import calibrate_dit

    model = make_tiny_dit()
    record = calibrate_dit(model, CalibrationConfig(num_groups=2, rounds=1), samples_per_group=2,
                           trajectory_steps=10, progress=False)
    export_dit(model, record, tmp_path / "onnx", weight_reduce_range=False)
    x, t, y = torch.randn(4, 1, 8, 8), torch.full((4,), 700), torch.tensor([1, 2, 10, 10])
    got = TrtBackend(tmp_path / "onnx")(x, t, y).cpu()
    ref = OrtBackend(tmp_path / "onnx")(x, t, y)
    assert float((got - ref).norm() / ref.norm()) < 2e-2


def test_engines_and_graphs_are_taken_in_numeric_time_group_order():
    # With G >= 11 a string order puts group 10 after group 1; every runtime uses this order.
    from tqdit_export.onnx.manifest import in_group_order

    entries = [{"file": f"group_{g:02d}.onnx", "time_group": g} for g in (10, 2, 0, 11, 1, 3, 4, 5, 6, 7, 8, 9)]
    assert [e["time_group"] for e in in_group_order(entries, "build")] == list(range(12))
    assert in_group_order([{"file": "single.onnx", "time_group": "input"}], "x")[0]["file"] == "single.onnx"
    for bad in ([0, 0, 1], [0, 2], [0, "1"]):
        with pytest.raises(ValueError, match="each once"):
            in_group_order([{"time_group": g} for g in bad], "build")


def test_cmake_builds_the_kernels_for_every_architecture_it_names(tmp_path):
    # enable_language(CUDA) defines CMAKE_CUDA_ARCHITECTURES itself (nvcc's default, e.g. sm_75):
    # a default set after it never applies. Configure for real and read the kernel's flags.
    import re
    import shutil
    import subprocess

    if not shutil.which("cmake") or not shutil.which("nvcc"):
        pytest.skip("needs cmake and nvcc")
    source = Path(__file__).resolve().parents[2] / "trt_plugins" / "csrc"
    subprocess.run(["cmake", "-S", str(source), "-B", str(tmp_path)], check=True, capture_output=True)
    flags = (tmp_path / "CMakeFiles" / "tqdit_kernels.dir" / "flags.make").read_text()
    assert set(re.findall(r"sm_(\d+)", flags)) == {"80", "86", "87", "89", "90"}


def test_batches_above_the_profile_maximum_run_in_profile_sized_pieces():
    # The edge defaults (--num 10, cfg) send 20 rows; an orin engine's profile ends at 8.
    from tqdit_export.edge.trt_runtime import batch_chunks
    from tqdit_export.targets import TARGETS

    chunks = batch_chunks(20, TARGETS["orin"].max_batch)
    assert [(s.start, s.stop) for s in chunks] == [(0, 8), (8, 16), (16, 20)]
    assert [(s.start, s.stop) for s in batch_chunks(64, 64)] == [(0, 64)]
    rows = list(range(131))
    assert sum((rows[s] for s in batch_chunks(131, TARGETS["orin-nano"].max_batch)), []) == rows
    with pytest.raises(ValueError):
        batch_chunks(0, 8)
    with pytest.raises(ValueError):
        batch_chunks(4, 0)


def test_fp8_needs_tensorrt_10_6_and_fp8_tensor_cores():
    assert version_tuple("10.13.3.9") == (10, 13, 3, 9) and version_tuple("10.7.0.post1") == (10, 7, 0)
    check_precision_supported("10.6.0", "fp8", CudaGpu("NVIDIA H100", "9.0", "nvidia-smi"))
    check_precision_supported("10.3.0", "int8")
    with pytest.raises(RuntimeError, match="TensorRT >= 10.6"):
        check_precision_supported("10.3.0", "fp8")
    with pytest.raises(RuntimeError, match="no FP8 tensor cores"):
        check_precision_supported("10.13.3", "fp8", CudaGpu("NVIDIA A100", "8.0", "pycuda"))


def test_the_gpu_is_found_without_torch(monkeypatch, tmp_path):
    # Review defect 3: a CPU torch saw no GPU, so `tqdit build` wrote ONNX only on a GPU machine.
    # Here nvidia-smi is the only probe that answers; torch is never asked.
    import stat

    from tqdit_export import hardware

    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'NVIDIA H100 80GB HBM3, 9.0'\n")
    smi.chmod(smi.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}:{__import__('os').environ['PATH']}")

    def torch_must_not_decide():
        raise AssertionError("torch was asked before nvidia-smi")

    probes = [(n, torch_must_not_decide if n == "torch" else p) for n, p in hardware.GPU_PROBES]
    monkeypatch.setattr(hardware, "GPU_PROBES", tuple(probes))
    gpus = hardware.cuda_gpus()
    assert gpus == [CudaGpu("NVIDIA H100 80GB HBM3", "9.0", "nvidia-smi")] and gpus[0].has_fp8


def test_without_tensorrt_the_build_says_why_and_never_asks_torch(monkeypatch):
    from tqdit_export import build

    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed")
    except ImportError:
        pass
    monkeypatch.setattr(torch.cuda, "is_available", lambda: (_ for _ in ()).throw(AssertionError("torch asked")))
    assert "TensorRT is not installed" in build._engines_unavailable_reason()


class _RecordingContext:
    """An execution context's calls, recorded (the runner's bookkeeping is checked, not TensorRT)."""

    def __init__(self, name, log):
        self.name, self.log, self.shapes = name, log, {}

    def set_input_shape(self, name, shape):
        self.shapes[name] = shape
        return shape[0] <= 8 if shape else True  # a profile that ends at batch 8

    def set_tensor_address(self, name, address):
        pass

    def get_tensor_shape(self, name):
        return self.shapes["x"]

    def execute_async_v3(self, stream):
        self.log.append((self.name, self.shapes["x"][0], self.shapes.get("time_group")))
        return True

    def set_device_memory(self, address, size):
        self.log.append(("memory", size))


class _RecordingEngine:
    def __init__(self, name, size, log):
        self.name, self.device_memory_size_v2, self.log = name, size, log

    def create_execution_context(self, strategy):
        return _RecordingContext(self.name, self.log)


class _HostIO:
    """numpy on the host standing in for device memory: the runner's logic, without a GPU."""

    def allocate(self, nbytes):
        return bytearray(nbytes), 0

    def stage(self, name, value, dtype):
        import numpy as np

        return np.asarray(value, dtype=dtype).shape, 0

    def output(self, shape):
        import numpy as np

        return np.zeros(shape, dtype=np.float32), 0

    def stream(self):
        return 0

    def finish(self, out):
        return out

    def concat(self, parts):
        import numpy as np

        return np.concatenate(parts)


def test_one_runner_picks_the_group_engine_splits_batches_and_shares_memory():
    # The runner both runtimes use (numpy+pycuda on the edge, torch on the host): engine per
    # time group, the batch cut at the profile's maximum, one activation buffer of the largest size.
    import numpy as np
    from types import SimpleNamespace

    from calibration.time_groups import TimeGroups
    from tqdit_export.edge.trt_runtime import TrtRunner
    from tqdit_export.onnx.manifest import Layout

    log = []
    trt = SimpleNamespace(ExecutionContextAllocationStrategy=SimpleNamespace(USER_MANAGED=2))
    engines = [_RecordingEngine(f"group{g}", 100 * (g + 1), log) for g in range(2)]
    runner = TrtRunner(trt, engines, TimeGroups((0, 500, 1000)), Layout.PER_GROUP, 8, _HostIO())
    assert log == [("memory", 200), ("memory", 200)]
    log.clear()
    out = runner(np.zeros((20, 1, 8, 8)), np.full(20, 700), np.zeros(20, dtype=np.int64))
    assert out.shape == (20, 1, 8, 8)
    assert log == [("group1", 8, None), ("group1", 8, None), ("group1", 4, None)]
    single = TrtRunner(trt, engines[:1], TimeGroups((0, 500, 1000)), Layout.SINGLE, 8, _HostIO())
    log.clear()
    single(np.zeros((3, 1, 8, 8)), np.full(3, 10), np.zeros(3, dtype=np.int64))
    assert log == [("group0", 3, ())]  # the group is fed as a scalar input
    with pytest.raises(ValueError, match="one engine per time group"):
        TrtRunner(trt, engines[:1], TimeGroups((0, 500, 1000)), Layout.PER_GROUP, 8, _HostIO())


def test_a_lean_runtime_alone_is_named_in_the_error(tmp_path, monkeypatch):
    # tensorrt-lean installs the module tensorrt_lean, never `tensorrt`: the hint must look for it.
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed")
    except ImportError:
        pass
    (tmp_path / "tensorrt_lean").mkdir()
    (tmp_path / "tensorrt_lean" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(RuntimeError, match="only tensorrt_lean is installed"):
        import_tensorrt(builder=True)
