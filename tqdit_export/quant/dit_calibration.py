"""Calibrating a DiT with `calibration/`: which GEMMs, which data, which loss.

Sites (as the TQ-DiT public code): in every block the inputs and weights of qkv, proj,
fc1, fc2, both operands of Q·Kᵀ and A·V, and the final linear. MRQ on A (post-softmax,
operand `a` of A·V) and on the fc2 input (post-GELU). adaLN modulation and the embedders
stay in float.

Calibration data: FP sampling trajectories with the inference settings (DDPM, CFG), one
(x_t, t, y) per trajectory and time group, picked at random within the group from a seed.
The HO loss is the denoising loss against the true noise, where the "true" noise of a
trajectory point is the one that maps the trajectory's final sample x0 to x_t:
eps = (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t). Its gradients are not zero (the public
code's KL-to-FP loss with FP inputs has dL/dO ~ 0 and degenerates the weighting).
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import torch
import torch.nn as nn

from calibration.calibrate import CalibrationConfig, CalibrationCost, GroupData, calibrate, quantize_model
from calibration.record import CalibrationRecord, model_fingerprint
from calibration.sites import Site, find_sites
from calibration.time_groups import TimeGroups
from calibration.workdir import WorkFolder, read_tensors, save_tensors_atomic

from ..diffusion import NUM_TRAIN_TIMESTEPS, GaussianDiffusion, SamplerConfig, linear_betas, sample
from ..engines.torch_backend import TorchBackend
from ..errors import UsageError
from ..models.dit import DiT

SITE_PATTERN = r"blocks\.\d+\.(attn\.(qkv|proj|matmul_qk|matmul_av)|mlp\.(fc1|fc2))|final_layer\.linear"
MRQ_SITES = {
    r"blocks\.\d+\.attn\.matmul_av": ("a", "softmax"),
    r"blocks\.\d+\.mlp\.fc2": ("input", "gelu"),
}
BITS_PRESETS = {"W8A8": (8, 8), "W6A6": (6, 6), "W4A8": (4, 8)}


def parse_bits(text: str) -> tuple[int, int]:
    """(weight, activation) widths of a `--bits` preset: 'W8A8' -> (8, 8); lower case ('w8a8') too.

    Only the presets of BITS_PRESETS, the widths the quality table measures end to end
    (calibration, export, ONNX Runtime); any other pair (W4A4, W8A4, W5A7, ...) is refused,
    since activations below 6 bits are not a configuration this tool was tested for.
    """
    preset = text.strip().upper()
    if preset not in BITS_PRESETS:
        raise UsageError(f"--bits {text}: not a supported width pair; choose one of {', '.join(BITS_PRESETS)} "
                         "(W: weight bits, A: activation bits)")
    return BITS_PRESETS[preset]


def dit_sites(model: DiT, exclude: str | None = None) -> list[Site]:
    """The quantization sites of a DiT, MRQ regions marked (the config decides whether MRQ is used)."""
    return find_sites(model, SITE_PATTERN, exclude=exclude, mrq=MRQ_SITES)


_TRAIN_DIFFUSION = GaussianDiffusion(linear_betas(NUM_TRAIN_TIMESTEPS))


def denoising_loss(output: torch.Tensor, target: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The DiT training loss (MSE on epsilon + variational bound on the learned variance), summed.

    `target` = (true noise, x0, x_t, t). The bound gives the variance channels real
    gradients; the epsilon MSE alone leaves them at zero.
    """
    noise, x0, x_t, t = target
    return _TRAIN_DIFFUSION.training_loss(output, x0, x_t, t, noise).sum()


@torch.no_grad()
def collect_calibration_data(
    model: DiT,
    time_groups: TimeGroups,
    samples_per_group: int,
    seed: int = 0,
    cfg_scale: float = 1.5,
    steps: int = 100,
    clip_denoised: bool = False,
    device: str = "cpu",
    progress: bool = True,
) -> list[GroupData]:
    """Per time group, `samples_per_group` FP trajectory points (doubled for CFG, as at inference)."""
    cfg = model.config
    n = samples_per_group
    if n < 1:  # an empty batch fails deep in the search otherwise
        raise ValueError(f"samples_per_group={n} (--samples-per-group): at least 1 calibration sample per time "
                         "group is needed (default 32)")
    labels = torch.arange(n) % cfg.num_classes
    trajectory: list[tuple[int, torch.Tensor]] = []
    x0 = sample(TorchBackend(model, device), labels, (cfg.in_channels, cfg.input_size, cfg.input_size),
                SamplerConfig("ddpm", steps, cfg_scale, clip_denoised), model.null_class, seed=seed,
                progress=progress, on_step=lambda t, x, y: trajectory.append((t, x.clone())))
    abar = _TRAIN_DIFFUSION.alphas_cumprod
    gen = torch.Generator().manual_seed(seed + 1)
    data = []
    for g in range(time_groups.num_groups):
        lo, hi = time_groups.timestep_range(g)
        in_group = [i for i, (t, _) in enumerate(trajectory) if lo <= t < hi]
        if not in_group:
            raise ValueError(f"time group {g} ({lo}..{hi - 1}) has no step of a {steps}-step trajectory; "
                             "use more trajectory steps or fewer groups")
        pick = torch.tensor(in_group)[torch.randint(len(in_group), (n,), generator=gen)]
        x_t = torch.stack([trajectory[int(p)][1][i] for i, p in enumerate(pick)])
        t = torch.tensor([trajectory[int(p)][0] for p in pick], dtype=torch.long)
        a = abar[t].float().view(-1, 1, 1, 1)
        eps = (x_t - a.sqrt() * x0) / (1 - a).sqrt()
        null = torch.full_like(labels, model.null_class)
        inputs = (torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([labels, null]))
        target = (torch.cat([eps, eps]), torch.cat([x0, x0]), inputs[0], inputs[1])
        data.append(GroupData(tuple(v.to(device) for v in inputs), tuple(v.to(device) for v in target)))
    return data


