"""The calibration as it was before streaming (commit ab0e9c7): every site's operands and gradients
held at once for a group's pass, then rounds over all sites. Kept here only as the reference
the streamed, block-by-block calibration must reproduce bit for bit (tests/calibration/test_streamed.py)."""
from __future__ import annotations

from dataclasses import asdict
from typing import Callable

import torch
import torch.nn as nn

from calibration.calibrate import CalibrationConfig, GroupData, _Captured
from calibration.forms import form, quantizer
from calibration.quantizers import fake_quant, initial_scale, minmax_scale
from calibration.record import CalibrationRecord, model_fingerprint
from calibration.search import rule_scale, search_activation, search_weight_per_channel
from calibration.sites import Site
from calibration.time_groups import TimeGroups


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



def reference_calibrate(
    model: nn.Module,
    sites: list[Site],
    data: list[GroupData],
    loss_fn: Callable[[torch.Tensor, tuple[torch.Tensor, ...]], torch.Tensor],
    config: CalibrationConfig,
    time_groups: TimeGroups,
    model_config: dict,
    progress: bool = False,
) -> CalibrationRecord:
    """Calibrate `sites` of `model` on per-group data; returns the record.

    `data[g]` holds the inputs of time group g of `time_groups` (G = config.num_groups).
    Without TGQ the groups' captures are merged into one group. `loss_fn(output, target)` must have real
    gradients (e.g. the denoising loss against the true noise): HO weights by them.
    """
    if len(data) != time_groups.num_groups or time_groups.num_groups != config.num_groups:
        raise ValueError(f"got data for {len(data)} groups and {time_groups.num_groups} time groups; "
                         f"config asks for {config.num_groups}")
    gen = torch.Generator().manual_seed(config.seed)
    model = model.eval()
    was = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    try:
        caps = [_capture(model, sites, d, loss_fn, config, gen)
                for d in data]
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
        for _ in range(self.cfg.rounds):
            for s in self.sites:  # weights, given the current activation scales
                if s.kind == "linear":
                    self._search_weight(s)
            for s in self.sites:  # activations of every group, given the weights
                for g in range(len(self.caps)):
                    self._search_activations(s, g)

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


