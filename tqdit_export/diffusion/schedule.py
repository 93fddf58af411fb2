"""The noise schedule in numpy: betas, respacing, the coefficient tables of the reverse step,
and the sampler settings.

numpy only (no torch), so the torch sampler (`samplers.py`) and the torch-free edge
sampler (`tqdit_export.edge`) compute from the same tables and take the same config.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NUM_TRAIN_TIMESTEPS = 1000
SAMPLERS = ("ddpm", "ddim")
OFFICIAL_CFG_CHANNELS = 3  # facebookresearch/DiT `forward_with_cfg`: eps, rest = out[:, :3], out[:, 3:]


@dataclass
class SamplerConfig:
    """How to sample. Defaults: DDPM, 100 steps, guidance 1.5 (the paper's settings), no clipping,
    every epsilon channel guided.

    `cfg_channels`: how many leading epsilon channels guidance acts on (None: all).
    facebookresearch/DiT guides 3 of its 4 latent channels; `OFFICIAL_CFG_CHANNELS`
    reproduces the paper's numbers with its checkpoints.
    """

    sampler: str = "ddpm"
    steps: int = 100
    cfg_scale: float = 1.5
    clip_denoised: bool = False
    eta: float = 0.0  # DDIM only: 0 is deterministic
    cfg_channels: int | None = None

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler {self.sampler!r} is unknown; choose one of {SAMPLERS}")
        if self.steps < 1 or self.steps > 1000:
            raise ValueError(f"steps={self.steps} must be in 1..1000")
        if self.cfg_scale < 1.0:
            raise ValueError(f"cfg_scale={self.cfg_scale} must be >= 1 (1 turns guidance off)")
        if not 0.0 <= self.eta <= 1.0:
            raise ValueError(f"eta={self.eta} must be in [0, 1] (0: deterministic DDIM, 1: DDPM-like noise)")
        if self.eta != 0.0 and self.sampler != "ddim":
            raise ValueError(f"eta={self.eta} applies to the DDIM sampler only; use --sampler ddim or drop --eta")
        if self.cfg_channels is not None and self.cfg_channels < 1:
            raise ValueError(f"cfg_channels={self.cfg_channels} must be at least 1 (or unset: guide every channel)")
        if self.sampler == "ddim":
            space_timesteps(NUM_TRAIN_TIMESTEPS, self.spacing)  # refused here, not mid-loop, when no stride fits

    @property
    def spacing(self) -> int | str:
        """The respacing this sampler uses: the step count, or "ddimN"."""
        return f"ddim{self.steps}" if self.sampler == "ddim" else self.steps


def linear_betas(num_timesteps: int = NUM_TRAIN_TIMESTEPS) -> np.ndarray:
    """Linear schedule of DDPM, scaled so any T spans the same noise range (1e-4..0.02 at T=1000)."""
    scale = 1000 / num_timesteps
    return np.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=np.float64)


def space_timesteps(num_timesteps: int, steps: int | str) -> list[int]:
    """Training timesteps kept by a respaced sampler of `steps` steps, ascending.

    `steps` as an int (or "100") spaces evenly with both ends kept, like ADM's single
    section; "ddimN" uses the stride range(0, T, T // N) of the DDIM paper.
    """
    if isinstance(steps, str) and steps.startswith("ddim"):
        n = int(steps[len("ddim") :])
        counts = ddim_step_counts(num_timesteps)
        if n not in counts:
            below = max((c for c in counts if c < n), default=None)
            above = min((c for c in counts if c > n), default=None)
            nearest = " or ".join(str(c) for c in (below, above) if c is not None)
            raise ValueError(f"steps={n}: DDIM cannot make exactly {n} steps out of {num_timesteps} timesteps "
                             f"(its steps are range(0, {num_timesteps}, stride)); the nearest step counts it "
                             f"can make are {nearest}")
        return list(range(0, num_timesteps, counts[n]))
    n = int(steps)
    if not 1 <= n <= num_timesteps:
        raise ValueError(f"steps={n} must be between 1 and {num_timesteps}")
    if n == 1:
        return [0]
    # Accumulate the float stride exactly as ADM does, so respaced schedules match its
    # checkpoints' sampling bit for bit (i * stride can round differently at .5).
    stride = (num_timesteps - 1) / (n - 1)
    kept, cur = set(), 0.0
    for _ in range(n):
        kept.add(round(cur))
        cur += stride
    return sorted(kept)


def ddim_step_counts(num_timesteps: int = NUM_TRAIN_TIMESTEPS) -> dict[int, int]:
    """Every step count DDIM's range(0, T, stride) can make, with its (smallest) stride."""
    counts: dict[int, int] = {}
    for stride in range(1, num_timesteps):
        counts.setdefault(len(range(0, num_timesteps, stride)), stride)
    return counts


def respaced_betas(steps: int | str, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> tuple[np.ndarray, list[int]]:
    """Betas of the linear process respaced to `steps`, and the training timestep of each step."""
    ac = np.cumprod(1.0 - linear_betas(num_train_timesteps))
    kept = space_timesteps(num_train_timesteps, steps)
    new_betas, last = [], 1.0
    for i in kept:
        new_betas.append(1 - ac[i] / last)
        last = ac[i]
    return np.array(new_betas), kept


def schedule_tables(betas: np.ndarray) -> dict[str, np.ndarray]:
    """float64 per-step tables of the forward process, the posterior and the learned-sigma step."""
    betas = np.asarray(betas, dtype=np.float64)
    if betas.ndim != 1 or not ((betas > 0) & (betas <= 1)).all():
        raise ValueError("betas must be a 1-D array in (0, 1]")
    alphas = 1.0 - betas
    ac = np.cumprod(alphas)
    ac_prev = np.append(1.0, ac[:-1])
    post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
    # The posterior variance is 0 at t=0: clip the log like ADM.
    post_log_var = np.log(np.append(post_var[1], post_var[1:])) if len(post_var) > 1 else np.log(betas)
    return {
        "betas": betas,
        "alphas_cumprod": ac,
        "alphas_cumprod_prev": ac_prev,
        "sqrt_alphas_cumprod": np.sqrt(ac),
        "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - ac),
        "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / ac),
        "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / ac - 1),
        "posterior_variance": post_var,
        "posterior_log_variance_clipped": post_log_var,
        "posterior_mean_coef1": betas * np.sqrt(ac_prev) / (1.0 - ac),
        "posterior_mean_coef2": (1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac),
        "log_betas": np.log(betas),
    }