def calibrate_dit(
    model: DiT,
    config: CalibrationConfig,
    samples_per_group: int = 32,
    cfg_scale: float = 1.5,
    trajectory_steps: int = 100,
    clip_denoised: bool = False,
    exclude: str | None = None,
    device: str = "cpu",
    progress: bool = True,
    work_dir: str | Path | None = None,
    cost: CalibrationCost | None = None,
    max_blocks: int | None = None,
) -> CalibrationRecord:
    """Calibrate a DiT end to end: trajectories -> per-group data -> search -> record.

    With `work_dir` the run is resumable (`calibration.calibrate`): the trajectories' data, the
    captures and every finished block are kept there, and a second call with the same arguments
    continues. `cost` gets the times (trajectories included) and peak memory; `max_blocks`: see
    `calibration.calibrate.calibrate`.
    """
    groups = TimeGroups.uniform(config.num_groups, NUM_TRAIN_TIMESTEPS)
    start = time.perf_counter()
    settings = {"samples_per_group": samples_per_group, "seed": config.seed, "cfg_scale": cfg_scale,
                "trajectory_steps": trajectory_steps, "clip_denoised": clip_denoised, "groups": config.num_groups}
    meta_json = _data_meta(model, settings) if work_dir is not None else ""
    data = _cached_data(work_dir, meta_json, device) if work_dir is not None else None
    resumed = data is not None
    if data is None:
        data = collect_calibration_data(model, groups, samples_per_group, config.seed, cfg_scale, trajectory_steps,
                                        clip_denoised, device, progress)
        if work_dir is not None:
            _cache_data(work_dir, meta_json, data, time.perf_counter() - start)
    cost = cost if cost is not None else CalibrationCost()
    cost.extra["trajectory_seconds"] = (_cached_seconds(work_dir) if resumed
                                        else round(time.perf_counter() - start, 3))
    cost.extra["trajectory_resumed"] = resumed
    record = calibrate(model, dit_sites(model, exclude), data, denoising_loss, config, groups,
                       dataclasses.asdict(model.config), progress, work_dir=work_dir, cost=cost,
                       max_blocks=max_blocks)
    record.method.update({"samples_per_group": samples_per_group, "cfg_scale": cfg_scale,
                          "trajectory_steps": trajectory_steps})
    return record


DATA_FILE = "data.safetensors"


def _data_meta(model: DiT, settings: dict) -> str:
    return json.dumps({"model_hash": model_fingerprint(model), **settings}, sort_keys=True)  # seconds on XL/2


def _cached_data(work_dir: str | Path, meta_json: str, device: str) -> list[GroupData] | None:
    """The calibration data an interrupted run of the same settings saved in `work_dir`, or None.

    Data of other settings is refused here, before minutes of trajectories, as `calibrate`
    would refuse the rest of that folder."""
    path = Path(work_dir) / DATA_FILE
    if not path.is_file():
        return None
    tensors, meta = read_tensors(path, device=device)
    if meta.get("settings") != meta_json:
        stored = json.loads(meta.get("settings", "{}"))
        new = json.loads(meta_json)
        differ = sorted(k for k in stored.keys() | new.keys() if stored.get(k) != new.get(k))
        raise ValueError(f"{work_dir} holds a checkpoint of another calibration (its data differs in "
                         f"{', '.join(differ)}); run the command that started it, or remove {work_dir} (rm -r) "
                         "to start this one")
    groups = int(meta["groups"])
    return [GroupData(tuple(tensors[f"{g}/inputs/{i}"] for i in range(3)),
                      tuple(tensors[f"{g}/target/{i}"] for i in range(4))) for g in range(groups)]


def _cache_data(work_dir: str | Path, meta_json: str, data: list[GroupData], seconds: float) -> None:
    folder = Path(work_dir)
    WorkFolder.check_foreign(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for g, d in enumerate(data):
        # Cloned: targets share storage with the inputs (x_t, t), which safetensors refuses to save.
        tensors.update({f"{g}/inputs/{i}": t.clone() for i, t in enumerate(d.inputs)})
        tensors.update({f"{g}/target/{i}": t.clone() for i, t in enumerate(d.target)})
    save_tensors_atomic(folder / DATA_FILE, tensors, {"settings": meta_json,
                                                      "groups": str(len(data)), "seconds": repr(seconds)})


def _cached_seconds(work_dir: str | Path) -> float:
    return round(float(read_tensors(Path(work_dir) / DATA_FILE, [])[1].get("seconds", "nan")), 3)


class FakeQuantBackend:
    """The fake-quant reference backend: picks each call's time group from its timestep."""

    name = "torch-fakequant"

    def __init__(self, model: nn.Module, record: CalibrationRecord, device: str = "cpu",
                 reduce_range: bool = False, exact_sums: bool = False, attention: bool = True,
                 uniform_operands: frozenset[str] = frozenset()) -> None:
        qmodel, self.selector = quantize_model(model, record, reduce_range, exact_sums, attention,
                                               frozenset(uniform_operands))
        self.model = qmodel.to(device).eval()
        self.groups = record.time_groups
        self.device = device

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.selector.set(self.groups.group_of(t))
        return self.model(x.to(self.device), t.to(self.device), y.to(self.device))
