"""TensorRT-conformance linter for Q/DQ ONNX graphs.

Reports, per node, every Q/DQ that TensorRT's explicit-quantization path would reject or
fail to fuse. Errors fail an export; warnings are reported. Rules (codes in brackets):
- [zero-point] zero point not all zeros (TensorRT is symmetric only);
- [qdq-dtype] zero point of a type other than int8 / int4 (weights) / float8e4m3 (e.g. uint8),
  or a float8e4m3 one below opset 19;
- [scale-constant] scale not a build-time constant (initializer or Constant);
- [scale-positive] a scale that is zero, negative or not finite;
- [per-channel-activation] a per-channel scale on an activation (only weights may be per channel);
- [weight-axis] a per-channel weight scale on an axis other than the consumer's output
  channels (MatMul B [K, N]: axis 1; Gemm transB=1 and Conv weights: axis 0);
- [fusion] a DequantizeLinear that reaches its GEMM through another node (a Cast, a Transpose,
  a second Q/DQ pair): TensorRT then runs the GEMM in float;
- [plugin] a `tqdit::TimeGroupQuantize` plugin node without the `plugin_namespace` /
  `plugin_version` attributes TensorRT's ONNX parser looks it up by, or with a scale table
  or bit width the plugin refuses (empty, over 256 groups, a scale <= 0, bits outside 2..8);
- [opset] default-domain opset below 13 (no per-channel Q/DQ) is an error; 21 and above a
  warning (ONNX Runtime refuses int8 Q/DQ graphs there with optimizations on);
- [fp32-op] in an FP16 export (metadata `float_precision=fp16`, or any float16 tensor), an op
  other than Q/DQ that computes in float32, except the float32 ops `FP16_EXCEPTIONS` names:
  on a strongly typed TensorRT network it would run in FP32.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import numpy_helper

from trt_plugins.reference import PLUGIN_NAMESPACE, PLUGIN_VERSION, check_table

from .plugin_ref import is_plugin_node, plugin_attributes

GEMMS = ("MatMul", "Gemm", "Conv")
COMPARISONS = ("Less", "LessOrEqual", "Greater", "GreaterOrEqual", "Equal")

# The float32 ops an FP16 export keeps, and why (the manifest records them; [fp32-op] allows only these).
FP16_EXCEPTIONS: dict[str, str] = {
    "timestep-embedding": "the sinusoidal embedding of t and its inputs (Cast of t, t * freqs, Cos, Sin, Concat): "
                          "the arguments reach 999 rad, where float16's step is 0.5 rad, so cos/sin would be "
                          "noise; the embedding (in [-1, 1]) is cast to float16 before the timestep MLP",
    "graph-output": "the Cast of the output to float32: the graph interface (x in, out out) stays float32 for "
                    "every runtime; x is cast to float16 where it enters",
    "plugin-input": "the Cast to float32 in front of each TimeGroupQuantize plugin (plugin layout), which reads "
                    "float32",
}
ALLOWED_ZP_TYPES = (onnx.TensorProto.INT8, onnx.TensorProto.INT4, onnx.TensorProto.FLOAT8E4M3FN)


@dataclass(frozen=True)
class Finding:
    """One lint result, located at a node."""

    severity: str  # "error" | "warning"
    rule: str
    node: str
    message: str

    def __str__(self) -> str:
        return f"{self.severity}: [{self.rule}] {self.node}: {self.message}"


def _node_name(node: onnx.NodeProto, index: int) -> str:
    return node.name or f"{node.op_type}#{index}"


def lint_model(model: onnx.ModelProto) -> list[Finding]:
    """All findings of `model` (empty when TensorRT can build every Q/DQ as an INT8 GEMM)."""
    graph = model.graph
    findings: list[Finding] = []
    # Small constants (scales, zero points) are read; large ones (weights, maybe in external
    # data) only by shape.
    consts: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in graph.initializer
                                     if i.data_location != onnx.TensorProto.EXTERNAL and np.prod(i.dims) <= 1 << 16}
    shapes: dict[str, tuple[int, ...]] = {i.name: tuple(i.dims) for i in graph.initializer}
    const_types = {i.name: i.data_type for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].type == onnx.AttributeProto.TENSOR:
            consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
            shapes[node.output[0]] = tuple(node.attribute[0].t.dims)
            const_types[node.output[0]] = node.attribute[0].t.data_type
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or opset < 13:
        findings.append(Finding("error", "opset", "model", f"opset {opset}: Q/DQ with per-channel scales needs >= 13"))
    elif opset >= 21:
        findings.append(Finding("warning", "opset", "model",
                                f"opset {opset}: ONNX Runtime refuses int8 Q/DQ graphs at >= 21 with optimizations on"))

    def is_constant(name: str) -> bool:
        # A constant may pass through Identity nodes the exporter left in.
        while name not in shapes and name in producer and producer[name].op_type == "Identity":
            name = producer[name].input[0]
        return name in shapes

    for index, node in enumerate(graph.node):
        if is_plugin_node(node):
            findings += _check_plugin(node, _node_name(node, index))
            continue
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        name = _node_name(node, index)
        scale_name = node.input[1]
        zp_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if not is_constant(scale_name):
            findings.append(Finding("error", "scale-constant", name,
                                    f"scale {scale_name!r} is computed at run time; TensorRT needs a constant"))
            scale = None
        else:
            scale = consts.get(scale_name)
            if scale is not None and not (np.isfinite(scale).all() and (scale > 0).all()):
                findings.append(Finding("error", "scale-positive", name, f"scale {scale_name!r} has values <= 0 or "
                                        "not finite"))
        if zp_name is not None and zp_name in consts:
            if np.any(consts[zp_name] != 0):
                findings.append(Finding("error", "zero-point", name, f"zero point {zp_name!r} is not 0: "
                                        "TensorRT quantization is symmetric"))
            if const_types.get(zp_name) not in ALLOWED_ZP_TYPES:
                findings.append(Finding("error", "qdq-dtype", name, f"zero point {zp_name!r} has type "
                                        f"{onnx.TensorProto.DataType.Name(const_types[zp_name])}; use int8"))
            elif const_types.get(zp_name) == onnx.TensorProto.FLOAT8E4M3FN and opset is not None and opset < 19:
                findings.append(Finding("error", "qdq-dtype", name, f"float8e4m3fn zero point {zp_name!r} at opset "
                                        f"{opset}; FP8 Q/DQ needs opset >= 19"))
        per_channel = scale is not None and scale.size > 1
        data_is_constant = is_constant(node.input[0])
        if per_channel and not data_is_constant and node.op_type == "QuantizeLinear":
            findings.append(Finding("error", "per-channel-activation", name,
                                    f"per-channel scale on activation {node.input[0]!r}; activations are per tensor"))
        if node.op_type == "DequantizeLinear":
            findings += _check_consumer(node, name, per_channel and data_is_constant, shapes, consumers)
    findings += _check_float32_ops(model, consumers)
    return findings


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """The element type of every tensor of the graph: declared ones, constants, then shape inference."""
    graph = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.input, *graph.output, *graph.value_info]
             if v.type.HasField("tensor_type")}
    types.update({i.name: i.data_type for i in graph.initializer})
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].type == onnx.AttributeProto.TENSOR:
            types[node.output[0]] = node.attribute[0].t.data_type
    if any(o and o not in types for n in graph.node for o in n.output):
        try:  # the exporter declares most intermediate types; inference fills the rest
            inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False).graph
            for v in inferred.value_info:
                types.setdefault(v.name, v.type.tensor_type.elem_type)
        except (onnx.shape_inference.InferenceError, ValueError):
            pass  # a graph inference cannot read is checked on the types it declares
    return {k: v for k, v in types.items() if v}


def is_float16_export(model: onnx.ModelProto, types: dict[str, int] | None = None) -> bool:
    """Whether `model` is an FP16 export: its metadata says so, or it holds float16 tensors."""
    if any(p.key == "float_precision" and p.value == "fp16" for p in model.metadata_props):
        return True
    types = _elem_types(model) if types is None else types
    return onnx.TensorProto.FLOAT16 in types.values()


def _check_float32_ops(model: onnx.ModelProto, consumers: dict[str, list[onnx.NodeProto]]) -> list[Finding]:
    """[fp32-op]: in an FP16 export, every op but Q/DQ and the `FP16_EXCEPTIONS` computes in float16."""
    types = _elem_types(model)
    if not is_float16_export(model, types):
        return []
    graph = model.graph
    outputs = {o.name for o in graph.output}
    # Tensors that depend on a graph input other than t: everything else is the timestep
    # embedding (or a constant). graph.node is in topological order (an ONNX requirement).
    tainted = {i.name for i in graph.input if i.name != "t"}
    for node in graph.node:
        if any(i in tainted for i in node.input):
            tainted.update(node.output)
    fp32 = onnx.TensorProto.FLOAT
    findings = []
    for index, node in enumerate(graph.node):
        if node.op_type in ("Constant", "QuantizeLinear", "DequantizeLinear") or is_plugin_node(node):
            continue
        computes_fp32 = any(types.get(o) == fp32 for o in node.output) or (
            node.op_type in COMPARISONS and any(types.get(i) == fp32 for i in node.input))
        if not computes_fp32:
            continue
        if not any(o in tainted for o in node.output):
            continue  # timestep-embedding
        users = [u for o in node.output for u in consumers.get(o, [])]
        if node.op_type == "Cast" and all(o in outputs for o in node.output):
            continue  # graph-output
        if node.op_type == "Cast" and users and all(is_plugin_node(u) for u in users):
            continue  # plugin-input
        findings.append(Finding("error", "fp32-op", _node_name(node, index),
                                f"{node.op_type} computes in float32 in an FP16 export; a strongly typed TensorRT "
                                "network runs it in FP32. Give it float16 inputs, or export with "
                                f"float_precision='fp32' (float32 is kept only for: {', '.join(FP16_EXCEPTIONS)})"))
    return findings


def _check_plugin(node: onnx.NodeProto, name: str) -> list[Finding]:
    """The plugin node carries what TensorRT needs to find and create the plugin."""
    attrs = plugin_attributes(node)
    findings = []
    for key, expected in (("plugin_namespace", PLUGIN_NAMESPACE), ("plugin_version", PLUGIN_VERSION)):
        value = attrs.get(key)
        value = value.decode() if isinstance(value, bytes) else value
        if value != expected:
            findings.append(Finding("error", "plugin", name, f"attribute {key}={value!r}; TensorRT's ONNX parser "
                                    f"finds the plugin by {key}={expected!r}"))
    try:
        check_table(np.asarray(attrs.get("scales", []), dtype=np.float32), int(attrs.get("bits", 0)))
    except ValueError as err:
        findings.append(Finding("error", "plugin", name, str(err)))
    if len(node.input) != 2:
        findings.append(Finding("error", "plugin", name, f"{len(node.input)} inputs; the plugin takes (x, time_group)"))
    return findings


def _check_consumer(dq: onnx.NodeProto, name: str, per_channel_weight: bool, shapes: dict[str, tuple[int, ...]],
                    consumers: dict[str, list[onnx.NodeProto]]) -> list[Finding]:
    """Fusion and weight-axis rules for a DequantizeLinear's consumers."""
    findings = []
    axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
    for user in consumers.get(dq.output[0], []):
        if user.op_type in GEMMS:
            if per_channel_weight:
                slot = list(user.input).index(dq.output[0])
                ndim = len(shapes.get(dq.input[0], ()))
                expected = _output_channel_axis(user, slot, ndim)
                if expected is not None and ndim and axis % ndim != expected:
                    findings.append(Finding("error", "weight-axis", name,
                                            f"per-channel axis {axis} but {user.op_type} input {slot} has its output "
                                            f"channels on axis {expected}"))
            continue
        # A DQ feeding a GEMM only through another node breaks TensorRT's Q/DQ fusion.
        for second in consumers.get(user.output[0], []) if user.output else []:
            if second.op_type in GEMMS and user.op_type not in ("QuantizeLinear",):
                findings.append(Finding("error", "fusion", name,
                                        f"reaches {second.op_type} {second.name!r} through {user.op_type}; "
                                        "put the DequantizeLinear directly on the GEMM input"))
        if user.op_type == "QuantizeLinear":
            findings.append(Finding("error", "fusion", name, "is followed by another QuantizeLinear (a double Q/DQ "
                                    "pair); TensorRT cannot fold it into one GEMM"))
    return findings


