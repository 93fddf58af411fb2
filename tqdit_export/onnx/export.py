"""Calibrated DiT + CalibrationRecord -> Q/DQ ONNX graphs and a manifest.

Graph interface, the same for every layout: inputs `x` (N, C, H, W) float32, `t` (N,)
int64 training timesteps, `y` (N,) int64 labels (the null class for the unconditional
half); output `out` (N, 2C, H, W): epsilon and variance channels. The batch axis is dynamic.

Layouts:
- `per-group`: G graphs, one per time group, each with that group's constant scales
  (one engine per group; the weights are stored G times);
- `single`: one graph with an extra int64 scalar input `time_group`; per-group scales
  become constant-scale Q/DQ around runtime rescale factors gathered from a table
  (x / s_g -> Q/DQ(1) -> GEMM -> * s_g: the x * r_g -> Q/DQ(s0) -> GEMM -> * 1/r_g of the
  design with s0 = 1, whose codes are bit-identical to Q/DQ(s_g)), so the weights are
  stored once;
- `plugin`: one graph with the same `time_group` input whose activation quantizers are the
  TensorRT plugin `tqdit::TimeGroupQuantize` (trt_plugins/): the plugin reads the group on
  the device and emits int8 codes -> DQ(1) -> GEMM -> * s_g. TensorRT needs the plugin
  library (or the Python plugin) registered; ONNX Runtime runs it through the reference
  expansion in `plugin_ref`.
The output folder holds `manifest.json` naming every graph, its layout and the training
timestep range of each group, and is written atomically (a complete folder or none).
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn as nn

from calibration.forms import site_quants
from calibration.record import CalibrationRecord

from ..hardware import cpu_has_vnni
from ..io import atomic_folder, file_sha256
from ..models.dit import DiT
from .lint import FP16_EXCEPTIONS, LintError, lint_model
from .manifest import LAYOUTS, MANIFEST, MANIFEST_VERSION
from trt_plugins.reference import PLUGIN_NAME, PLUGIN_NAMESPACE, PLUGIN_VERSION

from .qdq import (FLOAT_PRECISIONS, PRECISIONS, ActivationQDQ, GroupInput, PluginGroupInput, QDQLinear, QDQMatMul,
                  TanhGelu)

INT8_OPSET = 17  # ONNX Runtime refuses int8 Q/DQ graphs at opset >= 21 with optimizations on
INT4_OPSET = 21  # the first opset whose DequantizeLinear takes int4 weights
FP8_OPSET = 19  # the first opset whose Q/DQ take float8e4m3fn
FP16_OPSET = 19  # the first opset whose Q/DQ take float16 inputs and scales (ONNX Runtime takes int8 there)


class Float16Graph(nn.Module):
    """A float16 model behind the project's float32 graph interface: x is cast to float16 on the
    way in, the output to float32 on the way out (the graph's only float32 ops besides the
    timestep sinusoid, which `TimestepEmbedder` computes in float32)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, *time_group: torch.Tensor) -> torch.Tensor:
        return self.inner(x.half(), t, y, *time_group).float()


def float32_to_float16(module: nn.Module) -> nn.Module:
    """Cast every float32 parameter and buffer of `module` to float16, in place (int8 and
    float8e4m3fn weight codes keep their type, which `Module.half()` would not)."""
    for sub in module.modules():
        for name, p in sub.named_parameters(recurse=False):
            if p.dtype == torch.float32:
                p.data = p.data.half()
        for name, b in sub.named_buffers(recurse=False):
            if b.dtype == torch.float32:
                setattr(sub, name, b.half())
    return module


# TensorRT's fused INT8 attention (NVIDIA/TensorRT#2981): these head sizes, at most this many tokens
FUSED_ATTENTION_HEAD_SIZES = (16, 32, 64)
FUSED_ATTENTION_MAX_TOKENS = 512


def fused_attention_fits(config) -> bool:
    """Whether TensorRT's fused INT8 attention takes this DiT's attention: head size 16, 32 or 64
    and at most 512 tokens (DiT-S/B/L at 256x256 yes; DiT-XL, head size 72, never)."""
    return config.hidden_size // config.num_heads in FUSED_ATTENTION_HEAD_SIZES and \
        config.num_tokens <= FUSED_ATTENTION_MAX_TOKENS


