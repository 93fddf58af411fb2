"""FP8 (E4M3) export: float8e4m3fn Q/DQ at opset 19 over the record's clipping ranges, run by ONNX Runtime."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from tqdit_export.edge.ort_runtime import OrtDenoiser
from tqdit_export.onnx import export_dit, lint_file
from tqdit_export.onnx.export import SingleLayoutDiT, qdq_model
from tqdit_export.onnx.qdq import FP8_MAX, fake_quant_fp8, fp8_scale


def _rel(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _inputs(t: int):
    torch.manual_seed(t)
    return torch.randn(4, 1, 8, 8), torch.full((4,), t), torch.tensor([0, 3, 10, 10])


@pytest.fixture(scope="module")
def fp8_exports(model, record, tmp_path_factory):
    root = tmp_path_factory.mktemp("fp8")
    return {layout: (root / layout, export_dit(model, record, root / layout, layout=layout, precision="fp8"))
            for layout in ("per-group", "single")}


def test_fake_quant_fp8_saturates_and_rounds_to_e4m3():
    s = torch.tensor(0.5)
    x = torch.tensor([0.0, 1000.0, -1000.0, 0.5 * 1.0625, 0.5 * 17.0])
    # 1.0625 lies halfway between 1 and 1.125 (3 mantissa bits): ties go to even, 1.0; 17 -> 16 (step 2 there)
    assert fake_quant_fp8(x, s).tolist() == [0.0, 0.5 * FP8_MAX, -0.5 * FP8_MAX, 0.5, 8.0]
    # the clipping range of an int8 scale carries over: 127 * s == 448 * s_fp8
    assert fp8_scale(torch.tensor(1.0), 8).item() * FP8_MAX == pytest.approx(127.0)


def test_fp8_graphs_hold_float8_weights_at_opset_19_and_pass_the_linter(fp8_exports):
    for folder, manifest in fp8_exports.values():
        assert manifest["precision"] == "fp8" and manifest["opset"] == 19
        assert manifest["bits"]["weights_dtype"] == "float8e4m3fn" and manifest["bits"]["reduce_range"] is False
        path = folder / manifest["graphs"][0]["file"]
        proto = onnx.load(str(path))
        types = {i.name: i.data_type for i in proto.graph.initializer}
        weights = [n.input[0] for n in proto.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in types]
        assert weights and all(types[w] == onnx.TensorProto.FLOAT8E4M3FN for w in weights)
        assert not [n for n in proto.graph.initializer if n.data_type == onnx.TensorProto.INT8]
        assert [f for f in lint_file(path) if f.severity == "error"] == []


def test_fp8_graph_computes_what_its_torch_module_does(model, record, fp8_exports):
    folder, manifest = fp8_exports["per-group"]
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # reference arithmetic
    for g, t in ((0, 100), (record.time_groups.num_groups - 1, 900)):
        session = ort.InferenceSession(str(folder / manifest["graphs"][g]["file"]), opts,
                                       providers=["CPUExecutionProvider"])
        x, tt, y = _inputs(t)
        out = session.run(["out"], {"x": x.numpy(), "t": tt.numpy(), "y": y.numpy()})[0]
        with torch.no_grad():
            ref = qdq_model(model, record, g, precision="fp8")(x, tt, y).numpy()
            fp = model(x, tt, y).numpy()
        assert _rel(out, ref) < 1e-4
        # FP8 is a quantizer, not the identity, and stays close to the float model
        assert 1e-4 < _rel(ref, fp) < 0.1


def test_both_layouts_agree_with_torch_on_optimised_sessions(model, record, fp8_exports):
    per_group = OrtDenoiser(fp8_exports["per-group"][0], threads=1)
    single = OrtDenoiser(fp8_exports["single"][0], threads=1)
    single_module = SingleLayoutDiT(model, record, precision="fp8").eval()
    for t in (100, 500, 900):
        x, tt, y = _inputs(t)
        g = record.time_groups.group_of(tt)
        with torch.no_grad():
            ref_group = qdq_model(model, record, g, precision="fp8")(x, tt, y).numpy()
            ref_single = single_module(x, tt, y, torch.tensor(g)).numpy()
        assert _rel(per_group(x.numpy(), tt.numpy(), y.numpy()), ref_group) < 1e-2
        assert _rel(single(x.numpy(), tt.numpy(), y.numpy()), ref_single) < 1e-2


def test_fp8_refuses_what_it_cannot_hold(model, record, tmp_path):
    with pytest.raises(ValueError, match="plugin"):
        export_dit(model, record, tmp_path / "plugin", layout="plugin", precision="fp8")
    with pytest.raises(ValueError, match="int4_weights"):
        export_dit(model, record, tmp_path / "int4", precision="fp8", int4_weights=True)
    with pytest.raises(ValueError, match="precision 'fp16'"):
        export_dit(model, record, tmp_path / "fp16", precision="fp16")
    assert not any(tmp_path.iterdir())  # nothing half-written
