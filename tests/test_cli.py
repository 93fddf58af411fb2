"""`tqdit sample` and `tqdit eval` end to end on a tiny random checkpoint."""
import json

import numpy as np
import pytest

from tqdit_export.api import balanced_labels
from tqdit_export.cli import main
from tqdit_export.io import load_samples
from tqdit_export.models import save_dit


@pytest.fixture()
def tiny_checkpoint(tmp_path, make_tiny_dit):
    path = tmp_path / "tiny.safetensors"
    save_dit(make_tiny_dit(), path)
    return path


def test_balanced_labels():
    assert np.bincount(balanced_labels(500, 10)).tolist() == [50] * 10
    assert balanced_labels(4, 10, [3, 7]).tolist() == [3, 3, 7, 7]
    with pytest.raises(ValueError, match="--class 12"):
        balanced_labels(4, 10, [12])


def test_sample_then_eval(tiny_checkpoint, tmp_path, capsys):
    npz, png, report = tmp_path / "s.npz", tmp_path / "grid.png", tmp_path / "eval.json"
    common = ["sample", "--model", str(tiny_checkpoint), "--steps", "3", "--num", "20", "--seed", "5",
              "--quiet", "--device", "cpu"]
    assert main(common + ["--out", str(png), "--save-npz", str(npz)]) == 0
    images, labels, meta = load_samples(npz)
    assert images.shape == (20, 1, 8, 8) and labels.tolist() == sorted([i % 10 for i in range(20)])
    assert meta["steps"] == 3 and meta["seed"] == 5 and meta["sampler"] == "ddpm"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Same seed, same samples.
    assert main(common + ["--save-npz", str(tmp_path / "again.npz")]) == 0
    np.testing.assert_array_equal(load_samples(tmp_path / "again.npz")[0], images)

    assert main(["eval", "--samples", str(npz), "--json", str(report)]) == 0
    result = json.loads(report.read_text())
    assert {"fd", "accuracy", "fd_reference", "num"} <= set(result)
    assert result["num"] == 20 and 0.0 <= result["accuracy"] <= 1.0
    assert set(result["class_terms"]) == {"within_samples", "within_heldout", "between_samples", "between_heldout",
                                          "class_mean_shift"}
    out = capsys.readouterr().out
    assert "FD" in out and "FD terms" in out and "class terms" in out


def test_bad_model_is_a_clear_error(tmp_path, capsys):
    assert main(["sample", "--model", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "g.png")]) == 2
    err = capsys.readouterr().err
    assert "nope.pt" in err and "bundled model" in err
    assert not (tmp_path / "g.png").exists()


def test_eval_of_a_missing_file_is_a_clear_error(tmp_path, capsys):
    assert main(["eval", "--samples", str(tmp_path / "missing.npz")]) == 2
    assert "tqdit sample --save-npz" in capsys.readouterr().err


