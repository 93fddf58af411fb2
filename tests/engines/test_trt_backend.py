"""TensorRT backend: version-dependent build settings (pure), and a real build where TensorRT and a GPU exist."""
from types import SimpleNamespace

from pathlib import Path

import pytest
import torch

from tqdit_export.engines.trt_backend import (
    BuildSettings,
    builder_flags,
    engine_cache_key,
    import_tensorrt,
    network_flags,
)


def fake_trt(version: str):
    return SimpleNamespace(__version__=version, NetworkDefinitionCreationFlag=SimpleNamespace(STRONGLY_TYPED=1),
                           BuilderFlag=SimpleNamespace(INT8="INT8", FP16="FP16", FP8="FP8"))


def test_tensorrt_10_strongly_typed_by_default():
    trt = fake_trt("10.13.0")
    assert network_flags(trt, BuildSettings()) == 1 << 1
    assert builder_flags(trt, BuildSettings()) == []


def test_jetpack_6_weakly_typed_int8_path():
    trt = fake_trt("10.3.0")
    weak = BuildSettings(strongly_typed=False)
    assert network_flags(trt, weak) == 0
    assert builder_flags(trt, weak) == ["INT8", "FP16"]
    assert builder_flags(trt, BuildSettings(strongly_typed=False, fp16_fallback=False)) == ["INT8"]
    assert builder_flags(trt, BuildSettings(strongly_typed=False, fp8=True)) == ["FP8", "FP16"]
    assert builder_flags(trt, BuildSettings(fp8=True)) == []  # strongly typed: the graph's Q/DQ say FP8


def test_tensorrt_11_has_only_strong_typing():
    trt = fake_trt("11.4.0")
    assert network_flags(trt, BuildSettings()) == 0
    with pytest.raises(ValueError, match="strongly typed"):
        network_flags(trt, BuildSettings(strongly_typed=False))


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
