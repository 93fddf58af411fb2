"""Quantizer math: symmetric uniform fake quantization (the MRQ forms built on it: `forms`).

Only what a TensorRT/ONNX Q/DQ graph can execute is representable here: zero point 0,
positive constant scales, integer codes in the signed range of `bits`
([-2^(b-1), 2^(b-1)-1]; 6 bits is int8 Q/DQ behind a Clip, exact). Rounding is
half-to-even on x / s, as ONNX QuantizeLinear does.

Multi-region (MRQ) quantizers split a tensor into parts, each with its own per-tensor
scale; the consumer is linear, so W x = W x_a + W x_b is exported as Q/DQ GEMMs summed
(exact). `calibration.forms` defines them.
"""
from __future__ import annotations

import torch

# GELU (tanh approximation) has its minimum at about -0.16997: the negative region of a
# post-GELU activation never goes below it.
GELU_MIN = -0.16997


def qrange(bits: int) -> tuple[int, int]:
    """Signed integer range of a symmetric `bits`-bit code: (-2^(b-1), 2^(b-1)-1)."""
    if not 2 <= bits <= 8:
        raise ValueError(f"bits={bits}: quantizers support 2..8 bits (int8 Q/DQ carries them)")
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def narrow_codes(scale, bits: int):
    """(scale, bits) with 8-bit codes narrowed to 7 over the same clipping range (step x 127/63);
    other widths unchanged. For ONNX Runtime's u8 x s8 CPU kernel without VNNI, which adds pairs
    of products in saturating int16 that full-range int8 B operands overflow. `scale`: a float
    or a tensor."""
    if bits != 8:
        return scale, bits
    return scale * (qrange(8)[1] / qrange(7)[1]), 7


def initial_scale(x_absmax: torch.Tensor | float, bits: int) -> torch.Tensor:
    """s0 = max|x| / (2^(b-1) - 0.5): the TQ-DiT/PTQ4ViT starting point of the scale search."""
    s0 = torch.as_tensor(x_absmax, dtype=torch.float32) / (2 ** (bits - 1) - 0.5)
    return torch.clamp(s0, min=1e-8)  # a scale must stay strictly positive


def minmax_scale(x_absmax: torch.Tensor | float, bits: int) -> torch.Tensor:
    """max|x| maps to the largest positive code."""
    return torch.clamp(torch.as_tensor(x_absmax, dtype=torch.float32) / qrange(bits)[1], min=1e-8)


def fake_quant(x: torch.Tensor, scale: torch.Tensor, bits: int, axis: int | None = None) -> torch.Tensor:
    """Dequant(Quant(x)): per-tensor (scalar scale) or per-channel along `axis`."""
    lo, hi = qrange(bits)
    if axis is not None and scale.dim() == 1:
        shape = [1] * x.dim()
        shape[axis] = -1
        scale = scale.view(shape)
    return torch.clamp(torch.round(x / scale), lo, hi) * scale
