"""How an activation operand is quantized, in one place: the quantizer forms and the typed
reading of a record.

Every quantized operand is a sum of parts plus an optional offset,

    x_hat = sum_p DQ(Q(select_p(x), s_p)) + offset,

each part a standard per-tensor Q/DQ (zero point 0) of a selection of x. A GEMM consumer
is linear, so W x_hat = sum_p W DQ(Q(part_p)) + W offset: one Q/DQ GEMM per part, summed,
and the offset folded into the bias (exact in algebra). The forms:

| region              | parts                                               | GEMMs | record tensors                     |
|---------------------|-----------------------------------------------------|-------|------------------------------------|
| `uniform`           | x, step s                                           | 1     | scale                              |
| `softmax`           | x·[x<r], step r/qmax; x·[x>=r], step 1/qmax (paper) | 2     | boundary, scale_low, scale_high    |
| `softmax-saturate`  | x, step r/qmax (saturates at r); Max(x−r, 0), step (1−r)/qmax | 2 | boundary, scale_low, scale_high |
| `gelu`              | min(x,0), step −GELU_MIN/2^(b−1); max(x,0), step s (paper) | 2 | boundary (0), scale_low, scale_high |
| `gelu-shift`        | x−c, step s, offset c: [GELU_MIN, hi] on all codes   | 1     | scale, offset                      |

`softmax` and `gelu` are TQ-DiT's multi-region quantizers as the paper writes them (a
compare and Where, or two clamps, and two GEMMs). `softmax-saturate` has the same low region
(QuantizeLinear already clamps everything >= r to r) and adds only what lies above r, with
no compare or Where. `gelu-shift` is one GEMM: a symmetric quantizer of x − c whose code
range spans [GELU_MIN, hi], twice the positive codes of the paper's form; it suits only a
linear consumer (the offset becomes W·c in the bias).

The search of every form has one parameter per time group: the
step of a uniform operand, the boundary r = 2^-i of a softmax form, the positive region's
step of a GELU form (hi = qmax · step). `Form.tensors` turns the parameters into the record's
tensors; `operand_quant` reads them back into an `OperandQuant`, which the fake-quant model
(`calibration.calibrate.quantize_model`) and the ONNX export (`tqdit_export/onnx/qdq.py`)
both execute: a form is written once.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import torch

from .quantizers import GELU_MIN, fake_quant, narrow_codes, qrange

def _zero(x: torch.Tensor) -> torch.Tensor:
    """A 0-d zero of x's type: broadcast by Where/Max, it exports as a constant (zeros_like would be a
    ConstantOfShape that ONNX Runtime fills at x's full size on every call: 2 % of a DiT-B/2 call)."""
    return torch.zeros((), dtype=x.dtype, device=x.device)


# What a part selects from x (thr: the part's threshold r, or the offset c).
SELECTIONS: dict[str, Callable[[torch.Tensor, torch.Tensor | float | None], torch.Tensor]] = {
    "all": lambda x, thr: x,
    "below": lambda x, thr: torch.where(x < thr, x, _zero(x)),
    "at_or_above": lambda x, thr: torch.where(x < thr, _zero(x), x),
    "negative": lambda x, thr: torch.clamp(x, max=0.0),
    "positive": lambda x, thr: torch.clamp(x, min=0.0),
    # Max, not Relu: ONNX Runtime folds a Relu in front of a QuantizeLinear into it, which is
    # wrong for float8 codes (they are signed around zero point 0, not clamped below).
    "excess": lambda x, thr: torch.maximum(x - thr, _zero(x)),
    "shifted": lambda x, thr: x - thr,
}


def select(x: torch.Tensor, selection: str, threshold: torch.Tensor | float | None) -> torch.Tensor:
    """The part `selection` of x (torch ops that export to Less/Where, Clip, Sub, Max)."""
    return SELECTIONS[selection](x, threshold)


@dataclass(frozen=True)
class Part:
    """One Q/DQ part of an operand: a selection of x and its step, per time group."""

    selection: str
    scale: tuple[float, ...]
    threshold: tuple[float, ...] | None = None  # r (below, at_or_above, excess) or c (shifted), per group


