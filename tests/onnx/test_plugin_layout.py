"""The plugin layout: TimeGroupQuantize custom ops as TensorRT's ONNX parser maps them, run on
the CPU through their reference expansion and checked against the fake-quant model."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper

from trt_plugins import PLUGIN_NAME, PLUGIN_NAMESPACE
from tqdit_export.engines.ort_backend import OrtBackend
from tqdit_export.onnx import export_dit
from tqdit_export.onnx.lint import lint_model
from tqdit_export.onnx.plugin_ref import expand_plugins, plugin_nodes
from tqdit_export.quant import FakeQuantBackend


@pytest.fixture(scope="module")
def exported(record, model, tmp_path_factory):
    root = tmp_path_factory.mktemp("plugin")
    plugin = export_dit(model, record, root / "plugin", layout="plugin", weight_reduce_range=False)
    single = export_dit(model, record, root / "single", layout="single", weight_reduce_range=False)
    # 7-bit weights / B operands, as on CPUs without VNNI, for ORT's optimised integer kernels.
    for layout in ("plugin", "single"):
        export_dit(model, record, root / f"{layout}_7bit", layout=layout, weight_reduce_range=True)
    return record, root, plugin, single


def _inputs(t):
    torch.manual_seed(t)
    return torch.randn(6, 1, 8, 8), torch.full((6,), t), torch.tensor([0, 4, 9, 10, 10, 10])


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def test_graph_holds_plugin_nodes_tensorrt_can_look_up(exported):
    record, root, manifest, _ = exported
    assert manifest["layout"] == "plugin" and manifest["plugin"]["name"] == PLUGIN_NAME
    proto = onnx.load(str(root / "plugin" / "plugin.onnx"))
    nodes = plugin_nodes(proto)
    assert nodes, "no TimeGroupQuantize node in the plugin layout"
    assert any(o.domain == PLUGIN_NAMESPACE for o in proto.opset_import)
    for node in nodes:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["plugin_namespace"] == b"tqdit" and attrs["plugin_version"] == b"1"
        assert len(attrs["scales"]) == record.time_groups.num_groups and all(s > 0 for s in attrs["scales"])
    assert [f for f in lint_model(proto) if f.severity == "error"] == []
    # The plugin replaces the runtime rescale: no activation QuantizeLinear is left on a group-dependent site.
    assert sum(n.op_type == "QuantizeLinear" for n in proto.graph.node) < \
        sum(n.op_type == "QuantizeLinear" for n in onnx.load(str(root / "single" / "single.onnx")).graph.node)


def test_reference_expansion_runs_in_ort_and_matches_fake_quant(exported, model):
    record, root, _, _ = exported
    expanded = expand_plugins(onnx.load(str(root / "plugin" / "plugin.onnx")))
    assert plugin_nodes(expanded) == []
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # float DQ -> MatMul: exact arithmetic
    session = ort.InferenceSession(expanded.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    reference = FakeQuantBackend(model, record)
    for t in (10, 400, 900):
        x, tt, y = _inputs(t)
        feeds = {"x": x.numpy(), "t": tt.numpy(), "y": y.numpy(),
                 "time_group": np.array(record.time_groups.group_of(tt), dtype=np.int64)}
        out = torch.from_numpy(session.run(["out"], feeds)[0])
        assert _rel(out, reference(x, tt, y)) < 1e-2


def test_ort_backend_serves_the_plugin_layout_like_the_single_layout(exported):
    _, root, _, _ = exported
    plugin, single = OrtBackend(root / "plugin_7bit", threads=1), OrtBackend(root / "single_7bit", threads=1)
    for t in (10, 400, 900):
        x, tt, y = _inputs(t)
        assert _rel(plugin(x, tt, y), single(x, tt, y)) < 1e-2


def test_lint_reports_a_plugin_node_tensorrt_could_not_find_or_create(exported):
    _, root, _, _ = exported
    proto = onnx.load(str(root / "plugin" / "plugin.onnx"))
    node = plugin_nodes(proto)[0]
    for attr in list(node.attribute):
        if attr.name in ("plugin_namespace", "scales"):
            node.attribute.remove(attr)
    node.attribute.append(helper.make_attribute("scales", [0.1, -1.0]))
    messages = [f.message for f in lint_model(proto) if f.rule == "plugin"]
    assert any("plugin_namespace" in m for m in messages) and any("> 0" in m for m in messages)