def test_calibrate_then_sample_with_the_record(tiny_checkpoint, tmp_path, capsys):
    rec = tmp_path / "rec"
    assert main(["calibrate", "--model", str(tiny_checkpoint), "--bits", "W6A6", "--groups", "2",
                 "--samples-per-group", "2", "--trajectory-steps", "10", "--rounds", "1", "--out", str(rec),
                 "--quiet", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "W6A6" in out and "peak RSS" in out
    assert (rec / "record.json").exists() and (rec / "scales.safetensors").exists()
    npz = tmp_path / "q.npz"
    assert main(["sample", "--model", str(tiny_checkpoint), "--record", str(rec), "--steps", "4", "--num", "4",
                 "--save-npz", str(npz), "--quiet", "--device", "cpu"]) == 0
    images, _, meta = load_samples(npz)
    assert meta["backend"] == "torch-fakequant" and np.isfinite(images).all()


def test_export_then_sample_with_onnx_runtime(tiny_checkpoint, tmp_path, capsys):
    rec, onnx_dir, npz = tmp_path / "rec", tmp_path / "onnx", tmp_path / "ort.npz"
    assert main(["calibrate", "--model", str(tiny_checkpoint), "--groups", "2", "--samples-per-group", "2",
                 "--trajectory-steps", "10", "--rounds", "1", "--out", str(rec), "--quiet", "--device", "cpu"]) == 0
    assert main(["export", "--model", str(tiny_checkpoint), "--record", str(rec), "--out", str(onnx_dir),
                 "--fp32"]) == 0
    assert "exported 2 per-group graph(s) + fp32" in capsys.readouterr().out
    assert main(["sample", "--model", str(tiny_checkpoint), "--record", str(rec), "--backend", "ort", "--onnx",
                 str(onnx_dir), "--steps", "4", "--num", "4", "--save-npz", str(npz), "--quiet"]) == 0
    images, _, meta = load_samples(npz)
    assert meta["backend"] == "ort" and np.isfinite(images).all()
    assert main(["lint", *map(str, sorted(onnx_dir.glob("*.onnx")))]) == 0
    assert capsys.readouterr().out.count(": ok") == 3
    report = tmp_path / "parity.json"
    assert main(["check", "--model", str(tiny_checkpoint), "--record", str(rec), "--onnx", str(onnx_dir),
                 "--samples", "2", "--tolerance", "0.01", "--json", str(report)]) == 0
    parity = json.loads(report.read_text())
    assert parity["pass"] and len(parity["groups"]) == 2 and all(g["rel_l2"] < 0.01 for g in parity["groups"])
    # An impossible tolerance fails with exit code 1.
    assert main(["check", "--model", str(tiny_checkpoint), "--record", str(rec), "--onnx", str(onnx_dir),
                 "--samples", "2", "--tolerance", "1e-9"]) == 1
    assert main(["sample", "--model", str(tiny_checkpoint), "--backend", "ort", "--save-npz", str(npz)]) == 2
    assert "--onnx DIR" in capsys.readouterr().err
    fp8_dir = tmp_path / "onnx_fp8"
    assert main(["export", "--model", str(tiny_checkpoint), "--record", str(rec), "--out", str(fp8_dir),
                 "--precision", "fp8", "--layout", "single"]) == 0
    assert "float8e4m3fn" in capsys.readouterr().out
    assert main(["check", "--model", str(tiny_checkpoint), "--record", str(rec), "--onnx", str(fp8_dir),
                 "--samples", "2", "--tolerance", "0.01"]) == 0
    assert main(["export", "--model", str(tiny_checkpoint), "--record", str(rec), "--out", str(tmp_path / "bad"),
                 "--precision", "fp8", "--layout", "plugin"]) == 2
    assert "plugin" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_targets_pick_mrq_forms_layout_and_attention(tiny_checkpoint, tmp_path, capsys):
    common = ["--model", str(tiny_checkpoint), "--groups", "2", "--samples-per-group", "2", "--trajectory-steps",
              "10", "--rounds", "1", "--quiet", "--device", "cpu"]
    cheap, paper = tmp_path / "cheap", tmp_path / "paper"
    assert main(["calibrate", *common, "--target", "cpu", "--out", str(cheap)]) == 0
    assert main(["calibrate", *common, "--target", "cpu", "--softmax-mrq", "paper", "--gelu-mrq", "paper",
                 "--out", str(paper)]) == 0
    regions = {name: {op["region"] for s in json.loads((rec / "record.json").read_text())["sites"].values()
                      for op in s["operands"].values() if "region" in op} for name, rec in (("cheap", cheap),
                                                                                           ("paper", paper))}
    assert regions["cheap"] == {"uniform", "softmax-saturate", "gelu-shift"}
    assert regions["paper"] == {"uniform", "softmax", "gelu"}
    capsys.readouterr()

    # An export for a target gets its layout and weight codes; flags override the target.
    orin = tmp_path / "orin"
    assert main(["export", "--model", str(tiny_checkpoint), "--record", str(cheap), "--out", str(orin),
                 "--target", "orin"]) == 0
    manifest = json.loads((orin / "manifest.json").read_text())
    assert manifest["layout"] == "single" and manifest["target"] == "orin" and not manifest["bits"]["reduce_range"]
    assert manifest["mrq_forms"] == ["gelu-shift", "softmax-saturate"] and manifest["attention"] == "int8"
    assert manifest["float_precision"] == "fp32"  # JetPack 6's weakly typed network picks FP16 itself
    # A record of the paper's forms exports as it is, with a note saying how to get the target's forms.
    assert main(["export", "--model", str(tiny_checkpoint), "--record", str(paper), "--out", str(tmp_path / "p"),
                 "--target", "h100"]) == 0
    assert "tqdit calibrate --target h100" in capsys.readouterr().err
    # Strongly typed TensorRT targets get float16 float ops; --float-precision fp32 keeps float32
    assert json.loads((tmp_path / "p" / "manifest.json").read_text())["float_precision"] == "fp16"
    assert main(["export", "--model", str(tiny_checkpoint), "--record", str(paper), "--out", str(tmp_path / "p32"),
                 "--target", "h100", "--float-precision", "fp32"]) == 0
    assert json.loads((tmp_path / "p32" / "manifest.json").read_text())["float_precision"] == "fp32"

    # Attention in float: the parity check builds its reference with float attention too.
    fa = tmp_path / "float_attention"
    assert main(["export", "--model", str(tiny_checkpoint), "--record", str(cheap), "--out", str(fa),
                 "--attention", "float"]) == 0
    fa_manifest = json.loads((fa / "manifest.json").read_text())
    assert fa_manifest["attention"] == "float" and fa_manifest["mrq_forms"] == ["gelu-shift"]
    assert main(["check", "--model", str(tiny_checkpoint), "--record", str(cheap), "--onnx", str(fa),
                 "--samples", "2", "--tolerance", "0.01"]) == 0
    # tqdit build is for TensorRT targets; the CPU target is an export.
    with pytest.raises(SystemExit) as exit_info:
        main(["build", "--model", str(tiny_checkpoint), "--record", str(cheap), "--target", "cpu",
              "--out", str(tmp_path / "b")])
    assert exit_info.value.code == 2
    assert "invalid choice: 'cpu'" in capsys.readouterr().err and not (tmp_path / "b").exists()


def test_calibrate_rejects_bad_bits(tiny_checkpoint, tmp_path, capsys):
    assert main(["calibrate", "--model", str(tiny_checkpoint), "--bits", "W3A8", "--out", str(tmp_path / "r")]) == 2
    assert "W3A8" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_lint_exits_nonzero_on_a_bad_graph(tmp_path, capsys):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    zp = numpy_helper.from_array(np.array(5, dtype=np.int8), "zp")
    s = numpy_helper.from_array(np.array(0.1, dtype=np.float32), "s")
    nodes = [helper.make_node("QuantizeLinear", ["X", "s", "zp"], ["q"], name="q"),
             helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["Y"], name="dq")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [2])], [zp, s])
    path = tmp_path / "bad.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    assert main(["lint", str(path)]) == 1
    assert "[zero-point] q" in capsys.readouterr().out