def _output_channel_axis(gemm: onnx.NodeProto, slot: int, ndim: int) -> int | None:
    if not ndim:
        return None
    if gemm.op_type == "MatMul":
        return ndim - 1 if slot == 1 else None  # B [K, N]: N is the last axis
    if gemm.op_type == "Gemm":
        trans_b = next((a.i for a in gemm.attribute if a.name == "transB"), 0)
        return (0 if trans_b else 1) if slot == 1 else None
    return 0 if slot == 1 else None  # Conv weights [out, in, kh, kw]


def lint_file(path: str | Path) -> list[Finding]:
    """Lint an ONNX file (external data is not loaded: the rules read scales and zero points only)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such ONNX file")
    if path.is_dir():
        raise IsADirectoryError(f"{path}: a folder, not an ONNX file; name its graphs, e.g. `tqdit lint {path}/*.onnx`")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except DecodeError as err:
        raise ValueError(f"{path}: not an ONNX model (protobuf: {err}); give a .onnx file written by "
                         "`tqdit export`") from err
    try:
        return lint_model(model)
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as err:  # parsed, but holds nonsense
        # (e.g. an initializer whose bytes do not fill its shape)
        raise ValueError(f"{path}: not a well-formed ONNX graph ({type(err).__name__}: {err}); the linter "
                         "reads graphs written by `tqdit export` or another exporter") from err


class LintError(ValueError):
    """An export produced a graph that TensorRT would reject or run unfused."""
