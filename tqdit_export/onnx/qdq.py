"""Export modules: the fake-quant sites of a calibrated DiT, written so ONNX gets explicit Q/DQ.

Each module computes in torch exactly what its ONNX nodes compute, so the exported graph
can be checked against the module and the module against the calibration's fake-quant
model. What the ONNX graph holds, per TensorRT's explicit-quantization rules:
- activations: QuantizeLinear -> DequantizeLinear, per tensor, constant positive scale,
  int8 zero point 0; widths below 8 as Clip(lo*s, hi*s) in front (exact);
- weights: an int8 initializer [in, out] -> DequantizeLinear(axis=1, per output channel)
  straight into the MatMul (no Transpose between DQ and GEMM, which would break fusion);
- two-region (MRQ) operands: split by value with Where/Clip, each part Q/DQ'd with its
  own scale, two GEMMs summed (exact, since the GEMM is linear);
- FP8 (E4M3, for Ada/Hopper): the same graph with float8e4m3fn codes and zero points. The
  record's integer clipping ranges carry over, amax = s * qmax  ->  s_fp8 = amax / 448.
LayerNorm, adaLN, softmax, GELU and residual adds stay in float.

FP16 float ops (`export.qdq_model(float_precision="fp16")`, for strongly typed TensorRT
networks): every float tensor of the graph is float16 except the timestep's sinusoidal
embedding and the graph's float32 interface. The Q/DQ scales are float16 too, so each DequantizeLinear yields float16 (its
output type is its scale's type) and every quantized GEMM reads and writes float16: no Cast
sits between a DQ and its GEMM. A scale below float16's normal range (2^-14) would lose
precision (or flush to zero): such an activation part is multiplied by 2^k before its
Q/DQ (exact) and its GEMM output by 2^-k; such a weight channel's scale is raised to 2^-14
and its codes re-rounded.

The ONNX nodes come from `torch.autograd.Function.symbolic`, which the TorchScript-based
exporter (`torch.onnx.export(..., dynamo=False)`) honours.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from calibration.forms import OperandQuant, select
from calibration.quantizers import fake_quant, qrange
from trt_plugins.reference import PLUGIN_NAME, PLUGIN_NAMESPACE, PLUGIN_VERSION

PRECISIONS = ("int8", "fp8")
FLOAT_PRECISIONS = ("fp32", "fp16")  # the type of the graph's float (non-quantized) ops and of its Q/DQ scales
FP8_MAX = 448.0  # largest finite float8e4m3fn value
FP16_MIN_NORMAL = 2.0**-14  # below it float16 is subnormal: a scale there keeps only a few significant bits


def _float_type(x) -> torch.dtype:
    """The float dtype of a traced graph value (float16 in an FP16 export, else float32)."""
    return torch.float16 if x.type().scalarType() == "Half" else torch.float32


def pow2_prescale(scales: list[float]) -> float:
    """The power of two f >= 1 that lifts the smallest of `scales` into float16's normal range
    (1.0 when it is there already): Q/DQ(x * f, s * f) == f * Q/DQ(x, s) exactly."""
    smallest = min(scales)
    if smallest >= FP16_MIN_NORMAL:
        return 1.0
    return float(2.0 ** math.ceil(math.log2(FP16_MIN_NORMAL / smallest)))


def fake_quant_fp8(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Q/DQ through float8e4m3fn: saturate to +-448, round to nearest even (ONNX QuantizeLinear-19, saturate=1)."""
    return (x / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).to(x.dtype) * scale


def fp8_scale(scale, bits: int):
    """The FP8 scale with the clipping range of a `bits`-bit integer scale: s * qmax / 448."""
    return scale * (qrange(bits)[1] / FP8_MAX)


class _QDQ(torch.autograd.Function):
    """Per-tensor Q/DQ with a constant scale (a Python float, so the graph gets a constant)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float, bits: int) -> torch.Tensor:  # noqa: D102
        return fake_quant(x, torch.tensor(scale, dtype=x.dtype), bits)

    @staticmethod
    def symbolic(g, x, scale: float, bits: int):  # noqa: D102
        lo, hi = qrange(bits)
        dtype = _float_type(x)  # the scale's type is x's, and the DQ output's is the scale's
        if bits < 8:  # narrower codes: clip to their range, then int8 Q/DQ rounds identically
            x = g.op("Clip", x, g.op("Constant", value_t=torch.tensor(lo * scale, dtype=dtype)),
                     g.op("Constant", value_t=torch.tensor(hi * scale, dtype=dtype)))
        s = g.op("Constant", value_t=torch.tensor(scale, dtype=dtype))
        zp = g.op("Constant", value_t=torch.tensor(0, dtype=torch.int8))
        return g.op("DequantizeLinear", g.op("QuantizeLinear", x, s, zp), s, zp)


class _QDQFP8(torch.autograd.Function):
    """Per-tensor Q/DQ through float8e4m3fn with a constant scale."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:  # noqa: D102
        return fake_quant_fp8(x, torch.tensor(scale, dtype=x.dtype))

    @staticmethod
    def symbolic(g, x, scale: float):  # noqa: D102
        s = g.op("Constant", value_t=torch.tensor(scale, dtype=_float_type(x)))
        zp = g.op("Constant", value_t=torch.zeros((), dtype=torch.float8_e4m3fn))
        return g.op("DequantizeLinear", g.op("QuantizeLinear", x, s, zp), s, zp)


