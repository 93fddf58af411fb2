"""The TensorRT-conformance linter: a clean graph passes, each rule catches its hand-made bad graph."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tqdit_export.onnx.lint import lint_file, lint_model


def _graph(*, act_zp=0, zp_type=np.int8, act_scale=0.1, scale_is_input=False, act_per_channel=False,
           weight_axis=1, transpose_weight=False, opset=17):
    """X (2, 4) -> Q/DQ -> MatMul with DQ(int8 W [4, 3] per output channel) -> Y."""
    inits = [
        numpy_helper.from_array(np.array([act_zp], dtype=zp_type).reshape(()) if not act_per_channel
                                else np.zeros(4, dtype=zp_type), "x_zp"),
        numpy_helper.from_array(np.arange(12, dtype=np.int8).reshape(4, 3) if not transpose_weight
                                else np.arange(12, dtype=np.int8).reshape(3, 4), "w_q"),
        numpy_helper.from_array(np.full(3 if weight_axis == 1 or transpose_weight else 4, 0.02, np.float32), "w_s"),
        numpy_helper.from_array(np.zeros(3 if weight_axis == 1 or transpose_weight else 4, np.int8), "w_zp"),
    ]
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, 4])]
    if scale_is_input:
        inputs.append(helper.make_tensor_value_info("x_s", TensorProto.FLOAT, []))
    else:
        scale = np.full(4, act_scale, np.float32) if act_per_channel else np.array(act_scale, np.float32)
        inits.append(numpy_helper.from_array(scale, "x_s"))
    nodes = [
        helper.make_node("QuantizeLinear", ["X", "x_s", "x_zp"], ["x_q"], name="act_q", axis=1),
        helper.make_node("DequantizeLinear", ["x_q", "x_s", "x_zp"], ["x_dq"], name="act_dq", axis=1),
        helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_zp"], ["w_dq"], name="weight_dq",
                         axis=0 if transpose_weight else weight_axis),
    ]
    w = "w_dq"
    if transpose_weight:
        nodes.append(helper.make_node("Transpose", ["w_dq"], ["w_t"], name="transpose", perm=[1, 0]))
        w = "w_t"
    nodes.append(helper.make_node("MatMul", ["x_dq", w], ["Y"], name="gemm"))
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [2, 3])],
                              inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _rules(model):
    return {(f.rule, f.node, f.severity) for f in lint_model(model)}


def test_a_conformant_graph_has_no_findings(tmp_path):
    model = _graph()
    onnx.checker.check_model(model)
    path = tmp_path / "ok.onnx"
    onnx.save(model, str(path))
    assert lint_file(path) == []


@pytest.mark.parametrize("kwargs,rule,node", [
    (dict(act_zp=3), "zero-point", "act_q"),
    (dict(zp_type=np.uint8), "qdq-dtype", "act_q"),
    (dict(scale_is_input=True), "scale-constant", "act_q"),
    (dict(act_scale=-0.1), "scale-positive", "act_dq"),
    (dict(act_scale=0.0), "scale-positive", "act_q"),
    (dict(act_per_channel=True), "per-channel-activation", "act_q"),
    (dict(weight_axis=0), "weight-axis", "weight_dq"),
    (dict(transpose_weight=True), "fusion", "weight_dq"),
    (dict(opset=11), "opset", "model"),
])
def test_each_rule_reports_its_node(kwargs, rule, node):
    assert (rule, node, "error") in _rules(_graph(**kwargs))


def test_opset_21_is_a_warning_only():
    assert _rules(_graph(opset=21)) == {("opset", "model", "warning")}


def test_a_double_qdq_pair_breaks_fusion():
    model = _graph()
    g = model.graph
    # act_dq -> Q -> DQ -> MatMul: a second pair on the same tensor.
    g.node.insert(2, helper.make_node("QuantizeLinear", ["x_dq", "x_s", "x_zp"], ["x_q2"], name="act_q2"))
    g.node.insert(3, helper.make_node("DequantizeLinear", ["x_q2", "x_s", "x_zp"], ["x_dq2"], name="act_dq2"))
    g.node[-1].input[0] = "x_dq2"
    assert ("fusion", "act_dq", "error") in _rules(model)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.onnx"):
        lint_file(tmp_path / "nope.onnx")


@pytest.mark.parametrize("opset,expected", [(17, {("qdq-dtype", "act_q", "error"), ("qdq-dtype", "act_dq", "error")}),
                                            (19, set())])
def test_float8_zero_points_need_opset_19(opset, expected):
    model = _graph(opset=opset)
    zp = next(i for i in model.graph.initializer if i.name == "x_zp")
    zp.CopyFrom(helper.make_tensor("x_zp", TensorProto.FLOAT8E4M3FN, [], [0.0]))
    assert _rules(model) == expected
