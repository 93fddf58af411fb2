"""Graphs over the protobuf limit are written with one external-data file (as DiT-XL/2 needs);
the threshold is lowered here so a tiny model takes that path."""
import json

import onnx
import pytest
import torch

import tqdit_export.onnx.export as export_module
from calibration.calibrate import CalibrationConfig
from tqdit_export.engines.ort_backend import OrtBackend
from tqdit_export.onnx import export_dit, lint_file
from tqdit_export.quant import calibrate_dit


@pytest.fixture(scope="module")
def model_and_record(make_tiny_dit):
    model = make_tiny_dit()
    return model, calibrate_dit(model, CalibrationConfig(8, 8, num_groups=2, rounds=1), samples_per_group=2,
                                trajectory_steps=10, progress=False)


def test_large_graphs_get_one_external_data_file_and_still_run(model_and_record, tmp_path, monkeypatch):
    model, record = model_and_record
    inline = export_dit(model, record, tmp_path / "inline", fp32=True, weight_reduce_range=True)
    monkeypatch.setattr(export_module, "EXTERNAL_DATA_BYTES", 10_000)
    monkeypatch.setattr(export_module, "EXTERNAL_TENSOR_BYTES", 1024)  # the tiny model's weights are small
    out = tmp_path / "external"
    manifest = export_dit(model, record, out, fp32=True, weight_reduce_range=True)
    assert json.loads((out / "manifest.json").read_text()) == manifest
    for entry in [*manifest["graphs"], manifest["fp32"]]:
        assert entry["external_data"] == entry["file"] + ".data" and (out / entry["external_data"]).exists()
        graph = onnx.load(str(out / entry["file"]), load_external_data=False)
        assert any(i.data_location == onnx.TensorProto.EXTERNAL for i in graph.graph.initializer)
        # Scales stay inline, so the linter sees as much as on an inline graph.
        assert [str(f) for f in lint_file(out / entry["file"])] == \
            [str(f) for f in lint_file(tmp_path / "inline" / entry["file"])]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["manifest.json", ".tqdit-files.json"]
        + [f for e in [*manifest["graphs"], manifest["fp32"]] for f in (e["file"], e["external_data"])])
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([3, 3]), torch.tensor([1, 10])
    with torch.no_grad():
        assert float((OrtBackend(out, fp32=True)(x, t, y) - model(x, t, y)).abs().max()) < 1e-4
    torch.testing.assert_close(OrtBackend(out)(x, t, y), OrtBackend(tmp_path / "inline")(x, t, y))
    assert "external_data" not in inline["graphs"][0]