def fused_attention_sites(model: DiT, record: CalibrationRecord, attention: bool = True) -> list[str]:
    """The attention modules that get TensorRT's fused-attention Q/DQ placement: all of them when
    the shapes fit (`fused_attention_fits`), each with Q·Kᵀ, A·V and proj quantized in `record`; else none."""
    c = model.config
    if not attention or not fused_attention_fits(c):
        return []
    names = {s.name for s in record.sites}
    return [f"blocks.{i}.attn" for i in range(c.depth)
            if {f"blocks.{i}.attn.{s}" for s in ("matmul_qk", "matmul_av", "proj")} <= names]


def fused_attention_operands(sites: list[str]) -> frozenset[str]:
    """The operands the fused placement reads as one uniform part: A of each fused A·V (one GEMM)."""
    return frozenset(f"{a}.matmul_av.a" for a in sites)


def qdq_model(model: DiT, record: CalibrationRecord, group: int | GroupInput,
              weight_reduce_range: bool = False, precision: str = "int8", attention: bool = True,
              float_precision: str = "fp32", fused_attention: bool = False) -> nn.Module:
    """A copy of `model` whose sites are Q/DQ export modules: the scales of time `group`, or
    of every group selected at run time through a `GroupInput` (single layout).

    The record is read through `calibration.forms.site_quants`, as the fake-quant model reads it.
    `weight_reduce_range` keeps the clipping range of the weights, and of the second
    operand of activation x activation GEMMs (the kernel's B side), but uses 7-bit codes
    (step x 127/63): ONNX Runtime's u8 x s8 CPU kernel without VNNI adds pairs of products in
    saturating int16, which full-range int8 B operands overflow.
    `precision="fp8"`: float8e4m3fn activations and weights over the record's clipping ranges.
    `attention=False` keeps Q·Kᵀ and A·V as float MatMuls.
    `float_precision="fp16"`: every float op and Q/DQ scale in float16 (see `qdq`), behind the
    float32 interface (`Float16Graph`), for strongly typed TensorRT networks.
    `fused_attention=True`: the Q/DQ placement TensorRT's fused INT8 attention takes, where the
    shapes allow it (`fused_attention_sites`): Q/DQ before Q·Kᵀ (as always), A after the softmax
    as one uniform Q/DQ over [0, 1] (one A·V GEMM: the MRQ form's second region is dropped), and
    a Q/DQ on A·V's output, before the head transpose, with proj's input scale. Constant
    scales only (per-group layout): the single layout's rescales would sit inside the pattern.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is unknown; choose one of {PRECISIONS}")
    if float_precision not in FLOAT_PRECISIONS:
        raise ValueError(f"float_precision {float_precision!r} is unknown; choose one of {FLOAT_PRECISIONS}")
    float16 = float_precision == "fp16"
    weight_reduce_range = weight_reduce_range and precision == "int8"
    record.check_model(model)
    fused = fused_attention_sites(model, record, attention) if fused_attention else []
    if fused and isinstance(group, GroupInput):
        raise ValueError("fused_attention: the fused-attention placement needs constant scales; export it with "
                         "layout 'per-group'")
    qmodel = copy.deepcopy(model).eval()
    quants = site_quants(record, weight_reduce_range, attention, fused_attention_operands(fused))
    by_name = {sq.site.name: sq for sq in quants}
    for sq in quants:
        module = qmodel.get_submodule(sq.site.name)
        acts = {op: ActivationQDQ(q, group, precision, float16) for op, q in sq.operands.items()}
        if sq.site.kind == "linear":
            new = QDQLinear(module, acts["input"], sq.weight_scale, sq.weight_bits, precision, float16)
        else:
            attn, _, gemm = sq.site.name.rpartition(".")
            out = None
            if gemm == "matmul_av" and attn in fused:  # A·V's output is proj's input, head-transposed
                out = ActivationQDQ(by_name[f"{attn}.proj"].operands["input"], group, precision, float16)
            new = QDQMatMul(acts["a"], acts["b"], out)
        parent, _, child = sq.site.name.rpartition(".")
        setattr(qmodel.get_submodule(parent) if parent else qmodel, child, new)
    return Float16Graph(float32_to_float16(qmodel)) if float16 else qmodel


class SingleLayoutDiT(nn.Module):
    """The single layout's graph: (x, t, y, time_group) -> out, every group's scales inside."""

    group_input_type: type[GroupInput] = GroupInput

    def __init__(self, model: DiT, record: CalibrationRecord, weight_reduce_range: bool = False,
                 precision: str = "int8", attention: bool = True, float_precision: str = "fp32") -> None:
        super().__init__()
        self.group_input = self.group_input_type()
        self.qmodel = qdq_model(model, record, self.group_input, weight_reduce_range, precision, attention,
                                float_precision)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, time_group: torch.Tensor) -> torch.Tensor:
        self.group_input.set(time_group)
        return self.qmodel(x, t, y)


class PluginLayoutDiT(SingleLayoutDiT):
    """The plugin layout's graph: like the single layout, with TimeGroupQuantize plugins reading `time_group`."""

    group_input_type = PluginGroupInput