@dataclass(frozen=True)
class OperandQuant:
    """How one activation operand of one site is quantized: parts (+ offset), per time group."""

    site: str
    operand: str
    region: str
    bits: int
    parts: tuple[Part, ...]
    offset: tuple[float, ...] | None = None  # added after dequantization (folded into a linear's bias)

    def narrowed(self) -> "OperandQuant":
        """7-bit codes over the same clipping range for 8-bit uniform operands (see `narrow_codes`)."""
        if self.region != "uniform" or self.bits != 8:
            return self
        factor, bits = narrow_codes(1.0, self.bits)
        return replace(self, bits=bits, parts=tuple(replace(p, scale=tuple(s * factor for s in p.scale))
                                                    for p in self.parts))

    def unshifted(self) -> "OperandQuant":
        """The same clipping range without the offset: one part of x with step hi/qmax, hi the top of
        the shifted range. For FP8 codes, whose relative precision a shift by c would spend on |x - c|
        (the many small post-GELU values would lose their precision); FP8 needs no MRQ for the skew."""
        if self.offset is None:
            return self
        (part,) = self.parts
        qmax = qrange(self.bits)[1]
        hi = tuple(c + qmax * s for c, s in zip(self.offset, part.scale))
        return replace(self, region="uniform", parts=(Part("all", tuple(h / qmax for h in hi)),), offset=None)

    def uniform(self) -> "OperandQuant":
        """One uniform part over the operand's whole clipping range: what a consumer that takes a
        single per-tensor Q/DQ gets (TensorRT's fused attention has one A·V GEMM, so no second
        region). Softmax forms: [0, 1] (r + qmax * step_high for the saturating form, qmax *
        step_high for the paper's), step top / qmax; a uniform operand is returned as it is."""
        if self.region == "uniform":
            return self
        qmax = qrange(self.bits)[1]
        if self.region == "softmax":
            top = tuple(qmax * s for s in self.parts[1].scale)
        elif self.region == "softmax-saturate":
            top = tuple(r + qmax * s for r, s in zip(self.parts[1].threshold, self.parts[1].scale))
        else:
            raise ValueError(f"{self.site}.{self.operand}: a {self.region} operand has no single-part form here; "
                             "only softmax operands (A of A·V) are read as one uniform part")
        return replace(self, region="uniform", parts=(Part("all", tuple(t / qmax for t in top)),), offset=None)

    def fake_quant(self, x: torch.Tensor, group: int) -> torch.Tensor:
        """x_hat of time group `group`, in torch (the calibration's fake-quant model)."""
        out = None
        for part in self.parts:
            thr = None if part.threshold is None else part.threshold[group]
            q = fake_quant(select(x, part.selection, thr), torch.tensor(part.scale[group], dtype=x.dtype), self.bits)
            out = q if out is None else out + q
        return out if self.offset is None else out + self.offset[group]


@dataclass(frozen=True)
class Form:
    """One quantizer form: what the record stores for it and how that reads back into parts."""

    region: str
    base: str  # the skew it handles: uniform | softmax | gelu (the statistics the search needs)
    linear_only: bool  # has an offset, which only a linear consumer can fold into its bias
    fields: tuple[str, ...]  # record tensors, `{site}.{operand}.{field}`, each (G,)

    def tensors(self, params: torch.Tensor, bits: int) -> dict[str, torch.Tensor]:
        """The record tensors of the searched parameters (G,)."""
        qmax = qrange(bits)[1]
        p = params.detach().float()
        if self.region == "uniform":
            return {"scale": p}
        if self.region == "softmax":
            return {"boundary": p, "scale_low": p / qmax, "scale_high": torch.full_like(p, 1.0 / qmax)}
        if self.region == "softmax-saturate":
            return {"boundary": p, "scale_low": p / qmax, "scale_high": torch.clamp((1.0 - p) / qmax, min=1e-8)}
        if self.region == "gelu":
            return {"boundary": torch.zeros_like(p), "scale_low": torch.full_like(p, -GELU_MIN / 2 ** (bits - 1)),
                    "scale_high": p}
        hi = qmax * p  # gelu-shift: [GELU_MIN, hi] centred on the symmetric codes
        return {"scale": (hi - GELU_MIN) / (2 * qmax), "offset": (hi + GELU_MIN) / 2}

    def parts(self, t: dict[str, tuple[float, ...]]) -> tuple[tuple[Part, ...], tuple[float, ...] | None]:
        """Parts and offset from the record tensors of one operand (as per-group tuples)."""
        if self.region == "uniform":
            return (Part("all", t["scale"]),), None
        if self.region == "softmax":
            return (Part("below", t["scale_low"], t["boundary"]), Part("at_or_above", t["scale_high"], t["boundary"])), None
        if self.region == "softmax-saturate":
            return (Part("all", t["scale_low"]), Part("excess", t["scale_high"], t["boundary"])), None
        if self.region == "gelu":
            return (Part("negative", t["scale_low"]), Part("positive", t["scale_high"])), None
        return (Part("shifted", t["scale"], t["offset"]),), t["offset"]