class _DequantWeight(torch.autograd.Function):
    """int8 (or float8e4m3fn) weight codes [in, out] and per-output-channel scales (out,) -> weight in the scale's type."""

    @staticmethod
    def forward(ctx, codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return codes.to(scale.dtype) * scale

    @staticmethod
    def symbolic(g, codes, scale):  # noqa: D102
        out = scale.type().sizes()[0]
        zp = g.op("Constant", value_t=torch.zeros(out, dtype=codes.type().dtype()))
        return g.op("DequantizeLinear", codes, scale, zp, axis_i=1)


class _TimeGroupQuantize(torch.autograd.Function):
    """x -> int8 codes with the scale of the time group read at run time: the TensorRT plugin.

    The ONNX node is the custom op `tqdit::TimeGroupQuantize` with the attributes TensorRT's
    ONNX parser uses to find the plugin (`plugin_namespace`, `plugin_version`); its
    arithmetic is trt_plugins.reference.time_group_quantize.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, group: torch.Tensor, scales: tuple[float, ...], bits: int) -> torch.Tensor:  # noqa: D102
        lo, hi = qrange(bits)
        table = torch.tensor(scales, dtype=x.dtype)
        return torch.clamp(torch.round(x / table[group.long()]), lo, hi).to(torch.int8)

    @staticmethod
    def symbolic(g, x, group, scales: tuple[float, ...], bits: int):  # noqa: D102
        out = g.op(f"{PLUGIN_NAMESPACE}::{PLUGIN_NAME}", x, group, scales_f=list(scales), bits_i=int(bits),
                   plugin_namespace_s=PLUGIN_NAMESPACE, plugin_version_s=PLUGIN_VERSION)
        out.setType(x.type().with_dtype(torch.int8))
        return out


class _DequantCodes(torch.autograd.Function):
    """int8 codes -> float (of `dtype`) with scale 1: the DequantizeLinear TensorRT fuses into the GEMM after the plugin."""

    @staticmethod
    def forward(ctx, codes: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:  # noqa: D102
        return codes.to(dtype)

    @staticmethod
    def symbolic(g, codes, dtype: torch.dtype):  # noqa: D102
        return g.op("DequantizeLinear", codes, g.op("Constant", value_t=torch.tensor(1.0, dtype=dtype)),
                    g.op("Constant", value_t=torch.tensor(0, dtype=torch.int8)))


class _TanhGelu(torch.autograd.Function):
    """GELU, tanh approximation: torch's own kernel, written to ONNX as the node order ONNX Runtime fuses.

    The TorchScript exporter writes 0.5 * (x * (1 + tanh(...))) with x^3 as x * (x * x): nine
    float ops over the fc1 output, which ONNX Runtime's CPU provider runs one by one (about a
    fifth of a DiT-B/2 INT8 call on a VNNI CPU). Written as (0.5 * x) * (1 + tanh(sqrt(2/pi) *
    (x + 0.044715 * x^3))) with Pow, its FastGeluFusion makes them one FastGelu kernel. The
    same standard ops for every other runtime (TensorRT fuses pointwise chains itself)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return torch.nn.functional.gelu(x, approximate="tanh")

    @staticmethod
    def symbolic(g, x):  # noqa: D102
        dtype = _float_type(x)

        def const(v: float):
            return g.op("Constant", value_t=torch.tensor(v, dtype=dtype))

        cube = g.op("Pow", x, const(3.0))
        inner = g.op("Mul", g.op("Add", x, g.op("Mul", cube, const(0.044715))), const(math.sqrt(2 / math.pi)))
        return g.op("Mul", g.op("Mul", x, const(0.5)), g.op("Add", g.op("Tanh", inner), const(1.0)))


class TanhGelu(nn.Module):
    """nn.GELU(approximate="tanh") for export: the same values, the ONNX form `_TanhGelu` writes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _TanhGelu.apply(x)


def qdq(x: torch.Tensor, scale: float, bits: int | str) -> torch.Tensor:
    """Fake-quantize `x` as one ONNX Q/DQ pair: `bits` integer codes (a Clip in front below 8) or "fp8"."""
    if bits == "fp8":
        return _QDQFP8.apply(x, float(scale))
    return _QDQ.apply(x, float(scale), int(bits))


class GroupInput:
    """Where the single layout's modules read the time group: the graph input `time_group`."""

    plugin = False

    def __init__(self) -> None:
        self.index: torch.Tensor | None = None

    def set(self, time_group: torch.Tensor) -> None:
        """Take the graph input `time_group` (int64 scalar) for the sites of this forward pass."""
        self.index = time_group


