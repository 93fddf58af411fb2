"""The TQ-DiT calibration driver: capture per-group operands and gradients, search scales, emit a record.

Model-agnostic: the model, its calibration inputs per time group, the loss whose gradients
weight the search, and the sites come in as arguments.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn as nn
from safetensors import safe_open
from tqdm.auto import tqdm

from . import heap
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
from .workdir import WorkFolder, read_tensors, save_tensors_atomic

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
    """What the search of one site needs from one time group (or from all groups, merged)."""

    operands: dict[str, torch.Tensor]  # operand -> rows kept for the search
    grad2: torch.Tensor  # squared output gradient at those rows
    absmax: dict[str, torch.Tensor]
    percentile: dict[str, torch.Tensor]

    def to_tensors(self, site: str) -> dict[str, torch.Tensor]:
        """Flat tensors named `{site}/{field}[/{operand}]`, as a spill file stores them."""
        out = {f"{site}/grad2": self.grad2}
        for kind in ("operands", "absmax", "percentile"):
            out.update({f"{site}/{kind}/{op}": t for op, t in getattr(self, kind).items()})
        return out

    @classmethod
    def from_tensors(cls, site: str, tensors: dict[str, torch.Tensor]) -> "_Captured":
        parts: dict[str, dict[str, torch.Tensor]] = {"operands": {}, "absmax": {}, "percentile": {}}
        for key, t in tensors.items():
            name, _, rest = key.partition("/")
            if name == site and rest != "grad2":
                kind, _, op = rest.partition("/")
                parts[kind][op] = t
        return cls(grad2=tensors[f"{site}/grad2"], **parts)


class CalibrationPaused(Exception):
    """Raised by `calibrate(..., max_blocks=N)` after N blocks were searched: the work folder holds them
    and a later call continues. Benchmarks measure the first blocks of a long run this way."""

    def __init__(self, cost: "CalibrationCost") -> None:
        super().__init__(f"paused after {len(cost.block_seconds)} of {len(cost.blocks)} blocks")
        self.cost = cost


@dataclass
class CalibrationCost:
    """Where a calibration spent its time and memory; `to_json` is what `tqdit calibrate --cost-json` writes.

    Seconds of groups and blocks finished by an earlier, interrupted run are read back from the
    work folder (listed in `resumed_groups` / `resumed_blocks`)."""

    blocks: list[str] = field(default_factory=list)
    block_sites: dict[str, list[str]] = field(default_factory=dict)
    capture_seconds: list[float] = field(default_factory=list)  # per time group
    block_seconds: dict[str, float] = field(default_factory=dict)
    resumed_groups: list[int] = field(default_factory=list)
    resumed_blocks: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)  # filled by callers: trajectories, wall time, sizes

    def to_json(self, device: str | torch.device = "cpu") -> dict:
        return {
            "capture_seconds_per_group": [round(s, 3) for s in self.capture_seconds],
            "capture_seconds": round(sum(self.capture_seconds), 3),
            "search_seconds_per_block": {b: round(s, 3) for b, s in self.block_seconds.items()},
            "search_seconds": round(sum(self.block_seconds.values()), 3),
            "blocks_total": len(self.blocks),
            "blocks_done": len(self.block_seconds),
            "sites_per_block": {b: len(s) for b, s in self.block_sites.items()},
            "resumed_groups": self.resumed_groups,
            "resumed_blocks": self.resumed_blocks,
            **peak_memory_mib(device),
            **self.extra,
        }


def peak_memory_mib(device: str | torch.device = "cpu") -> dict[str, float | None]:
    """Peak resident memory of this process so far (VmHWM) and, on a GPU, torch's peak allocation, in MiB."""
    rss = None
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    rss = int(line.split()[1]) / 1024
    except OSError:
        pass
    if rss is None:
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gpu = None
    if str(device).startswith("cuda") and torch.cuda.is_available():
        gpu = torch.cuda.max_memory_allocated() / 2**20
    return {"peak_rss_mib": round(rss, 1), "peak_gpu_mib": None if gpu is None else round(gpu, 1)}


def _check_finite(data: list[GroupData]) -> None:
    for g, d in enumerate(data):
        for i, t in enumerate((*d.inputs, *d.target)):
            if t.is_floating_point() and not torch.isfinite(t).all():
                raise ValueError(
                    f"calibration data of time group {g} (tensor {i}) contains NaN or Inf; check the model "
                    "and the sampler that produced the trajectories"
                )


def _data_hash(data: list[GroupData]) -> str:
    h = hashlib.sha256()
    for d in data:
        for t in (*d.inputs, *d.target):
            t = t.detach().cpu().contiguous()
            h.update(f"|{t.dtype}|{tuple(t.shape)}|".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def site_blocks(sites: list[Site]) -> list[tuple[str, list[Site]]]:
    """Sites grouped by block, in order: a block is the module path up to the first numeric part
    (`blocks.3.attn.qkv` -> `blocks.3`), else the first part (`final_layer.linear` -> `final_layer`).
    The search is layer-wise, so a block's sites need nothing of other blocks."""
    blocks: dict[str, list[Site]] = {}
    for s in sites:
        parts = s.name.split(".")
        cut = next((i + 1 for i, p in enumerate(parts) if p.isdigit()), 1)
        blocks.setdefault(".".join(parts[:cut]), []).append(s)
    return list(blocks.items())


def _merge_captures(parts: list[_Captured], order: torch.Tensor) -> _Captured:
    """One capture for all groups (no TGQ) from the groups' captures of one site. `order` is a
    random permutation of all rows, so any prefix mixes all groups; the percentile of the merged
    data is approximated by the largest per-group percentile."""
    order = order.to(parts[0].grad2.device)
    return _Captured(
        operands={op: torch.cat([p.operands[op] for p in parts])[order] for op in parts[0].operands},
        grad2=torch.cat([p.grad2 for p in parts])[order],
        absmax={op: torch.stack([p.absmax[op] for p in parts]).amax() for op in parts[0].absmax},
        percentile={op: torch.stack([p.percentile[op] for p in parts]).amax() for op in parts[0].percentile},
    )


def _percentile(x: torch.Tensor, q: float, subset: torch.Tensor | None) -> torch.Tensor:
    flat = x.detach().abs().flatten()
    if subset is not None:  # torch.quantile has an input-size limit; a random subset suffices
        flat = flat[subset.to(flat.device)]
    return torch.quantile(flat.float(), q / 100.0)


def _operand_names(site: Site) -> tuple[str, ...]:
    return ("input",) if site.kind == "linear" else ("a", "b")


def _operand_shapes(model: nn.Module, sites: list[Site], inputs: list) -> dict[str, dict[str, torch.Size]]:
    """The operand shapes of every site, from one forward pass without gradients."""
    shapes: dict[str, dict[str, torch.Size]] = {}

    def hook(site: Site):
        def fn(module, args, output):
            shapes.setdefault(site.name, {n: x.shape for n, x in zip(_operand_names(site), args)})
        return fn

    handles = [model.get_submodule(s.name).register_forward_hook(hook(s)) for s in sites]
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for h in handles:
            h.remove()
    missing = [s.name for s in sites if s.name not in shapes]
    if missing:
        raise ValueError(f"sites {missing[:3]} are not called by the model's forward; remove them from the sites")
    return shapes


@dataclass
class _Rows:
    keep: torch.Tensor  # rows (linear) or samples (matmul) kept for the search
    percentile_subset: dict[str, torch.Tensor | None]


def _draw_rows(sites: list[Site], shapes: dict[str, dict[str, torch.Size]], cfg: CalibrationConfig,
               gen: torch.Generator) -> dict[str, _Rows]:
    """Every random draw of one group's capture, site by site in `sites` order.

    The draws depend on shapes only, so they are made before the pass that captures: each site
    then keeps its rows as soon as its operands and its gradient exist, instead of the pass
    holding every site's full operands and gradients until the end (the memory of the old,
    all-at-once capture). The order of the draws is the old one, so the records are the same."""
    rows = {}
    for site in sites:
        ops = shapes[site.name]
        subset = {}
        if cfg.method == "percentile":
            for n, shape in ops.items():
                numel = math.prod(shape)
                subset[n] = torch.randint(numel, (1 << 20,), generator=gen) if numel > 1 << 20 else None
        if site.kind == "linear":
            # Random order (a CPU generator, whatever the device): any prefix is a random subset.
            keep = torch.randperm(math.prod(ops["input"][:-1]), generator=gen)[: cfg.max_rows]
        else:  # keep whole samples: a GEMM's output row needs its full operands
            per_sample = ops["a"][-2]
            k = max(1, cfg.max_rows // per_sample)
            keep = torch.randperm(ops["a"][0], generator=gen)[:k].sort().values
        rows[site.name] = _Rows(keep, subset)
    return rows


@contextlib.contextmanager
def _recomputed(model: nn.Module, names: list[str]) -> Iterator[None]:
    """Activation checkpointing of the modules `names` for one pass: their inner activations are
    recomputed during the backward pass instead of kept, so the pass holds one block's
    activations at a time. The recomputation repeats the same float operations: same gradients."""
    from torch.utils.checkpoint import checkpoint

    patched = []
    try:
        for name in names:
            module = model.get_submodule(name)
            own = module.__dict__.get("forward")
            module.forward = functools.partial(checkpoint, own or type(module).forward.__get__(module),
                                               use_reentrant=False)
            patched.append((module, own))
        yield
    finally:
        for module, own in patched:
            if own is None:
                del module.forward
            else:
                module.forward = own


def _capture(model: nn.Module, sites: list[Site], batch: GroupData, loss_fn, cfg: CalibrationConfig,
             gen: torch.Generator, recompute: list[str] | None = None,
             shapes: dict[str, dict[str, torch.Size]] | None = None) -> dict[str, _Captured]:
    """Run the float model once with hooks: the kept operand rows, their squared output gradients,
    and statistics per site. `recompute`: module paths checkpointed during the pass (bounded
    memory); `shapes`: the sites' operand shapes for this batch, when known."""
    inputs = [x.detach().clone().requires_grad_(True) if x.is_floating_point() else x for x in batch.inputs]
    if shapes is None:
        shapes = _operand_shapes(model, sites, inputs)
    rows = _draw_rows(sites, shapes, cfg, gen)
    entries: dict[str, dict] = {}
    handles = []

    def hook(site: Site):
        def fn(module, args, output):
            if site.name in entries:  # the recomputation of a checkpointed block: captured already
                return
            ops = {n: x.detach() for n, x in zip(_operand_names(site), args)}
            r = rows[site.name]
            # A GELU form's parameter is the positive region's step: the statistic is its maximum.
            absmax = {n: x.clamp(min=0).amax() if form(site.region(n)).base == "gelu" else x.abs().amax()
                      for n, x in ops.items()}
            pct = ({n: _percentile(x, cfg.percentile, r.percentile_subset[n]) for n, x in ops.items()}
                   if cfg.method == "percentile" else {})
            keep = r.keep.to(output.device)
            if site.kind == "linear":
                kept = {"input": ops["input"].reshape(-1, ops["input"].shape[-1])[keep]}
            else:
                kept = {n: x[keep] for n, x in ops.items()}
            entry = entries[site.name] = {"operands": kept, "absmax": absmax, "percentile": pct}

            def on_grad(grad: torch.Tensor) -> None:
                grad = grad.detach()
                if site.kind == "linear":
                    grad = grad.reshape(-1, grad.shape[-1])
                entry["grad2"] = grad[keep].float() ** 2

            output.register_hook(on_grad)
        return fn

    for site in sites:
        handles.append(model.get_submodule(site.name).register_forward_hook(hook(site)))
    try:
        with torch.enable_grad(), _recomputed(model, recompute or []):
            loss = loss_fn(model(*inputs), batch.target)
            loss.backward()
    finally:
        for h in handles:
            h.remove()
    model.zero_grad(set_to_none=True)
    missing = [s.name for s in sites if "grad2" not in entries.get(s.name, {})]
    if missing:
        raise ValueError(f"sites {missing[:3]} got no gradient from the loss; the loss must depend on the model's "
                         "output through every site")
    return {s.name: _Captured(entries[s.name]["operands"], entries[s.name]["grad2"], entries[s.name]["absmax"],
                              entries[s.name]["percentile"]) for s in sites}


class _CaptureStore:
    """Per-group captures: kept in memory, or spilled to a work folder and read back one block at a time."""

    def __init__(self, work: WorkFolder | None, device: torch.device) -> None:
        self.work, self.device = work, device
        self.memory: dict[int, dict[str, _Captured]] = {}

    def has(self, g: int) -> bool:
        return g in self.memory or (self.work is not None and self.work.group_file(g).is_file())

    def put(self, g: int, caps: dict[str, _Captured], gen_state: torch.Tensor, seconds: float) -> None:
        if self.work is None:
            self.memory[g] = caps
            return
        tensors = {"__generator__": gen_state}
        for name, cap in caps.items():
            tensors.update(cap.to_tensors(name))
        save_tensors_atomic(self.work.group_file(g), tensors, {"seconds": repr(seconds)})

    def resumed(self, g: int) -> tuple[torch.Tensor, float]:
        """The generator state after group g's capture, and the seconds it took, from its file."""
        tensors, meta = read_tensors(self.work.group_file(g), ["__generator__"])
        return tensors["__generator__"], float(meta.get("seconds", "nan"))

    def sites(self, g: int, names: list[str]) -> dict[str, _Captured]:
        if self.work is None:
            return {n: self.memory[g][n] for n in names}
        path = self.work.group_file(g)
        with safe_open(str(path), framework="pt", device="cpu") as f:
            keys = [k for k in f.keys() if k.partition("/")[0] in names]
        tensors, _ = read_tensors(path, keys, self.device)
        return {n: _Captured.from_tensors(n, tensors) for n in names}

    def rows(self, g: int, name: str) -> int:
        if self.work is None:
            return self.memory[g][name].grad2.shape[0]
        with safe_open(str(self.work.group_file(g)), framework="pt", device="cpu") as f:
            return f.get_slice(f"{name}/grad2").get_shape()[0]


def calibrate(
    model: nn.Module,
    sites: list[Site],
    data: list[GroupData],
    loss_fn: Callable[[torch.Tensor, tuple[torch.Tensor, ...]], torch.Tensor],
    config: CalibrationConfig,
    time_groups: TimeGroups,
    model_config: dict,
    progress: bool = True,
    *,
    work_dir: str | Path | None = None,
    recompute_blocks: bool = True,
    cost: CalibrationCost | None = None,
    max_blocks: int | None = None,
) -> CalibrationRecord:
    """Calibrate `sites` of `model` on per-group data; returns the record.

    `data[g]` holds the inputs of time group g of `time_groups` (G = config.num_groups).
    Without TGQ the groups' captures are merged into one group. `loss_fn(output, target)` must have real
    gradients (e.g. the denoising loss against the true noise): HO weights by them.

    Memory is bounded: each group's pass keeps only the rows the search uses, its repeated
    blocks are recomputed in the backward pass (`recompute_blocks`, default on), and the search
    runs block by block (`site_blocks`). With `work_dir` the captures are spilled there and every
    finished block is written atomically, so a call with the same arguments after an
    interruption continues; a folder of another run is refused (ValueError). `cost`, when
    given, is filled with times and peak memory; `max_blocks` raises CalibrationPaused after
    that many blocks were searched in this call. The record is the same whichever of these is used.
    """
    if len(data) != time_groups.num_groups or time_groups.num_groups != config.num_groups:
        raise ValueError(f"got data for {len(data)} groups and {time_groups.num_groups} time groups; "
                         f"config asks for {config.num_groups}")
    _check_finite(data)
    site_list = [Site(s.name, s.kind, {op: region for op, r in s.regions.items()
                                       if (region := config.region(r)) != "uniform"}) for s in sites]
    for s in site_list:
        for op, region in s.regions.items():
            if form(region).linear_only and s.kind != "linear":
                raise ValueError(f"{s.name}.{op}: the {region} form folds an offset into a linear layer's bias; "
                                 f"{s.name} is a {s.kind}: choose another MRQ form for it")
    method = {**{k: v for k, v in asdict(config).items() if k != "search"}, "search": asdict(config.search)}
    model_hash = model_fingerprint(model)
    blocks = site_blocks(site_list)
    cost = cost if cost is not None else CalibrationCost()
    cost.blocks = [b for b, _ in blocks]
    cost.block_sites = {b: [s.name for s in ss] for b, ss in blocks}
    cost.capture_seconds, cost.block_seconds, cost.resumed_groups, cost.resumed_blocks = [], {}, [], []
    work = None
    if work_dir is not None:
        work = WorkFolder.open(work_dir, {
            "config": method, "model_hash": model_hash, "model_config": model_config,
            "sites": [[s.name, s.kind, s.regions] for s in site_list],
            "time_groups": [int(e) for e in time_groups.edges], "data_sha256": _data_hash(data)})
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    finished = set(work.finished_blocks()) if work is not None else set()
    store = _CaptureStore(work, device)
    gen = torch.Generator().manual_seed(config.seed)
    names = {s.name for s in sites}
    recompute = [b for b, _ in blocks if recompute_blocks and b not in names and any(p.isdigit() for p in b.split("."))]

    model = model.eval()
    was = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    shapes: dict[tuple, dict] = {}  # input shapes -> operand shapes: one probe pass for equal batches
    bar = tqdm(total=len(data), desc="capture (time groups)", disable=not progress, leave=False)
    heap.phase("capture")  # the passes' activations set the peak: give them back as they are freed
    try:
        for g, d in enumerate(data):
            if store.has(g):
                state, seconds = store.resumed(g)
                gen.set_state(state)
                cost.capture_seconds.append(seconds)
                cost.resumed_groups.append(g)
            else:
                start = time.perf_counter()
                key = tuple(tuple(x.shape) for x in d.inputs)
                if key not in shapes:
                    shapes[key] = _operand_shapes(model, sites, list(d.inputs))
                caps = _capture(model, sites, d, loss_fn, config, gen, recompute, shapes[key])
                cost.capture_seconds.append(time.perf_counter() - start)
                store.put(g, caps, gen.get_state(), cost.capture_seconds[-1])
                del caps
            bar.update()
            bar.set_postfix(peak_rss=f"{peak_memory_mib(device)['peak_rss_mib']:.0f}MiB", refresh=False)
    finally:
        heap.phase("compute")
        bar.close()
        for p, r in zip(model.parameters(), was):
            p.requires_grad_(r)

    if not config.tgq:  # drawn after every capture, in site order, as the merge always drew them
        merge_order = {s.name: torch.randperm(sum(store.rows(g, s.name) for g in range(len(data))), generator=gen)
                       for s in sites}
        time_groups = TimeGroups((0, time_groups.num_timesteps))

    weights: dict[str, torch.Tensor] = {}
    activations: dict[str, dict[str, torch.Tensor]] = {}
    searched = 0
    bar = tqdm(total=len(blocks), desc=f"search ({config.method}) blocks", disable=not progress,
               initial=len(finished), leave=False)
    try:
        for b, (block, bsites) in enumerate(blocks):
            if b in finished:
                tensors, meta = read_tensors(work.block_file(b))
                cost.block_seconds[block] = float(meta.get("seconds", "nan"))
                cost.resumed_blocks.append(block)
            else:
                if max_blocks is not None and searched >= max_blocks:
                    raise CalibrationPaused(cost)
                start = time.perf_counter()
                bnames = [s.name for s in bsites]
                per_group = [store.sites(g, bnames) for g in range(len(data))]
                if config.tgq:
                    caps = {n: [c[n] for c in per_group] for n in bnames}
                else:
                    caps = {n: [_merge_captures([c[n] for c in per_group], merge_order[n])] for n in bnames}
                del per_group
                tensors = {}
                for s in bsites:
                    bar.set_postfix(site=s.name, peak_rss=f"{peak_memory_mib(device)['peak_rss_mib']:.0f}MiB")
                    search = _SiteSearch(model, s, caps.pop(s.name), config)
                    search.run()
                    tensors.update(search.tensors())
                    del search
                cost.block_seconds[block] = time.perf_counter() - start
                if work is not None:
                    save_tensors_atomic(work.block_file(b), tensors, {"seconds": repr(cost.block_seconds[block]),
                                                                      "block": block})
                searched += 1
            for s in bsites:
                if s.kind == "linear":
                    weights[s.name] = tensors[f"{s.name}.weight.scale"]
                activations[s.name] = {k: v for k, v in tensors.items() if not k.endswith(".weight.scale")}
            bar.update()
    finally:
        bar.close()
    # The order the all-at-once search produced: every weight scale, then the activations, by site.
    out = {f"{s.name}.weight.scale": weights[s.name] for s in site_list if s.kind == "linear"}
    for s in site_list:
        out.update(activations[s.name])
    return CalibrationRecord(
        model_config=model_config,
        model_hash=model_hash,
        weight_bits=config.weight_bits,
        activation_bits=config.activation_bits,
        time_groups=time_groups,
        sites=site_list,
        tensors={k: v.detach().float().clone() for k, v in out.items()},
        method=method,
    )


class _SiteSearch:
    """The scales of one site and its alternating rounds (weights, then every group's activations).

    The search is layer-wise: a site's scales depend on its own captures only, so sites are
    searched one after another (each with all its rounds) with the same result as rounds over all sites."""

    def __init__(self, model: nn.Module, site: Site, caps: list[_Captured], cfg: CalibrationConfig) -> None:
        self.site, self.caps, self.cfg = site, caps, cfg
        self.wb, self.ab = cfg.weight_bits, cfg.activation_bits
        self.weight = model.get_submodule(site.name).weight.detach() if site.kind == "linear" else None
        self.w_scale: torch.Tensor | None = None
        self.act: dict[str, torch.Tensor] = {}  # operand -> (G,) parameters
        if self.weight is not None:
            self.w_scale = minmax_scale(self.weight.abs().amax(dim=1), self.wb).cpu()
        for op in site.activation_operands:
            region = site.region(op)
            if cfg.method in ("minmax", "percentile"):
                params = [rule_scale(cfg.method, c.absmax[op], c.percentile.get(op), self.ab) for c in caps]
            elif form(region).base == "softmax":
                params = [torch.tensor(2.0**-4) for _ in caps]
            else:
                params = [initial_scale(c.absmax[op], self.ab) for c in caps]
            # Scale state lives on the CPU; the data may be on a GPU.
            self.act[op] = torch.stack([torch.as_tensor(p, dtype=torch.float32).cpu() for p in params])

    def _quant(self, op: str, g: int, x: torch.Tensor) -> torch.Tensor:
        return quantizer(self.site.region(op), self.ab)(x, self.act[op][g].to(x.device))

    def _hessian(self, cap: _Captured) -> torch.Tensor | None:
        return cap.grad2 if self.cfg.use_ho else None

    def run(self) -> None:
        if self.cfg.method in ("minmax", "percentile"):
            return
        for _ in range(self.cfg.rounds):
            if self.weight is not None:  # weights, given the current activation scales
                self._search_weight()
            for g in range(len(self.caps)):  # activations of every group, given the weights
                self._search_activations(g)

    def _search_weight(self) -> None:
        k = max(1, self.cfg.weight_rows // len(self.caps))  # the same share of rows from every group
        xs = [c.operands["input"][:k] for c in self.caps]
        x_hat = torch.cat([self._quant("input", g, x) for g, x in enumerate(xs)])
        target = torch.cat(xs) @ self.weight.T
        hess = None if not self.cfg.use_ho else torch.cat([c.grad2[:k] for c in self.caps])
        self.w_scale = search_weight_per_channel(self.weight, self.wb, x_hat, target, hess, self.cfg.search).cpu()

    def _search_activations(self, g: int) -> None:
        s, cap = self.site, self.caps[g]
        hess = self._hessian(cap)
        if s.kind == "linear":
            x = cap.operands["input"]
            w_hat = fake_quant(self.weight, self.w_scale.to(x.device), self.wb, axis=0)
            self.act["input"][g] = search_activation(x, s.region("input"), self.ab, cap.absmax["input"],
                                                     lambda xh: xh @ w_hat.T, x @ self.weight.T, hess, self.cfg.search)
            return
        a, b = cap.operands["a"], cap.operands["b"]
        target = a @ b
        b_hat = self._quant("b", g, b)
        self.act["a"][g] = search_activation(a, s.region("a"), self.ab, cap.absmax["a"],
                                             lambda ah: ah @ b_hat, target, hess, self.cfg.search)
        a_hat = self._quant("a", g, a)
        self.act["b"][g] = search_activation(b, s.region("b"), self.ab, cap.absmax["b"],
                                             lambda bh: a_hat @ bh, target, hess, self.cfg.search)

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {} if self.w_scale is None else {f"{self.site.name}.weight.scale": self.w_scale}
        for op, p in self.act.items():
            out.update({f"{self.site.name}.{op}.{field}": t
                        for field, t in form(self.site.region(op)).tensors(p, self.ab).items()})
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
