"""`tqdit build` and `tqdit doctor` on a machine without TensorRT (this one, and CI)."""
import json

import pytest

from tqdit_export.build import ENGINES_MISSING
from tqdit_export.cli import main
from tqdit_export.models import save_dit

try:  # where TensorRT (with its builder) and a GPU are present the build completes instead
    import tensorrt  # noqa: F401
    HAS_TRT = True
except ImportError:
    HAS_TRT = False


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, make_tiny_dit):
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_dit(make_tiny_dit(), path)
    return path


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed: the build does not stop at the ONNX stage")
@pytest.mark.parametrize("target,layout", [("h100", "per-group"), ("orin", "single"), ("h100", "plugin")])
def test_build_writes_onnx_lint_and_manifest_then_stops_clearly(tiny_checkpoint, tmp_path, capsys, target, layout):
    out = tmp_path / "build"
    args = ["build", "--model", str(tiny_checkpoint), "--bits", "W8A8", "--groups", "2", "--samples-per-group", "2",
            "--trajectory-steps", "10", "--rounds", "1", "--target", target, "--out", str(out), "--quiet"]
    if layout == "plugin":
        args += ["--layout", "plugin"]
    assert main(args) == ENGINES_MISSING
    err = capsys.readouterr().err
    assert "TensorRT is not installed" in err and str(out) in err
    info = json.loads((out / "build.json").read_text())
    assert info["status"] == "onnx-only" and info["engines"] == [] and info["layout"] == layout
    assert info["target"]["name"] == target and info["target"]["strongly_typed"] == (target != "orin")
    onnx_manifest = json.loads((out / "onnx" / "manifest.json").read_text())
    assert set(info["inputs"]["onnx_sha256"]) == {g["file"] for g in onnx_manifest["graphs"]}
    assert all((out / "onnx" / f).stat().st_size == n for f, n in info["sizes_bytes"]["onnx"].items())
    assert onnx_manifest["bits"]["weights_in_graph"] == 8  # GPU targets get full 8-bit weights
    # strongly typed targets: float16 float ops (the weakly typed 10.3 network picks FP16 itself)
    assert info["float_precision"] == onnx_manifest["float_precision"] == ("fp32" if target == "orin" else "fp16")
    assert json.loads((out / "lint.json").read_text()).keys() == info["inputs"]["onnx_sha256"].keys()
    assert (out / "record" / "record.json").exists() and len(info["inputs"]["record_sha256"]) == 64


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed")
def test_build_from_an_existing_record_reuses_it(tiny_checkpoint, tmp_path):
    record = tmp_path / "record"
    assert main(["calibrate", "--model", str(tiny_checkpoint), "--bits", "W8A8", "--groups", "2",
                 "--samples-per-group", "2", "--trajectory-steps", "10", "--rounds", "1", "--out", str(record),
                 "--quiet"]) == 0
    out = tmp_path / "build"
    assert main(["build", "--model", str(tiny_checkpoint), "--record", str(record), "--out", str(out)]) == ENGINES_MISSING
    assert (out / "record" / "record.json").read_text() == (record / "record.json").read_text()
    fp8 = tmp_path / "build_fp8"
    assert main(["build", "--model", str(tiny_checkpoint), "--record", str(record), "--target", "l40s",
                 "--precision", "fp8", "--out", str(fp8)]) == ENGINES_MISSING
    assert json.loads((fp8 / "build.json").read_text())["precision"] == "fp8"
    assert json.loads((fp8 / "onnx" / "manifest.json").read_text())["bits"]["weights_dtype"] == "float8e4m3fn"
    # Jetson Orin (Ampere) has no FP8 tensor cores: refused before anything is written
    orin = tmp_path / "build_orin"
    assert main(["build", "--model", str(tiny_checkpoint), "--record", str(record), "--target", "orin",
                 "--precision", "fp8", "--out", str(orin)]) == 2
    assert not orin.exists()


def test_build_refuses_a_record_of_another_model(tiny_checkpoint, tmp_path, make_tiny_dit, capsys):
    other = tmp_path / "other.safetensors"
    save_dit(make_tiny_dit(seed=1), other)
    record = tmp_path / "record"
    assert main(["calibrate", "--model", str(other), "--groups", "2", "--samples-per-group", "2",
                 "--trajectory-steps", "10", "--rounds", "1", "--out", str(record), "--quiet"]) == 0
    out = tmp_path / "build"
    assert main(["build", "--model", str(tiny_checkpoint), "--record", str(record), "--out", str(out)]) == 2
    assert "record" in capsys.readouterr().err and not out.exists()


def test_doctor_reports_what_this_machine_can_run(capsys):
    assert main(["doctor", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert {"torch", "onnxruntime", "tensorrt", "pycuda", "cpu", "can"} <= info.keys()
    assert info["can"]["calibrate_and_export"] is True
    assert info["can"]["build_trt_engines"] == (HAS_TRT and bool(info["cuda_gpus"]))
