"""The plugin layout on runtimes without the TensorRT plugin: each `tqdit::TimeGroupQuantize`
node becomes the standard ONNX subgraph that computes the same codes,

    Gather(scales, time_group) -> Div(x, s) -> Round -> Clip(qmin, qmax) -> Cast(int8),

(ONNX Round is half to even and Div is IEEE division, as the CUDA kernel's rintf(x / s)).
ONNX Runtime runs the expanded graph, which is how the plugin layout is checked on a CPU.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from trt_plugins.reference import PLUGIN_NAME, PLUGIN_NAMESPACE, check_table, code_range


def is_plugin_node(node: onnx.NodeProto) -> bool:
    """True for a `tqdit::TimeGroupQuantize` node."""
    return node.op_type == PLUGIN_NAME and node.domain == PLUGIN_NAMESPACE


def plugin_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The TimeGroupQuantize nodes of `model`."""
    return [n for n in model.graph.node if is_plugin_node(n)]


def plugin_attributes(node: onnx.NodeProto) -> dict:
    """A plugin node's attributes as Python values."""
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def expand_plugins(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` with every TimeGroupQuantize node replaced by its reference subgraph."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    new_nodes: list[onnx.NodeProto] = []
    for i, node in enumerate(graph.node):
        if not is_plugin_node(node):
            new_nodes.append(node)
            continue
        attrs = plugin_attributes(node)
        bits = int(attrs["bits"])
        table = check_table(np.asarray(attrs["scales"], dtype=np.float32), bits)
        x, group = node.input
        p = f"{node.name or 'plugin'}_{i}_ref"
        lo, hi = code_range(bits)
        graph.initializer.extend([numpy_helper.from_array(table, f"{p}_scales"),
                                  numpy_helper.from_array(np.array(lo, np.float32), f"{p}_lo"),
                                  numpy_helper.from_array(np.array(hi, np.float32), f"{p}_hi")])
        new_nodes += [
            helper.make_node("Gather", [f"{p}_scales", group], [f"{p}_s"], name=f"{p}_gather"),
            helper.make_node("Div", [x, f"{p}_s"], [f"{p}_div"], name=f"{p}_div"),
            helper.make_node("Round", [f"{p}_div"], [f"{p}_round"], name=f"{p}_round"),
            helper.make_node("Clip", [f"{p}_round", f"{p}_lo", f"{p}_hi"], [f"{p}_clip"], name=f"{p}_clip"),
            helper.make_node("Cast", [f"{p}_clip"], [node.output[0]], to=onnx.TensorProto.INT8, name=f"{p}_cast"),
        ]
    del graph.node[:]
    graph.node.extend(new_nodes)
    kept = [o for o in out.opset_import if o.domain != PLUGIN_NAMESPACE]
    del out.opset_import[:]
    out.opset_import.extend(kept)
    return out