class PluginGroupInput(GroupInput):
    """The plugin layout's time group: an int32 [1] tensor the TimeGroupQuantize plugins read on the device."""

    plugin = True

    def set(self, time_group: torch.Tensor) -> None:
        self.index = time_group.reshape(1).to(torch.int32)  # cast once here for every site


class ActivationQDQ(nn.Module):
    """One activation operand, as `calibration.forms.OperandQuant` reads it from the record, for
    a fixed time group or for all of them.

    Each part of the operand (its selection of x, then Q/DQ) becomes graph nodes. With a fixed
    `group` (per-group layout) every scale and threshold is a graph constant. With a
    `GroupInput` (single layout) each part is rescaled at run time,
        x * r_g -> Q/DQ(s0) -> GEMM -> * 1/r_g,   with s0 = 1 and r_g = 1/s_g,
    which equals Q/DQ with scale s_g while the Q/DQ scale stays the constant that TensorRT
    needs. The rescale is written as a division by s_g (gathered from the group's table):
    QuantizeLinear divides by its scale, so Div(x, s_g) then Q(1) rounds the very float
    x / s_g that Q(s_g) rounds, and the codes are bit-identical to the per-group graph's.
    (A multiply by s0/s_g followed by Q(s0) rounds twice; at 6 bits the code flips that
    caused reached 1e-2 relative error per call in one time group.)
    With a `PluginGroupInput` (plugin layout) the plugin does the division on the device,
        TimeGroupQuantize(x, g) -> int8 codes -> DQ(1) -> GEMM -> * s_g.
    `forward` returns the quantized parts whose GEMMs are summed, each with the factor its
    GEMM output is multiplied by (None for 1); `offset` is what the consumer adds back.
    `precision="fp8"`: float8e4m3fn codes over the same clipping ranges (thresholds unchanged; a
    shifted form becomes its unshifted range, `OperandQuant.unshifted`).
    `float16=True` (FP16 exports): a part whose smallest scale lies below float16's normal
    range is multiplied by a power of two f before its Q/DQ, with scales s * f, and its GEMM
    output by 1/f (`pow2_prescale`; exact, and a no-op for the scales records hold today).
    """

    def __init__(self, quant: OperandQuant, group: int | GroupInput, precision: str = "int8",
                 float16: bool = False) -> None:
        super().__init__()
        fp8 = precision == "fp8"
        if fp8 and isinstance(group, GroupInput) and group.plugin:
            raise ValueError("the TimeGroupQuantize plugin writes int8 codes; export FP8 with the per-group "
                             "or single layout")
        if fp8:
            quant = quant.unshifted()
        self.quant, self.group = quant, group
        self.codes = "fp8" if fp8 else quant.bits
        # Per part: its selection and per-group tables (FP8 steps keep the integer clipping range).
        self.parts = []
        for p in quant.parts:
            scale = [fp8_scale(v, quant.bits) for v in p.scale] if fp8 else list(p.scale)
            factor = pow2_prescale(scale) if float16 else 1.0
            self.parts.append((p.selection, [v * factor for v in scale],
                               None if p.threshold is None else list(p.threshold), factor))
        if isinstance(group, GroupInput):
            for i, (_, scale, threshold, _) in enumerate(self.parts):
                self.register_buffer(f"scale_{i}", torch.tensor(scale, dtype=torch.float32))
                if threshold is not None:
                    self.register_buffer(f"threshold_{i}", torch.tensor(threshold, dtype=torch.float32))

    def _value(self, name: str, table: list[float]):
        """A per-group value: a constant for a fixed group (or one shared by all groups), else
        gathered from the buffer `name` at the graph's time group."""
        if not isinstance(self.group, GroupInput):
            return table[self.group]
        if len(set(table)) == 1:
            return table[0]
        return getattr(self, name)[self.group.index]

    def _part(self, x: torch.Tensor, i: int) -> tuple[torch.Tensor, torch.Tensor | float | None]:
        selection, table, threshold, factor = self.parts[i]
        thr = None if threshold is None else self._value(f"threshold_{i}", threshold)
        if isinstance(thr, float) and x.dtype == torch.float16:
            # A Python float would make the exporter compare in float32 (a Cast of x in front of Less)
            thr = torch.tensor(thr, dtype=x.dtype)
        x = select(x, selection, thr)
        if factor != 1.0:  # a power of two: exact, and the tables hold s * factor
            x = x * factor
        undo = None if factor == 1.0 else 1.0 / factor
        if not isinstance(self.group, GroupInput):
            return qdq(x, table[self.group], self.codes), undo
        if len(set(table)) == 1:  # the same scale in every group: a plain constant Q/DQ
            return qdq(x, table[0], self.codes), undo
        scale = self._value(f"scale_{i}", table)
        restore = scale if undo is None else scale * undo
        if self.group.plugin:
            # The plugin reads float32 (an FP16 export casts in front of it; a no-op in FP32 graphs).
            codes = _TimeGroupQuantize.apply(x.float(), self.group.index, tuple(table), self.codes)
            return _DequantCodes.apply(codes, x.dtype), restore
        return qdq(x / scale, 1.0, self.codes), restore

    def forward(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        return [self._part(x, i) for i in range(len(self.parts))]


class QDQLinear(nn.Module):
    """Linear layer as Q/DQ input part(s) x DQ(int8 or float8e4m3fn weight) + bias.

    An operand with an offset c (the shifted GELU form) adds W_hat c, folded into the bias:
    a constant per time group (gathered from a (G, out) table in the single layout).
    """

    def __init__(self, linear: nn.Linear, act: ActivationQDQ, weight_scale: torch.Tensor, weight_bits: int,
                 precision: str = "int8", float16: bool = False) -> None:
        super().__init__()
        weight = linear.weight.detach()
        if precision == "fp8":
            weight_scale = fp8_scale(weight_scale, weight_bits)
        if float16:
            # A channel whose scale float16 holds only as a subnormal (max|w| < qmax * 2^-14) gets the
            # smallest normal scale and codes rounded on it: its weights keep an absolute error <= 2^-15.
            weight_scale = weight_scale.clamp(min=FP16_MIN_NORMAL)
        if precision == "fp8":
            codes = (weight / weight_scale[:, None]).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
        else:
            lo, hi = qrange(weight_bits)
            codes = torch.clamp(torch.round(weight / weight_scale[:, None]), lo, hi).to(torch.int8)
        # Stored as the MatMul's B operand [in, out]: per-output-channel quantization is axis 1.
        self.register_buffer("weight_codes", codes.T.contiguous())
        self.register_buffer("weight_scale", weight_scale.detach().float().clone())
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        self.act = act
        self.offset = act.quant.offset
        if self.offset is not None:
            # W_hat c with W_hat the dequantized weight, summed in float64, plus the bias: (G, out).
            w_hat = codes.double() * self.weight_scale.double()[:, None]
            bias = torch.zeros(w_hat.shape[0], dtype=torch.float64) if self.bias is None else self.bias.double()
            table = bias[None, :] + torch.tensor(self.offset, dtype=torch.float64)[:, None] * w_hat.sum(dim=1)[None, :]
            self.register_buffer("bias_table", table.float())

    def _bias(self) -> torch.Tensor | None:
        if self.offset is None:
            return self.bias
        if not isinstance(self.act.group, GroupInput):
            return self.bias_table[self.act.group]
        return self.bias_table[self.act.group.index]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = _DequantWeight.apply(self.weight_codes, self.weight_scale)
        out = None
        for part, restore in self.act(x):
            y = part @ w
            y = y if restore is None else y * restore
            out = y if out is None else out + y
        bias = self._bias()
        return out if bias is None else out + bias


class QDQMatMul(nn.Module):
    """Activation x activation GEMM with both operands Q/DQ'd (a may have two regions), and
    optionally its output: TensorRT's fused attention wants a Q/DQ right after A·V. `out` is
    the consumer's quantizer (proj's input: the same values, transposed and reshaped), so the
    consumer's own Q/DQ re-quantizes values already on its grid, which changes none of them."""

    def __init__(self, a: ActivationQDQ, b: ActivationQDQ, out: ActivationQDQ | None = None) -> None:
        super().__init__()
        for q in (a, b, out):
            if q is not None and q.quant.offset is not None:
                raise ValueError(f"{q.quant.site}.{q.quant.operand}: the {q.quant.region} form has an offset, which "
                                 "only a linear layer can fold into its bias")
        if out is not None and len(out.parts) != 1:
            raise ValueError(f"{out.quant.site}.{out.quant.operand}: an output Q/DQ takes one uniform part, "
                             f"not the {out.quant.region} form")
        self.qa, self.qb, self.qout = a, b, out

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        b_parts = self.qb(b)
        if len(b_parts) != 1:
            raise ValueError("a two-region second operand is not supported: put MRQ on operand a")
        b_q, b_restore = b_parts[0]
        out = None
        for part, restore in self.qa(a):
            y = part @ b_q
            for factor in (restore, b_restore):
                y = y if factor is None else y * factor
            out = y if out is None else out + y
        if self.qout is not None:
            [(out, restore)] = self.qout(out)
            out = out if restore is None else out * restore
        return out
