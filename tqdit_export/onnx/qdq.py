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

The ONNX nodes come from `torch.autograd.Function.symbolic`, which the TorchScript-based
exporter (`torch.onnx.export(..., dynamo=False)`) honours.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from calibration.quantizers import fake_quant, gelu_negative_scale, narrow_codes, qrange
from trt_plugins.reference import PLUGIN_NAME, PLUGIN_NAMESPACE, PLUGIN_VERSION

PRECISIONS = ("int8", "fp8")
FP8_MAX = 448.0  # largest finite float8e4m3fn value


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
        if bits < 8:  # narrower codes: clip to their range, then int8 Q/DQ rounds identically
            x = g.op("Clip", x, g.op("Constant", value_t=torch.tensor(lo * scale, dtype=torch.float32)),
                     g.op("Constant", value_t=torch.tensor(hi * scale, dtype=torch.float32)))
        s = g.op("Constant", value_t=torch.tensor(scale, dtype=torch.float32))
        zp = g.op("Constant", value_t=torch.tensor(0, dtype=torch.int8))
        return g.op("DequantizeLinear", g.op("QuantizeLinear", x, s, zp), s, zp)


class _QDQFP8(torch.autograd.Function):
    """Per-tensor Q/DQ through float8e4m3fn with a constant scale."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:  # noqa: D102
        return fake_quant_fp8(x, torch.tensor(scale, dtype=x.dtype))

    @staticmethod
    def symbolic(g, x, scale: float):  # noqa: D102
        s = g.op("Constant", value_t=torch.tensor(scale, dtype=torch.float32))
        zp = g.op("Constant", value_t=torch.zeros((), dtype=torch.float8_e4m3fn))
        return g.op("DequantizeLinear", g.op("QuantizeLinear", x, s, zp), s, zp)


class _DequantWeight(torch.autograd.Function):
    """int8 (or float8e4m3fn) weight codes [in, out] and per-output-channel scales (out,) -> float weight."""

    @staticmethod
    def forward(ctx, codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return codes.float() * scale

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
    """int8 codes -> float with scale 1: the DequantizeLinear TensorRT fuses into the GEMM after the plugin."""

    @staticmethod
    def forward(ctx, codes: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return codes.float()

    @staticmethod
    def symbolic(g, codes):  # noqa: D102
        return g.op("DequantizeLinear", codes, g.op("Constant", value_t=torch.tensor(1.0, dtype=torch.float32)),
                    g.op("Constant", value_t=torch.tensor(0, dtype=torch.int8)))


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
    """One activation operand: uniform or two-region, for a fixed time group or all of them.

    With a fixed `group` (per-group layout) every scale is a graph constant. With a
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
    GEMM output is multiplied by (None for 1).
    """

    def __init__(self, region: str, bits: int | str, group: int | GroupInput, scale: list[float] | None = None,
                 boundary: list[float] | None = None, scale_low: list[float] | None = None,
                 scale_high: list[float] | None = None) -> None:
        super().__init__()
        if bits == "fp8" and isinstance(group, GroupInput) and group.plugin:
            raise ValueError("the TimeGroupQuantize plugin writes int8 codes; export FP8 with the per-group "
                             "or single layout")
        self.region, self.bits, self.group = region, bits, group
        self.tables = {"scale": scale, "boundary": boundary, "scale_low": scale_low, "scale_high": scale_high}
        for name, table in self.tables.items():
            if table is not None and isinstance(group, GroupInput):
                t = torch.tensor(table, dtype=torch.float32)
                self.register_buffer(f"{name}_table", t)

    def _value(self, name: str):
        if isinstance(self.group, GroupInput):
            return getattr(self, f"{name}_table")[self.group.index]
        return self.tables[name][self.group]

    def _part(self, x: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        table = self.tables[name]
        if not isinstance(self.group, GroupInput):
            return qdq(x, table[self.group], self.bits), None
        if len(set(table)) == 1:  # the same scale in every group: a plain constant Q/DQ
            return qdq(x, table[0], self.bits), None
        scale = self._value(name)
        if self.group.plugin:
            return _DequantCodes.apply(_TimeGroupQuantize.apply(x, self.group.index, tuple(table), self.bits)), scale
        return qdq(x / scale, 1.0, self.bits), scale

    def forward(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        if self.region == "uniform":
            return [self._part(x, "scale")]
        if self.region == "softmax":
            low = x < self._value("boundary")
            zero = torch.zeros_like(x)
            return [self._part(torch.where(low, x, zero), "scale_low"),
                    self._part(torch.where(low, zero, x), "scale_high")]
        return [self._part(torch.clamp(x, max=0.0), "scale_low"), self._part(torch.clamp(x, min=0.0), "scale_high")]


def activation_qdq(record, site, operand: str, group: int | GroupInput, reduce_range: bool = False,
                   precision: str = "int8") -> ActivationQDQ:
    """The Q/DQ of `operand` of `site`, read from a CalibrationRecord, for one time group or all.

    `reduce_range` (uniform 8-bit operands only) keeps the clipping range with 7-bit codes.
    `precision="fp8"`: float8e4m3fn codes over the same clipping ranges (MRQ boundaries unchanged).
    """
    region, bits = site.region(operand), record.activation_bits

    def table(name: str) -> list[float]:
        values = [float(v) for v in record.tensor(site.name, operand, name)]
        return [fp8_scale(v, bits) for v in values] if precision == "fp8" else values

    codes = "fp8" if precision == "fp8" else bits
    if region == "uniform":
        scale = table("scale")
        if reduce_range and precision == "int8":
            factor, codes = narrow_codes(1.0, bits)
            scale = [s * factor for s in scale]
        return ActivationQDQ(region, codes, group, scale=scale)
    low = table("scale_low")
    if region == "gelu":
        low = [gelu_negative_scale(bits)] * len(low)
        low = [fp8_scale(v, bits) for v in low] if precision == "fp8" else low
    boundary = [float(v) for v in record.tensor(site.name, operand, "boundary")]
    return ActivationQDQ(region, codes, group, boundary=boundary, scale_low=low, scale_high=table("scale_high"))


class QDQLinear(nn.Module):
    """Linear layer as Q/DQ input part(s) x DQ(int8 or float8e4m3fn weight) + bias."""

    def __init__(self, linear: nn.Linear, act: ActivationQDQ, weight_scale: torch.Tensor, weight_bits: int,
                 precision: str = "int8") -> None:
        super().__init__()
        weight = linear.weight.detach()
        if precision == "fp8":
            weight_scale = fp8_scale(weight_scale, weight_bits)
            codes = (weight / weight_scale[:, None]).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
        else:
            lo, hi = qrange(weight_bits)
            codes = torch.clamp(torch.round(weight / weight_scale[:, None]), lo, hi).to(torch.int8)
        # Stored as the MatMul's B operand [in, out]: per-output-channel quantization is axis 1.
        self.register_buffer("weight_codes", codes.T.contiguous())
        self.register_buffer("weight_scale", weight_scale.detach().float().clone())
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = _DequantWeight.apply(self.weight_codes, self.weight_scale)
        out = None
        for part, restore in self.act(x):
            y = part @ w
            y = y if restore is None else y * restore
            out = y if out is None else out + y
        return out if self.bias is None else out + self.bias


class QDQMatMul(nn.Module):
    """Activation x activation GEMM with both operands Q/DQ'd (a may have two regions)."""

    def __init__(self, a: ActivationQDQ, b: ActivationQDQ) -> None:
        super().__init__()
        self.qa, self.qb = a, b

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
        return out