def _example_inputs(model: DiT) -> tuple[torch.Tensor, ...]:
    c = model.config
    return (torch.zeros(2, c.in_channels, c.input_size, c.input_size), torch.tensor([1, 1]),
            torch.tensor([0, model.null_class]))


# Protobuf cannot serialise a message over 2 GiB: larger graphs keep their tensors in one
# external-data file beside the .onnx (DiT-XL/2 in fp32 is ~2.7 GB). The margin covers the graph itself.
EXTERNAL_DATA_BYTES = 1_800_000_000
EXTERNAL_TENSOR_BYTES = 1 << 16  # smaller tensors (scales, zero points) stay inline, where the linter reads them


def _tensor_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


def pack_int4_weights(proto: onnx.ModelProto) -> int:
    """Store the weight codes of <= 4-bit DequantizeLinear weights as INT4 (in place); returns how many.

    A weight is an int8 initializer feeding a DequantizeLinear whose codes all lie in
    [-8, 7]; its zero point (an initializer or Constant of zeros) becomes INT4 as well, and
    the model moves to opset 21 (IR 10), where DequantizeLinear accepts int4.
    """
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in proto.graph.initializer}
    constants = {n.output[0]: n for n in proto.graph.node if n.op_type == "Constant"}
    packed = 0
    for node in proto.graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in inits:
            continue
        codes = numpy_helper.to_array(inits[node.input[0]])
        if codes.dtype != np.int8 or codes.size == 0 or codes.min() < -8 or codes.max() > 7:
            continue
        inits[node.input[0]].CopyFrom(helper.make_tensor(node.input[0], onnx.TensorProto.INT4, codes.shape,
                                                         codes.reshape(-1).tolist()))
        zp_name = node.input[2] if len(node.input) > 2 else ""
        holder = inits.get(zp_name) if zp_name in inits else (constants[zp_name].attribute[0].t
                                                               if zp_name in constants else None)
        if holder is not None:
            zp = numpy_helper.to_array(holder)
            holder.CopyFrom(helper.make_tensor(holder.name, onnx.TensorProto.INT4, zp.shape, zp.reshape(-1).tolist()))
        packed += 1
    if packed:
        for op in proto.opset_import:
            if op.domain in ("", "ai.onnx"):
                op.version = max(op.version, INT4_OPSET)
        proto.ir_version = max(proto.ir_version, 10)
    return packed


@contextlib.contextmanager
def fusable_gelu(module: nn.Module):
    """While exporting: every nn.GELU(approximate="tanh") of `module` is `TanhGelu` (the same values,
    written in the node order ONNX Runtime fuses into one FastGelu); put back afterwards."""
    swapped = [(parent, name, child) for parent in module.modules() for name, child in parent.named_children()
               if isinstance(child, nn.GELU) and child.approximate == "tanh"]
    for parent, name, _ in swapped:
        setattr(parent, name, TanhGelu())
    try:
        yield module
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)


