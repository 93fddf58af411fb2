"""W4A8: 4-bit weight codes stored as INT4 initializers at opset 21, run by ONNX Runtime."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from calibration.calibrate import CalibrationConfig
from tqdit_export.edge.ort_runtime import make_session
from tqdit_export.onnx import export_dit, lint_file
from tqdit_export.quant import FakeQuantBackend, calibrate_dit


@pytest.fixture(scope="module")
def w4a8(make_tiny_dit, tmp_path_factory):
    model = make_tiny_dit()
    record = calibrate_dit(model, CalibrationConfig(4, 8, num_groups=2, rounds=1), samples_per_group=2,
                           trajectory_steps=10, progress=False)
    root = tmp_path_factory.mktemp("int4")
    int4 = export_dit(model, record, root / "int4", weight_reduce_range=False)
    int8 = export_dit(model, record, root / "int8_container", weight_reduce_range=False, int4_weights=False)
    return model, record, root, int4, int8


def test_weights_are_int4_initializers_at_opset_21(w4a8):
    _, _, root, int4, int8 = w4a8
    assert int4["opset"] == 21 and int4["bits"]["weights_dtype"] == "int4" and int8["opset"] == 17
    proto = onnx.load(str(root / "int4" / int4["graphs"][0]["file"]))
    assert next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) == 21
    types = {i.name: i.data_type for i in proto.graph.initializer}
    weights = [n.input[0] for n in proto.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in types]
    assert weights and all(types[w] == onnx.TensorProto.INT4 for w in weights)
    assert [f for f in lint_file(root / "int4" / int4["graphs"][0]["file"]) if f.severity == "error"] == []


def test_int4_graph_computes_what_the_fake_quant_model_does(w4a8):
    model, record, root, int4, _ = w4a8
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # reference arithmetic
    reference = FakeQuantBackend(model, record)
    for g, t in enumerate((100, 900)):
        session = ort.InferenceSession(str(root / "int4" / int4["graphs"][g]["file"]), opts,
                                       providers=["CPUExecutionProvider"])
        torch.manual_seed(t)
        x, tt, y = torch.randn(4, 1, 8, 8), torch.full((4,), t), torch.tensor([0, 3, 10, 10])
        out = session.run(["out"], {"x": x.numpy(), "t": tt.numpy(), "y": y.numpy()})[0]
        ref = reference(x, tt, y).numpy()
        assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 1e-5


def test_int4_and_int8_containers_agree_on_the_optimised_session(w4a8):
    _, _, root, int4, int8 = w4a8
    a = make_session(root / "int4" / int4["graphs"][0]["file"], threads=1)
    b = make_session(root / "int8_container" / int8["graphs"][0]["file"], threads=1)
    torch.manual_seed(0)
    feeds = {"x": torch.randn(4, 1, 8, 8).numpy(), "t": np.full(4, 100), "y": np.array([0, 3, 10, 10])}
    out_a, out_b = a.run(["out"], feeds)[0], b.run(["out"], feeds)[0]
    assert np.linalg.norm(out_a - out_b) / np.linalg.norm(out_b) < 2e-2


def test_int4_refused_for_wider_weights(make_tiny_dit, tmp_path):
    model = make_tiny_dit()
    record = calibrate_dit(model, CalibrationConfig(8, 8, num_groups=1, rounds=1), samples_per_group=1,
                           trajectory_steps=4, progress=False)
    with pytest.raises(ValueError, match="int4_weights"):
        export_dit(model, record, tmp_path / "x", int4_weights=True)
    assert not (tmp_path / "x").exists()