FORMS: dict[str, Form] = {f.region: f for f in (
    Form("uniform", "uniform", False, ("scale",)),
    Form("softmax", "softmax", False, ("boundary", "scale_low", "scale_high")),
    Form("softmax-saturate", "softmax", False, ("boundary", "scale_low", "scale_high")),
    Form("gelu", "gelu", False, ("boundary", "scale_low", "scale_high")),
    Form("gelu-shift", "gelu", True, ("scale", "offset")),
)}
REGIONS = tuple(FORMS)
# The MRQ forms a skew may use; the first is the paper's.
MRQ_FORMS = {"softmax": ("softmax", "softmax-saturate"), "gelu": ("gelu", "gelu-shift")}


def form(region: str) -> Form:
    """The Form of `region`, or a ValueError naming the known ones."""
    if region not in FORMS:
        raise ValueError(f"quantizer region {region!r} is unknown; known: {', '.join(REGIONS)}")
    return FORMS[region]


def form_name(skew: str, choice: str) -> str:
    """Region of `skew` ("softmax" | "gelu") for a user's choice: "paper" or the form's suffix
    ("saturate", "shift") or its full name."""
    forms = MRQ_FORMS[skew]
    if choice == "paper":
        return forms[0]
    for name in forms:
        if choice in (name, name.partition("-")[2]):
            return name
    choices = ["paper"] + [n.partition("-")[2] for n in forms[1:]]
    raise ValueError(f"MRQ form {choice!r} for post-{skew} operands is unknown; choose one of {', '.join(choices)}")


def quantizer(region: str, bits: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """x, one group's search parameter -> fake-quantized x (what the scale search scores)."""
    f = form(region)

    def fq(x: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
        t = {k: (float(v),) for k, v in f.tensors(torch.as_tensor(param).reshape(1).cpu(), bits).items()}
        parts, offset = f.parts(t)
        return OperandQuant("", "", region, bits, parts, offset).fake_quant(x, 0)
    return fq


@dataclass(frozen=True)
class SiteQuant:
    """How one site is quantized: its weight (per output channel) and activation operands."""

    site: object  # calibration.sites.Site
    weight_scale: torch.Tensor | None  # (out,) for a linear site
    weight_bits: int
    operands: dict[str, OperandQuant]


def site_quants(record, reduce_range: bool = False, attention: bool = True,
                uniform_operands: frozenset[str] | set[str] = frozenset()) -> list[SiteQuant]:
    """The typed reading of a whole record: every site it quantizes, in record order.

    `reduce_range` (ONNX Runtime's u8 x s8 kernel without VNNI): 8-bit weights and the second
    operand of activation x activation GEMMs keep their clipping range with 7-bit codes.
    `attention=False` leaves the activation x activation GEMMs (Q·Kᵀ, A·V) in float.
    `uniform_operands` ("site.operand" names) are read as one uniform part over their clipping
    range (`OperandQuant.uniform`), e.g. A where TensorRT's fused attention takes one A·V GEMM.
    """
    out = []
    for site in record.sites:
        if site.kind == "matmul" and not attention:
            continue
        operands = {op: operand_quant(record, site, op) for op in site.activation_operands}
        operands = {op: q.uniform() if f"{site.name}.{op}" in uniform_operands else q for op, q in operands.items()}
        w_scale, w_bits = None, record.weight_bits
        if site.kind == "linear":
            w_scale = record.tensor(site.name, "weight", "scale")
            if reduce_range:
                w_scale, w_bits = narrow_codes(w_scale, w_bits)
        elif reduce_range:
            operands["b"] = operands["b"].narrowed()
        out.append(SiteQuant(site, w_scale, w_bits, operands))
    return out


def operand_quant(record, site, operand: str) -> OperandQuant:
    """The typed reading of one activation operand of `site` in a CalibrationRecord."""
    region = site.region(operand)
    f = form(region)
    t = {name: tuple(float(v) for v in record.tensor(site.name, operand, name)) for name in f.fields}
    parts, offset = f.parts(t)
    return OperandQuant(site.name, operand, region, record.activation_bits, parts, offset)