def export_onnx(module: nn.Module, example: tuple, path: Path, opset: int = INT8_OPSET,
                int4_weights: bool = False, metadata: dict[str, str] | None = None) -> onnx.ModelProto:
    """torch module -> ONNX file with the project's graph interface (x, t, y -> out; dynamic batch).

    Graphs over ~1.8 GB of tensors are written with external data: `path` plus one
    `path.name + ".data"` file. The TensorRT-conformance linter runs on the graph; errors
    raise `LintError` (the caller's atomic folder then leaves nothing behind). Returns the
    graph without external tensor data loaded. `int4_weights` stores <= 4-bit weight codes
    as INT4 (opset 21). `metadata` goes into the model's metadata_props (the linter reads
    `float_precision` there).
    """
    kwargs = dict(
        dynamo=False, opset_version=opset, input_names=["x", "t", "y", "time_group"][: len(example)],
        output_names=["out"], dynamic_axes={n: {0: "batch"} for n in ("x", "t", "y", "out")},
        do_constant_folding=True,
        # the plugin's domain, only where the graph has plugin nodes (torch warns about an unused one)
        custom_opsets={PLUGIN_NAMESPACE: 1} if any(isinstance(m, PluginLayoutDiT) for m in module.modules()) else None,
    )
    external = _tensor_bytes(module) > EXTERNAL_DATA_BYTES
    with warnings.catch_warnings(), fusable_gelu(module):
        warnings.simplefilter("ignore")  # the TorchScript exporter announces its deprecation
        if not external:
            buf = io.BytesIO()
            torch.onnx.export(module, example, buf, **kwargs)
            proto = onnx.load_from_string(buf.getvalue())
            if int4_weights:
                pack_int4_weights(proto)
            if metadata:
                onnx.helper.set_model_props(proto, metadata)
            onnx.checker.check_model(proto)
        else:
            # The exporter writes a large model as many tensor files; gather them into one.
            with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
                raw = Path(scratch) / "raw.onnx"
                torch.onnx.export(module, example, str(raw), **kwargs)
                proto = onnx.load(str(raw))
                if int4_weights:
                    pack_int4_weights(proto)
                if metadata:
                    onnx.helper.set_model_props(proto, metadata)
                onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                                location=path.name + ".data", size_threshold=EXTERNAL_TENSOR_BYTES)
                del proto
            onnx.checker.check_model(str(path))  # by path: the checker reads models over 2 GB from disk
            proto = onnx.load(str(path), load_external_data=False)
    errors = [f for f in lint_model(proto) if f.severity == "error"]
    if errors:
        raise LintError(f"{path.name}: {len(errors)} TensorRT-conformance errors:\n" + "\n".join(map(str, errors)))
    if not external:
        onnx.save(proto, str(path))
    return proto


def _graph_entry(folder: Path, name: str, **fields) -> dict:
    """Manifest entry of one graph: its file, hash and, for large graphs, its external-data file."""
    entry = {"file": name, **fields, "sha256": file_sha256(folder / name)}
    if (folder / (name + ".data")).exists():
        entry.update(external_data=name + ".data", external_data_sha256=file_sha256(folder / (name + ".data")))
    return entry




