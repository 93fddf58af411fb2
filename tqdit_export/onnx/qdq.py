"""Export modules: the fake-quant sites of a calibrated DiT, written so ONNX gets explicit Q/DQ.

Each module computes in torch exactly what its ONNX nodes compute, so the exported graph
can be checked against the module and the module against the calibration's fake-quant
model. What the ONNX graph holds, per TensorRT's explicit-quantization rules:
- activations: QuantizeLinear -> DequantizeLinear, per tensor, constant positive scale,
  int8 zero point 0; widths below 8 as Clip(lo*s, hi*s) in front (exact);
- weights: an int8 initializer [in, out] -> DequantizeLinear(axis=1, per output channel)
  straight into the MatMul (no Transpose between DQ and GEMM, which would break fusion);
- two-region (MRQ) operands: split by value with Where/Clip, each part Q/DQ'd with its
  own scale, two GEMMs summed (exact, since the GEMM is linear).
LayerNorm, adaLN, softmax, GELU and residual adds stay in float.

The ONNX nodes come from `torch.autograd.Function.symbolic`, which the TorchScript-based
exporter (`torch.onnx.export(..., dynamo=False)`) honours.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from calibration.quantizers import fake_quant, gelu_negative_scale, qrange


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


class _DequantWeight(torch.autograd.Function):
    """int8 weight codes [in, out] and per-output-channel scales (out,) -> float weight."""

    @staticmethod
    def forward(ctx, codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return codes.float() * scale

    @staticmethod
    def symbolic(g, codes, scale):  # noqa: D102
        out = scale.type().sizes()[0]
        zp = g.op("Constant", value_t=torch.zeros(out, dtype=torch.int8))
        return g.op("DequantizeLinear", codes, scale, zp, axis_i=1)


def qdq(x: torch.Tensor, scale: float, bits: int) -> torch.Tensor:
    """Fake-quantize `x` as one ONNX Q/DQ pair (a Clip in front below 8 bits)."""
    return _QDQ.apply(x, float(scale), int(bits))


class ActivationQDQ(nn.Module):
    """One activation operand of one time group: uniform, or split into two regions.

    `forward` returns the list of quantized parts whose GEMMs are summed (1 or 2 parts).
    """

    def __init__(self, region: str, bits: int, scale: float | None = None, boundary: float | None = None,
                 scale_low: float | None = None, scale_high: float | None = None) -> None:
        super().__init__()
        self.region, self.bits = region, bits
        self.scale, self.boundary, self.scale_low, self.scale_high = scale, boundary, scale_low, scale_high

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.region == "uniform":
            return [qdq(x, self.scale, self.bits)]
        if self.region == "softmax":
            low = x < self.boundary
            zero = torch.zeros_like(x)
            return [qdq(torch.where(low, x, zero), self.scale_low, self.bits),
                    qdq(torch.where(low, zero, x), self.scale_high, self.bits)]
        return [qdq(torch.clamp(x, max=0.0), self.scale_low, self.bits),
                qdq(torch.clamp(x, min=0.0), self.scale_high, self.bits)]


def activation_qdq(record, site, operand: str, group: int, reduce_range: bool = False) -> ActivationQDQ:
    """The Q/DQ of `operand` of `site` for time `group`, read from a CalibrationRecord.

    `reduce_range` (uniform 8-bit operands only) keeps the clipping range with 7-bit codes.
    """
    region, bits = site.region(operand), record.activation_bits
    if region == "uniform":
        scale = float(record.tensor(site.name, operand, "scale")[group])
        if reduce_range and bits == 8:
            bits, scale = 7, scale * qrange(8)[1] / qrange(7)[1]
        return ActivationQDQ(region, bits, scale=scale)
    boundary = float(record.tensor(site.name, operand, "boundary")[group])
    low = float(record.tensor(site.name, operand, "scale_low")[group])
    if region == "gelu":
        low = gelu_negative_scale(bits)
    return ActivationQDQ(region, bits, boundary=boundary, scale_low=low,
                         scale_high=float(record.tensor(site.name, operand, "scale_high")[group]))


class QDQLinear(nn.Module):
    """Linear layer as Q/DQ input part(s) x DQ(int8 weight) + bias."""

    def __init__(self, linear: nn.Linear, act: ActivationQDQ, weight_scale: torch.Tensor, weight_bits: int) -> None:
        super().__init__()
        lo, hi = qrange(weight_bits)
        codes = torch.clamp(torch.round(linear.weight.detach() / weight_scale[:, None]), lo, hi)
        # Stored as the MatMul's B operand [in, out]: per-output-channel quantization is axis 1.
        self.register_buffer("weight_codes", codes.T.contiguous().to(torch.int8))
        self.register_buffer("weight_scale", weight_scale.detach().float().clone())
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = _DequantWeight.apply(self.weight_codes, self.weight_scale)
        parts = self.act(x)
        out = parts[0] @ w
        for part in parts[1:]:
            out = out + part @ w
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
        a_parts = self.qa(a)
        out = a_parts[0] @ b_parts[0]
        for part in a_parts[1:]:
            out = out + part @ b_parts[0]
        return out
