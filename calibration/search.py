"""Scale search: Hessian-guided (HO), plain MSE, and the min-max / percentile rules.

HO (TQ-DiT, after PTQ4ViT): a candidate scale is scored by the layer-output error weighted
by the diagonal Fisher approximation of the Hessian,
    err(s) = sum( (dL/dO)^2 * (O - Ô(s))^2 ),
where O is the float output, Ô the output with quantized operands, and dL/dO the gradient of
a task loss at that output. Candidates are s = (alpha + i (beta - alpha) / n) * s0,
i = 0..n, with s0 = max|x| / (2^(b-1) - 0.5). MSE search is the same with weights 1.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .forms import form, quantizer
from .quantizers import fake_quant, initial_scale, minmax_scale

METHODS = ("tqdit", "minmax", "percentile", "mse")


@dataclass(frozen=True)
class SearchSpace:
    """Candidate multipliers of s0 (paper: alpha 0.01, beta 1.2, n 100) and softmax boundaries 2^-i."""

    alpha: float = 0.01
    beta: float = 1.2
    n: int = 100
    softmax_exponents: int = 20  # r = 2^-i for i = 0..19

    def multipliers(self) -> torch.Tensor:
        return torch.tensor([self.alpha + i * (self.beta - self.alpha) / self.n for i in range(self.n + 1)])


def fisher_or_plain(weight: torch.Tensor | None, channel_dim: int | None = None) -> torch.Tensor | None:
    """The Fisher weights to use, with a fallback where the loss does not reach the output.

    All-zero weights would make every candidate tie at 0 and pick the smallest scale, so
    they become plain (unweighted) error: for the whole tensor, or per channel along
    `channel_dim` (e.g. output channels that the loss ignores).
    """
    if weight is None:
        return None
    if channel_dim is None:
        return weight if weight.any() else None
    dims = [d for d in range(weight.dim()) if d != channel_dim % weight.dim()]
    reached = weight.sum(dim=dims, keepdim=True) > 0
    return torch.where(reached, weight, torch.ones_like(weight))


def weighted_error(o: torch.Tensor, o_hat: torch.Tensor, weight: torch.Tensor | None,
                   channel_dim: int | None = None) -> torch.Tensor:
    """sum(weight * (o - o_hat)^2): a scalar, or one value per channel along `channel_dim`."""
    e = (o - o_hat) ** 2
    if weight is not None:
        e = e * weight
    if channel_dim is None:
        return e.sum()
    return e.sum(dim=[d for d in range(e.dim()) if d != channel_dim % e.dim()])


def activation_candidates(region: str, x_absmax: torch.Tensor, bits: int, space: SearchSpace) -> torch.Tensor:
    """The parameters the search tries for one activation operand (`calibration.forms`: the
    step, or a softmax form's boundary r)."""
    if form(region).base == "softmax":
        return torch.tensor([2.0**-i for i in range(space.softmax_exponents)])
    return space.multipliers() * initial_scale(x_absmax, bits).cpu()


def search_activation(
    x: torch.Tensor,
    region: str,
    bits: int,
    x_absmax: torch.Tensor,
    output_of: Callable[[torch.Tensor], torch.Tensor],
    target: torch.Tensor,
    weight: torch.Tensor | None,
    space: SearchSpace,
) -> torch.Tensor:
    """Best parameter for one activation operand: argmin of the (weighted) output error.

    `output_of(x_hat)` computes the layer output from a quantized operand (the other operand
    already quantized); `target` is the float output.
    """
    quant = quantizer(region, bits)
    on_cpu = activation_candidates(region, x_absmax, bits, space)
    candidates = on_cpu.to(x.device)
    weight = fisher_or_plain(weight)
    errors = torch.stack([weighted_error(target, output_of(quant(x, c)), weight) for c in candidates])
    return on_cpu[int(torch.argmin(errors))]


def search_weight_per_channel(
    w: torch.Tensor,
    bits: int,
    x_hat: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    space: SearchSpace,
) -> torch.Tensor:
    """Per-output-channel weight scales (out,) minimising the (weighted) output error.

    Output channel c depends only on row c of the weight, so every channel picks its own
    candidate from one pass over the candidates.
    """
    s0 = initial_scale(w.abs().amax(dim=1), bits)  # (out,)
    weight = fisher_or_plain(weight, channel_dim=-1)
    best_err = torch.full_like(s0, float("inf"))
    best = s0.clone()
    for m in space.multipliers().to(w.device):
        s = m * s0
        o_hat = x_hat @ fake_quant(w, s, bits, axis=0).T
        err = weighted_error(target, o_hat, weight, channel_dim=-1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better, s, best)
    return best


def rule_scale(method: str, x_absmax: torch.Tensor, x_percentile: torch.Tensor | None, bits: int) -> torch.Tensor:
    """Scales of the baselines that need no search: min-max and percentile clipping."""
    if method == "minmax":
        return minmax_scale(x_absmax, bits)
    if method == "percentile":
        return minmax_scale(x_percentile, bits)
    raise ValueError(f"method {method!r} has no closed-form scale")