def export_dit(model: DiT, record: CalibrationRecord, out_dir: str | Path, layout: str = "per-group",
               fp32: bool = False, weight_reduce_range: bool | None = None, int4_weights: bool | None = None,
               precision: str = "int8", attention: bool = True, target: str | None = None,
               float_precision: str = "fp32", fused_attention: bool = False, sampling: dict | None = None) -> dict:
    """Write the Q/DQ graph(s) of `layout` (+ `fp32.onnx` with `fp32`) and the manifest.

    `weight_reduce_range=None` picks 7-bit weights when this CPU lacks VNNI (ORT CPU target).
    `int4_weights=None` stores the weights as INT4 (opset 21) when the record's weights have <= 4 bits
    (W4A8); False keeps 4-bit codes in int8 (opset 17). `precision="fp8"` writes float8e4m3fn
    Q/DQ (opset 19) over the record's clipping ranges, for TensorRT on Ada/Hopper; 8-bit
    records are the ones to use. `attention=False` keeps Q·Kᵀ and A·V as float MatMuls.
    `target` (a name of `tqdit_export.targets`) is only written into the manifest.
    `float_precision="fp16"` (strongly typed TensorRT targets): the non-quantized ops and the Q/DQ
    scales in float16, at opset >= 19, except the float32 ops `lint.FP16_EXCEPTIONS` names; the
    graph interface stays float32. `fp32.onnx` stays the float32 reference.
    `fused_attention=True` (TensorRT targets): the fused-attention Q/DQ placement (`qdq_model`) in
    the attention modules whose shapes TensorRT fuses, per-group layout only (the other layouts
    keep the plain placement); the manifest lists them under `fused_attention`. `sampling`
    (`ResolvedModel.sampling()`: pixel_space, cfg_channels) is written as `model.sampling`, the
    defaults of whatever samples the export (`api.spec_of_export`). Returns the manifest.
    """
    out_dir = Path(out_dir)
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is unknown; choose one of {PRECISIONS}")
    if float_precision not in FLOAT_PRECISIONS:
        raise ValueError(f"float_precision {float_precision!r} is unknown; choose one of {FLOAT_PRECISIONS}")
    fp8 = precision == "fp8"
    if fp8 and layout == "plugin":
        raise ValueError("layout 'plugin' writes int8 codes; export FP8 with --layout per-group or single")
    if fp8 and int4_weights:
        raise ValueError("int4_weights and precision fp8 exclude each other: FP8 weights are float8e4m3fn")
    if int4_weights is None:
        int4_weights = record.weight_bits <= 4 and not fp8
    elif int4_weights and record.weight_bits > 4:
        raise ValueError(f"int4_weights: the record has {record.weight_bits}-bit weights; INT4 holds 4 bits at most")
    if weight_reduce_range is None:
        weight_reduce_range = not cpu_has_vnni() and not fp8
    elif weight_reduce_range and fp8:
        raise ValueError("weight_reduce_range is for int8 codes on CPUs without VNNI; FP8 graphs have none")
    opset = FP8_OPSET if fp8 else INT8_OPSET
    if float_precision == "fp16":
        opset = max(opset, FP16_OPSET)
    metadata = {"float_precision": float_precision}
    fused = fused_attention_sites(model, record, attention) if fused_attention and layout == "per-group" else []
    example = _example_inputs(model)
    with atomic_folder(out_dir, MANIFEST) as tmp:
        graphs = []
        inputs = {"x": "float32 (N,C,H,W)", "t": "int64 (N,) training timestep", "y": "int64 (N,) label"}
        if layout == "per-group":
            for g in range(record.time_groups.num_groups):
                name = f"group_{g:02d}.onnx"
                export_onnx(qdq_model(model, record, g, weight_reduce_range, precision, attention, float_precision,
                                      bool(fused)),
                            example, tmp / name, opset=opset, int4_weights=int4_weights, metadata=metadata)
                lo, hi = record.time_groups.timestep_range(g)
                graphs.append(_graph_entry(tmp, name, time_group=g, timesteps=[lo, hi]))
        elif layout in ("single", "plugin"):
            module = (SingleLayoutDiT if layout == "single" else PluginLayoutDiT)(model, record, weight_reduce_range,
                                                                                  precision, attention, float_precision)
            name = f"{layout}.onnx"
            export_onnx(module, (*example, torch.tensor(0)), tmp / name, opset=opset, int4_weights=int4_weights,
                        metadata=metadata)
            graphs.append(_graph_entry(tmp, name, time_group="input"))
            inputs["time_group"] = "int64 scalar: the group whose timestep range holds t"
        else:
            raise ValueError(f"layout {layout!r} is unknown; choose one of {LAYOUTS}")
        manifest = {
            "version": MANIFEST_VERSION,
            "layout": layout,
            "opset": INT4_OPSET if int4_weights else opset,
            "precision": precision,
            # The type of every non-quantized op and Q/DQ scale (fp16 graphs: float32_ops names what stays float32).
            "float_precision": float_precision,
            "inputs": inputs,
            "outputs": {"out": "float32 (N,2C,H,W) epsilon | variance"},
            "model": {"config": record.model_config, "weights_sha256": record.model_hash,
                      **({"sampling": dict(sampling)} if sampling is not None else {})},
            "bits": {"weights": record.weight_bits, "activations": record.activation_bits,
                     "weights_in_graph": "fp8" if fp8 else (7 if weight_reduce_range and record.weight_bits == 8
                                                            else record.weight_bits),
                     "reduce_range": weight_reduce_range,
                     "weights_dtype": "float8e4m3fn" if fp8 else "int4" if int4_weights else "int8"},
            "time_groups": list(record.time_groups.edges),
            # What the graphs quantize: readers that rebuild the fake-quant reference need both.
            "attention": "int8" if attention else "float",
            # attention modules with TensorRT's fused-attention placement (A uniform, Q/DQ on A·V's output)
            "fused_attention": fused,
            "mrq_forms": sorted({q.region for sq in site_quants(record, attention=attention,
                                                                 uniform_operands=fused_attention_operands(fused))
                                 for q in sq.operands.values()} - {"uniform"}),  # of the sites the graphs quantize
            "target": target,
            "calibration": record.method,
            "record_fingerprint": record.fingerprint(),  # readers refuse another record (manifest.check_record)
            "graphs": graphs,
        }
        if float_precision == "fp16":
            manifest["float32_ops"] = dict(FP16_EXCEPTIONS)
        if layout == "plugin":
            manifest["plugin"] = {"name": PLUGIN_NAME, "namespace": PLUGIN_NAMESPACE, "version": PLUGIN_VERSION,
                                  "library": "libtqdit_trt_plugins.so (cmake -S trt_plugins/csrc)",
                                  "python": "trt_plugins.python_plugin.register()"}
        if fp32:
            export_onnx(copy.deepcopy(model).eval(), example, tmp / "fp32.onnx")
            manifest["fp32"] = _graph_entry(tmp, "fp32.onnx")
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest
