"""Quantization sites: which GEMMs of a model get quantized, and the fake-quant modules.

A site is a module that computes a GEMM: an `nn.Linear` (operands: activation `input`
and `weight`) or a `MatMul` (two activation operands `a` and `b`, e.g. Q·Kᵀ and A·V).
Models mark their activation-by-activation GEMMs with `MatMul` so they can be found.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from .forms import REGIONS, OperandQuant
from .quantizers import fake_quant


class MatMul(nn.Module):
    """An activation-by-activation GEMM as a module, so quantizers can wrap its operands."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a @ b


@dataclass(frozen=True)
class Site:
    """One quantized GEMM: module path, kind, and the two-region kind of each activation operand."""

    name: str
    kind: str  # "linear" | "matmul"
    regions: dict[str, str] = field(default_factory=dict)  # operand -> a region of calibration.forms.REGIONS

    @property
    def activation_operands(self) -> tuple[str, ...]:
        return ("input",) if self.kind == "linear" else ("a", "b")

    def region(self, operand: str) -> str:
        return self.regions.get(operand, "uniform")


def find_sites(model: nn.Module, include: str, exclude: str | None = None,
               mrq: dict[str, tuple[str, str]] | None = None) -> list[Site]:
    """Sites of `model` whose module path fully matches regex `include` (and not `exclude`).

    `mrq` maps a path regex to (operand, region): e.g. {r".*\\.mlp\\.fc2": ("input", "gelu")}.
    """
    sites = []
    for name, module in model.named_modules():
        if not re.fullmatch(include, name) or (exclude and re.fullmatch(exclude, name)):
            continue
        if isinstance(module, nn.Linear):
            kind = "linear"
        elif isinstance(module, MatMul):
            kind = "matmul"
        else:
            raise ValueError(f"site {name!r} is a {type(module).__name__}; only nn.Linear and MatMul can be quantized")
        regions = {}
        for pattern, (operand, region) in (mrq or {}).items():
            if re.fullmatch(pattern, name):
                if region not in REGIONS:
                    raise ValueError(f"MRQ region {region!r} for {name}: choose one of {REGIONS}")
                regions[operand] = region
        sites.append(Site(name, kind, regions))
    if not sites:
        raise ValueError(f"no quantization site matches include={include!r}")
    return sites


class GroupSelector:
    """Shared by every fake-quant module of a model: the time group of the current call."""

    def __init__(self, num_groups: int) -> None:
        self.num_groups = num_groups
        self.group = 0

    def set(self, group: int) -> None:
        if not 0 <= group < self.num_groups:
            raise ValueError(f"time group {group} is outside 0..{self.num_groups - 1}")
        self.group = group


class ActivationQuantizer(nn.Module):
    """Per-time-group fake quantization of one activation operand, as its `OperandQuant` reads."""

    def __init__(self, quant: OperandQuant, selector: GroupSelector) -> None:
        super().__init__()
        self.quant, self.selector = quant, selector

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant.fake_quant(x, self.selector.group)


# Integer GEMMs sum their products exactly (int32) and scale afterwards; float32 sums of the
# dequantized values round at every step, and those few-ulp differences flip a handful of
# codes downstream. With `exact_sums` the fake-quant GEMMs sum in float64, which follows the
# integer kernels to well below a float32 ulp: the reference for parity checks (slower).


def _gemm(a: torch.Tensor, b: torch.Tensor, exact: bool) -> torch.Tensor:
    return (a.double() @ b.double()).to(a.dtype) if exact else a @ b


class QuantLinear(nn.Module):
    """nn.Linear with fake-quantized input (per tensor, per group) and weight (per output channel)."""

    exact_sums = False

    def __init__(self, linear: nn.Linear, act: ActivationQuantizer | None, weight_scale: torch.Tensor | None,
                 weight_bits: int) -> None:
        super().__init__()
        self.act = act
        self.bias = linear.bias
        # The weight is constant: quantize it once, as the exported int8 initializer.
        w = linear.weight.detach()
        self.register_buffer("weight", fake_quant(w, weight_scale, weight_bits, axis=0) if weight_scale is not None
                             else w.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act is not None:
            x = self.act(x)
        if self.exact_sums:
            out = _gemm(x, self.weight.T, True)
            return out if self.bias is None else out + self.bias
        return F.linear(x, self.weight, self.bias)


class QuantMatMul(nn.Module):
    """MatMul with both activation operands fake-quantized per time group."""

    exact_sums = False

    def __init__(self, a: ActivationQuantizer | None, b: ActivationQuantizer | None) -> None:
        super().__init__()
        self.qa, self.qb = a, b

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self.qa is not None:
            a = self.qa(a)
        if self.qb is not None:
            b = self.qb(b)
        return _gemm(a, b, self.exact_sums)


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Swap the submodule at dotted path `name` for `new`."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