def test_demo_runs_the_whole_pipeline(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--model", str(tiny_checkpoint), "--num", "10", "--steps", "3", "--samples-per-group", "2",
                 "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "TensorRT lint: 0 finding(s)" in printed and "| ORT W8A8 |" in printed
    assert (out / "fp32_vs_int8.png").read_bytes()[:4] == b"\x89PNG"
    report = json.loads((out / "demo.json").read_text())
    assert set(report) == {"ORT FP32", "ORT W8A8"} and "psnr_vs_fp" in report["ORT W8A8"]


def test_trt_backend_without_tensorrt_is_a_clear_error(tiny_checkpoint, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    try:
        import tensorrt  # noqa: F401

        pytest.skip("TensorRT is installed")
    except ImportError:
        pass
    rec, onnx_dir = tmp_path / "rec", tmp_path / "onnx"
    assert main(["calibrate", "--model", str(tiny_checkpoint), "--groups", "2", "--samples-per-group", "2",
                 "--trajectory-steps", "5", "--rounds", "1", "--out", str(rec), "--quiet", "--device", "cpu"]) == 0
    assert main(["export", "--model", str(tiny_checkpoint), "--record", str(rec), "--out", str(onnx_dir)]) == 0
    assert main(["sample", "--model", str(tiny_checkpoint), "--record", str(rec), "--backend", "trt", "--onnx",
                 str(onnx_dir), "--steps", "2", "--num", "2", "--save-npz", str(tmp_path / "s.npz")]) == 2
    assert "TensorRT is not installed" in capsys.readouterr().err
    assert not (tmp_path / "s.npz").exists()
