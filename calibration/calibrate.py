"""The TQ-DiT calibration driver: capture per-group operands and gradients, search scales, emit a record.

Model-agnostic: the model, its calibration inputs per time group, the loss whose gradients
weight the search, and the sites come in as arguments.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from .forms import form, form_name, quantizer, site_quants
from .quantizers import fake_quant, initial_scale, minmax_scale
from .record import CalibrationRecord, model_fingerprint
from .search import (
    METHODS,
    SearchSpace,
    rule_scale,
    search_activation,
    search_weight_per_channel,
)
from .sites import ActivationQuantizer, GroupSelector, QuantLinear, QuantMatMul, Site, replace_module
from .time_groups import TimeGroups

SUPPORTED_BITS = (4, 5, 6, 7, 8)


@dataclass(frozen=True)
class CalibrationConfig:
    """What to calibrate and how. Defaults: W8A8, G=10, TQ-DiT (TGQ + MRQ + HO), 3 rounds."""

    weight_bits: int = 8
    activation_bits: int = 8
    num_groups: int = 10
    method: str = "tqdit"
    tgq: bool = True
    mrq: bool = True
    ho: bool = True
    rounds: int = 3
    max_rows: int = 256  # rows per (site, group) kept for the activation search: bounds time and memory
    weight_rows: int = 2048  # rows over all groups for the per-channel weight search
    percentile: float = 99.99
    seed: int = 0
    # MRQ form per skew (calibration.forms): "paper" (TQ-DiT's two regions) or the cheaper
    # deployable form ("saturate" for post-softmax, "shift" for post-GELU operands).
    softmax_mrq: str = "paper"
    gelu_mrq: str = "paper"
    search: SearchSpace = field(default_factory=SearchSpace)

    def __post_init__(self) -> None:
        for name in ("weight_bits", "activation_bits"):
            if getattr(self, name) not in SUPPORTED_BITS:
                raise ValueError(f"{name}={getattr(self, name)}: supported widths are {SUPPORTED_BITS}")
        if self.method not in METHODS:
            raise ValueError(f"method {self.method!r} is unknown; choose one of {METHODS}")
        form_name("softmax", self.softmax_mrq)  # raises, naming the choices
        form_name("gelu", self.gelu_mrq)
        # Named as `tqdit calibrate` names them: that is where a user sets them.
        for name, flag, what in (("num_groups", "--groups", "time group"), ("rounds", "--rounds", "round"),
                                 ("max_rows", None, "row per site and group"),
                                 ("weight_rows", None, "row for the weight search")):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                given = f"{flag} {value} ({name})" if flag else f"{name}={value}"
                raise ValueError(f"{given}: at least 1 {what} is needed")

    @property
    def groups(self) -> int:
        return self.num_groups if self.tgq else 1

    @property
    def use_mrq(self) -> bool:
        return self.mrq and self.method == "tqdit"

    def region(self, region: str) -> str:
        """The region an operand marked `region` is calibrated with: uniform without MRQ, else the
        configured form of its skew."""
        base = form(region).base
        if base == "uniform" or not self.use_mrq:
            return "uniform"
        return form_name(base, self.softmax_mrq if base == "softmax" else self.gelu_mrq)

    @property
    def use_ho(self) -> bool:
        return self.ho and self.method == "tqdit"


@dataclass
class GroupData:
    """Calibration inputs of one time group: positional model inputs and what the loss compares with."""

    inputs: tuple[torch.Tensor, ...]
    target: tuple[torch.Tensor, ...]  # passed to loss_fn(output, target); batch-first tensors


@dataclass
class _Captured:
    operands: dict[str, torch.Tensor]  # operand -> rows kept for the search
    grad2: torch.Tensor  # squared output gradient at those rows
    absmax: dict[str, torch.Tensor]
    percentile: dict[str, torch.Tensor]


def _check_finite(data: list[GroupData]) -> None:
    for g, d in enumerate(data):
        for i, t in enumerate((*d.inputs, *d.target)):
            if t.is_floating_point() and not torch.isfinite(t).all():
                raise ValueError(
                    f"calibration data of time group {g} (tensor {i}) contains NaN or Inf; check the model "
                    "and the sampler that produced the trajectories"
                )


def _merge_captures(caps: list[dict[str, _Captured]], gen: torch.Generator) -> list[dict[str, _Captured]]:
    """One capture for all groups (no TGQ). Groups are captured one by one and merged here,
    so peak memory stays that of one group's forward and backward pass. Rows are shuffled
    so any prefix mixes all groups; the percentile of the merged data is approximated by
    the largest per-group percentile."""
    merged = {}
    for name in caps[0]:
        parts = [c[name] for c in caps]
        grad2 = torch.cat([p.grad2 for p in parts])
        order = torch.randperm(grad2.shape[0], generator=gen).to(grad2.device)
        merged[name] = _Captured(
            operands={op: torch.cat([p.operands[op] for p in parts])[order] for op in parts[0].operands},
            grad2=grad2[order],
            absmax={op: torch.stack([p.absmax[op] for p in parts]).amax() for op in parts[0].absmax},
            percentile={op: torch.stack([p.percentile[op] for p in parts]).amax() for op in parts[0].percentile},
        )
    return [merged]


def _percentile(x: torch.Tensor, q: float, gen: torch.Generator) -> torch.Tensor:
    flat = x.detach().abs().flatten()
    if flat.numel() > 1 << 20:  # torch.quantile has an input-size limit; a random subset suffices
        flat = flat[torch.randint(flat.numel(), (1 << 20,), generator=gen).to(flat.device)]
    return torch.quantile(flat.float(), q / 100.0)


def _capture(model: nn.Module, sites: list[Site], batch: GroupData, loss_fn, cfg: CalibrationConfig,
             gen: torch.Generator) -> dict[str, _Captured]:
    """Run the float model once with hooks: operands, output gradients, and statistics per site."""
    raw: dict[str, dict] = {}
    handles = []

    def hook(site: Site):
        def fn(module, inputs, output):
            entry = raw.setdefault(site.name, {})
            names = ("input",) if site.kind == "linear" else ("a", "b")
            entry["operands"] = {n: x.detach() for n, x in zip(names, inputs)}
            output.register_hook(lambda grad: entry.__setitem__("grad", grad.detach()))
        return fn

    for site in sites:
        handles.append(model.get_submodule(site.name).register_forward_hook(hook(site)))
    try:
        inputs = [x.detach().clone().requires_grad_(True) if x.is_floating_point() else x for x in batch.inputs]
        with torch.enable_grad():
            loss = loss_fn(model(*inputs), batch.target)
            loss.backward()
    finally:
        for h in handles:
            h.remove()

    captured = {}
    for site in sites:
        entry = raw[site.name]
        ops, grad = entry["operands"], entry["grad"]
        # A GELU form's parameter is the positive region's step: the statistic is its maximum.
        absmax = {n: x.clamp(min=0).amax() if form(site.region(n)).base == "gelu" else x.abs().amax()
                  for n, x in ops.items()}
        pct = {n: _percentile(x, cfg.percentile, gen) for n, x in ops.items()} if cfg.method == "percentile" else {}
        if site.kind == "linear":
            rows = ops["input"].reshape(-1, ops["input"].shape[-1])
            grad = grad.reshape(-1, grad.shape[-1])
            # Random order (a CPU generator, whatever the device): any prefix is a random subset.
            keep = torch.randperm(rows.shape[0], generator=gen)[: cfg.max_rows].to(rows.device)
            kept = {"input": rows[keep]}
            grad = grad[keep]
        else:  # keep whole samples: a GEMM's output row needs its full operands
            per_sample = ops["a"].shape[-2]
            k = max(1, cfg.max_rows // per_sample)
            keep = torch.randperm(ops["a"].shape[0], generator=gen)[:k].sort().values.to(grad.device)
            kept = {n: x[keep] for n, x in ops.items()}
            grad = grad[keep]
        captured[site.name] = _Captured(kept, grad.float() ** 2, absmax, pct)
    model.zero_grad(set_to_none=True)
    return captured


def calibrate(
    model: nn.Module,
    sites: list[Site],
    data: list[GroupData],
    loss_fn: Callable[[torch.Tensor, tuple[torch.Tensor, ...]], torch.Tensor],
    config: CalibrationConfig,
    time_groups: TimeGroups,
    model_config: dict,
    progress: bool = True,
) -> CalibrationRecord:
    """Calibrate `sites` of `model` on per-group data; returns the record.

    `data[g]` holds the inputs of time group g of `time_groups` (G = config.num_groups).
    Without TGQ the groups' captures are merged into one group. `loss_fn(output, target)` must have real
    gradients (e.g. the denoising loss against the true noise): HO weights by them.
    """
    if len(data) != time_groups.num_groups or time_groups.num_groups != config.num_groups:
        raise ValueError(f"got data for {len(data)} groups and {time_groups.num_groups} time groups; "
                         f"config asks for {config.num_groups}")
    _check_finite(data)
    gen = torch.Generator().manual_seed(config.seed)
    model = model.eval()
    was = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    try:
        caps = [_capture(model, sites, d, loss_fn, config, gen)
                for d in tqdm(data, desc="capture", disable=not progress, leave=False)]
    finally:
        for p, r in zip(model.parameters(), was):
            p.requires_grad_(r)
    if not config.tgq:
        caps, time_groups = _merge_captures(caps, gen), TimeGroups((0, time_groups.num_timesteps))
    site_list = [Site(s.name, s.kind, {op: region for op, r in s.regions.items()
                                       if (region := config.region(r)) != "uniform"}) for s in sites]
    for s in site_list:
        for op, region in s.regions.items():
            if form(region).linear_only and s.kind != "linear":
                raise ValueError(f"{s.name}.{op}: the {region} form folds an offset into a linear layer's bias; "
                                 f"{s.name} is a {s.kind}: choose another MRQ form for it")
    searcher = _Searcher(model, site_list, caps, config)
    searcher.run(progress)
    return CalibrationRecord(
        model_config=model_config,
        model_hash=model_fingerprint(model),
        weight_bits=config.weight_bits,
        activation_bits=config.activation_bits,
        time_groups=time_groups,
        sites=site_list,
        tensors=searcher.tensors(),
        method={**{k: v for k, v in asdict(config).items() if k != "search"}, "search": asdict(config.search)},
    )


class _Searcher:
    """Holds the current scales of every site and runs the alternating rounds."""

    def __init__(self, model: nn.Module, sites: list[Site], caps: list[dict[str, _Captured]],
                 cfg: CalibrationConfig) -> None:
        self.model, self.sites, self.caps, self.cfg = model, sites, caps, cfg
        self.wb, self.ab = cfg.weight_bits, cfg.activation_bits
        self.w_scale: dict[str, torch.Tensor] = {}
        self.act: dict[tuple[str, str], torch.Tensor] = {}  # (site, operand) -> (G,) parameters
        for s in sites:
            if s.kind == "linear":
                w = self._weight(s)
                self.w_scale[s.name] = minmax_scale(w.abs().amax(dim=1), self.wb).cpu()
            for op in s.activation_operands:
                region = s.region(op)
                if cfg.method in ("minmax", "percentile"):
                    params = [rule_scale(cfg.method, c[s.name].absmax[op], c[s.name].percentile.get(op), self.ab)
                              for c in caps]
                elif form(region).base == "softmax":
                    params = [torch.tensor(2.0**-4) for _ in caps]
                else:
                    params = [initial_scale(c[s.name].absmax[op], self.ab) for c in caps]
                # Scale state lives on the CPU; the data may be on a GPU.
                self.act[(s.name, op)] = torch.stack([torch.as_tensor(p, dtype=torch.float32).cpu() for p in params])

    def _weight(self, site: Site) -> torch.Tensor:
        return self.model.get_submodule(site.name).weight.detach()

    def _quant(self, site: Site, op: str, g: int, x: torch.Tensor) -> torch.Tensor:
        return quantizer(site.region(op), self.ab)(x, self.act[(site.name, op)][g].to(x.device))

    def _hessian(self, cap: _Captured) -> torch.Tensor | None:
        return cap.grad2 if self.cfg.use_ho else None

    def run(self, progress: bool) -> None:
        if self.cfg.method in ("minmax", "percentile"):
            return
        steps = self.cfg.rounds * len(self.sites) * 2
        bar = tqdm(total=steps, desc=f"search ({self.cfg.method})", disable=not progress, leave=False)
        for _ in range(self.cfg.rounds):
            for s in self.sites:  # weights, given the current activation scales
                if s.kind == "linear":
                    self._search_weight(s)
                bar.update()
            for s in self.sites:  # activations of every group, given the weights
                for g in range(len(self.caps)):
                    self._search_activations(s, g)
                bar.update()
        bar.close()

    def _search_weight(self, s: Site) -> None:
        w = self._weight(s)
        k = max(1, self.cfg.weight_rows // len(self.caps))  # the same share of rows from every group
        xs = [c[s.name].operands["input"][:k] for c in self.caps]
        x_hat = torch.cat([self._quant(s, "input", g, x) for g, x in enumerate(xs)])
        target = torch.cat(xs) @ w.T
        hess = None if not self.cfg.use_ho else torch.cat([c[s.name].grad2[:k] for c in self.caps])
        self.w_scale[s.name] = search_weight_per_channel(w, self.wb, x_hat, target, hess, self.cfg.search).cpu()

    def _search_activations(self, s: Site, g: int) -> None:
        cap = self.caps[g][s.name]
        hess = self._hessian(cap)
        if s.kind == "linear":
            x = cap.operands["input"]
            w_hat = fake_quant(self._weight(s), self.w_scale[s.name].to(x.device), self.wb, axis=0)
            best = search_activation(x, s.region("input"), self.ab, cap.absmax["input"], lambda xh: xh @ w_hat.T,
                                     x @ self._weight(s).T, hess, self.cfg.search)
            self.act[(s.name, "input")][g] = best
            return
        a, b = cap.operands["a"], cap.operands["b"]
        target = a @ b
        b_hat = self._quant(s, "b", g, b)
        self.act[(s.name, "a")][g] = search_activation(a, s.region("a"), self.ab, cap.absmax["a"],
                                                       lambda ah: ah @ b_hat, target, hess, self.cfg.search)
        a_hat = self._quant(s, "a", g, a)
        self.act[(s.name, "b")][g] = search_activation(b, s.region("b"), self.ab, cap.absmax["b"],
                                                       lambda bh: a_hat @ bh, target, hess, self.cfg.search)

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {f"{name}.weight.scale": s for name, s in self.w_scale.items()}
        for (name, op), p in self.act.items():
            region = next(s for s in self.sites if s.name == name).region(op)
            out.update({f"{name}.{op}.{field}": t for field, t in form(region).tensors(p, self.ab).items()})
        return {k: v.detach().float().clone() for k, v in out.items()}


def quantize_model(model: nn.Module, record: CalibrationRecord, reduce_range: bool = False,
                   exact_sums: bool = False, attention: bool = True,
                   uniform_operands: frozenset[str] = frozenset()) -> tuple[nn.Module, GroupSelector]:
    """A copy of `model` whose sites fake-quantize exactly as the exported graph computes.

    `reduce_range` mirrors an export for CPUs without VNNI: 8-bit weights and the second
    operand of activation x activation GEMMs keep their clipping range with 7-bit codes.
    `exact_sums` sums the GEMMs in float64, as integer kernels sum exactly (parity checks).
    `attention=False` keeps Q·Kᵀ and A·V in float, as an export with `--attention float`.
    `uniform_operands`: "site.operand" names read as one uniform part (`site_quants`), as an export
    with TensorRT's fused-attention placement.
    It reads the record through `calibration.forms.site_quants`, as the ONNX export does.
    Returns the model and its `GroupSelector`: set the time group before each call.
    """
    record.check_model(model)
    qmodel = copy.deepcopy(model).eval()
    selector = GroupSelector(record.time_groups.num_groups)
    for sq in site_quants(record, reduce_range, attention, uniform_operands):
        quantizers = {op: ActivationQuantizer(q, selector) for op, q in sq.operands.items()}
        module = qmodel.get_submodule(sq.site.name)
        if sq.site.kind == "linear":
            new = QuantLinear(module, quantizers["input"], sq.weight_scale, sq.weight_bits)
        else:
            new = QuantMatMul(quantizers["a"], quantizers["b"])
        new.exact_sums = exact_sums
        replace_module(qmodel, sq.site.name, new)
    return qmodel, selector
