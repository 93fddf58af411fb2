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


def test_the_plugin_choice_is_refused_before_any_work_when_it_cannot_work(tiny_checkpoint, tmp_path, capsys,
                                                                          monkeypatch):
    monkeypatch.delenv("TQDIT_TRT_PLUGIN_LIB", raising=False)
    base = ["build", "--model", str(tiny_checkpoint), "--groups", "2", "--out", str(tmp_path / "build"), "--quiet"]
    # A plugin library that is not there: named, before calibration or export.
    missing = tmp_path / "libtqdit_trt_plugins.so"
    assert main(base + ["--layout", "plugin", "--plugin-library", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err
    monkeypatch.setenv("TQDIT_TRT_PLUGIN_LIB", str(missing))
    assert main(base + ["--layout", "plugin"]) == 2
    assert str(missing) in capsys.readouterr().err
    monkeypatch.delenv("TQDIT_TRT_PLUGIN_LIB")
    # Engines for Triton built with the Python plugin: Triton's TensorRT backend could not load them.
    assert main(base + ["--layout", "plugin", "--triton", str(tmp_path / "repo")]) == 2
    err = capsys.readouterr().err
    assert "--plugin-library" in err and "--layout per-group" in err
    assert not (tmp_path / "build").exists() and not (tmp_path / "repo").exists()


def test_plugin_record_copies_the_library_the_engines_are_built_with(tmp_path, monkeypatch):
    from tqdit_export.build import plugin_record
    from tqdit_export.io import file_sha256
    from tqdit_export.onnx.manifest import BuildManifest

    monkeypatch.delenv("TQDIT_TRT_PLUGIN_LIB", raising=False)
    assert plugin_record(tmp_path / "b0", None) == ({"kind": "python", "module": "trt_plugins.python_plugin"}, None)
    assert not (tmp_path / "b0").exists()
    library = tmp_path / "libtqdit_trt_plugins.so"
    library.write_bytes(b"\x7fELF not really")
    monkeypatch.setenv("TQDIT_TRT_PLUGIN_LIB", str(library))  # the variable counts as the flag does
    folder = tmp_path / "build"
    record, copy = plugin_record(folder, None)
    assert copy == folder / "plugins" / library.name and copy.read_bytes() == library.read_bytes()
    assert record == {"kind": "library", "file": f"plugins/{library.name}", "sha256": file_sha256(copy)}
    # The build's reading of it: the copy, checked against the recorded sha256.
    (folder / "build.json").write_text(json.dumps({"engines": [{"file": "engines/a.plan", "time_group": "input"}],
                                                   "layout": "plugin", "time_groups": [0, 1000],
                                                   "plugin": record}))
    build = BuildManifest.read(folder)
    assert build.plugin_library() == copy
    copy.write_bytes(b"another library")
    with pytest.raises(ValueError, match="plugin library was changed"):
        build.plugin_library()
    python = BuildManifest.read(folder)
    python.raw["plugin"] = {"kind": "python"}
    assert python.plugin_library() is None


def test_doctor_reports_what_this_machine_can_run(capsys):
    assert main(["doctor", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert {"torch", "onnxruntime", "tensorrt", "pycuda", "cpu", "can"} <= info.keys()
    assert info["can"]["calibrate_and_export"] is True
    assert info["can"]["build_trt_engines"] == (HAS_TRT and bool(info["cuda_gpus"]))
