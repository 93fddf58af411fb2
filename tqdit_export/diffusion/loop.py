"""The one DDPM / DDIM sampling loop, in numpy, for every runtime.

The torch sampler (`samplers.sample`, which calibration also drives), the edge runtime
(`tqdit_export.edge`, no torch) and every benchmark run this loop; the torch side only
converts tensors at the denoiser boundary and supplies its generator's noise. One loop
means one float order: two loops doing the same arithmetic in different orders gave
1-ulp differences that a quantized denoiser turned into flipped codes (on VNNI CPUs, whose
integer kernels round differently from the AVX2 ones).

A denoiser here is `denoiser(x, t, y) -> out` on numpy arrays: x (N, C, H, W) float32, t
(N,) int64 *training* timesteps, y (N,) int64 labels; out (N, 2C, H, W): epsilon, then the
learned-range variance channels. Arithmetic: float32 state; the float64 schedule tables
cast to float32 for the DDPM step, kept in float64 for the DDIM step's coefficients.

References: Ho et al. 2020 (DDPM); Nichol & Dhariwal 2021 (learned sigma, respacing);
Song et al. 2021 (DDIM); Ho & Salimans 2022 (classifier-free guidance). Numpy only: no
torch import here, the edge runtime depends on that.
"""
from __future__ import annotations

from typing import Callable, Protocol

import numpy as np

from .schedule import SamplerConfig, respaced_betas, schedule_tables

NoiseFn = Callable[[tuple[int, ...]], np.ndarray]
StepHook = Callable[[int, np.ndarray, np.ndarray], None]


class NumpyDenoiser(Protocol):
    def __call__(self, x: np.ndarray, t: np.ndarray, y: np.ndarray) -> np.ndarray: ...


def _col(table: np.ndarray, step: np.ndarray, ndim: int, dtype=np.float32) -> np.ndarray:
    return table[step].astype(dtype).reshape(-1, *([1] * (ndim - 1)))


def _exp(x: np.ndarray) -> np.ndarray:
    """exp of a float32 array, correctly rounded to float32 (through float64).

    numpy's float32 exp is a fast SIMD approximation whose last bit differs from the
    correctly rounded value in about 40% of cases and differs between its AVX2 and
    AVX-512 builds; through float64 the result is the same on every CPU kind.
    """
    return np.exp(x.astype(np.float64)).astype(np.float32)


def guided_output(denoiser: NumpyDenoiser, x: np.ndarray, t: np.ndarray, y: np.ndarray, cfg_scale: float,
                  null_class: int, cfg_channels: int | None = None) -> np.ndarray:
    """One denoiser evaluation, with classifier-free guidance when cfg_scale != 1.

    Guidance doubles the batch: the conditional half first, then the null class. The first
    `cfg_channels` epsilon channels (default: all) are guided, uncond + s * (cond - uncond);
    every other channel, the variance channels included, comes from the conditional half.
    facebookresearch/DiT's `forward_with_cfg` guides 3 of its 4 latent channels.
    """
    if cfg_scale == 1.0:
        return np.asarray(denoiser(x, t, y), dtype=np.float32)
    n, c = x.shape[0], x.shape[1]
    k = c if cfg_channels is None else cfg_channels
    if not 1 <= k <= c:
        raise ValueError(f"cfg_channels={cfg_channels}: the model has {c} epsilon channels; guide 1..{c}")
    out = np.asarray(denoiser(np.concatenate([x, x]), np.concatenate([t, t]),
                              np.concatenate([y, np.full_like(y, null_class)])), dtype=np.float32)
    cond, uncond = out[:n], out[n:]
    eps = uncond[:, :k] + np.float32(cfg_scale) * (cond[:, :k] - uncond[:, :k])
    return np.concatenate([eps, cond[:, k:]], axis=1)


def sample_numpy(denoiser: NumpyDenoiser, y: np.ndarray, shape: tuple[int, int, int], config: SamplerConfig,
                 null_class: int, seed: int = 0, noise: np.ndarray | None = None,
                 noise_fn: NoiseFn | None = None, on_step: StepHook | None = None,
                 progress: bool = False) -> np.ndarray:
    """Draw len(y) samples of `shape` (C, H, W); returns x0 (N, C, H, W) float32.

    Noise comes from `noise_fn(shape)` when given (the initial draw first unless `noise`
    is given, then one draw per DDPM step, the last included, and one per DDIM step when
    eta > 0), else from numpy's PCG64 seeded with `seed`. `on_step(train_t, x_t, y)` is
    called before each denoiser call (calibration records trajectories through it).
    `progress` shows a tqdm bar (default off).
    """
    betas, timestep_map = respaced_betas(config.spacing)
    tab = schedule_tables(betas)
    rng = np.random.default_rng(seed)
    draw = noise_fn or (lambda s: rng.standard_normal(s, dtype=np.float32))
    y = np.asarray(y, dtype=np.int64)
    n = y.shape[0]
    x = np.array(draw((n, *shape)) if noise is None else noise, dtype=np.float32)
    if x.shape != (n, *shape):
        raise ValueError(f"noise has shape {x.shape}, expected {(n, *shape)}")
    c, nd = shape[0], x.ndim
    steps = range(len(betas) - 1, -1, -1)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc=f"{config.sampler} {config.steps} steps", leave=False)
    for i in steps:
        step = np.full((n,), i, dtype=np.int64)
        t_train = np.asarray(timestep_map, dtype=np.int64)[step]
        if on_step is not None:
            on_step(int(t_train[0]), x, y)
        out = guided_output(denoiser, x, t_train, y, config.cfg_scale, null_class, config.cfg_channels)
        if out.shape[1] != 2 * c:
            raise ValueError(f"denoiser output has {out.shape[1]} channels; a learned-sigma model gives 2x{c}")
        eps, v = out[:, :c], out[:, c:]
        x0 = _col(tab["sqrt_recip_alphas_cumprod"], step, nd) * x - _col(tab["sqrt_recipm1_alphas_cumprod"], step, nd) * eps
        if config.clip_denoised:
            x0 = np.clip(x0, -1, 1)
        if config.sampler == "ddpm":
            frac = (v + 1) / 2
            log_var = frac * _col(tab["log_betas"], step, nd) + (1 - frac) * _col(
                tab["posterior_log_variance_clipped"], step, nd)
            mean = _col(tab["posterior_mean_coef1"], step, nd) * x0 + _col(tab["posterior_mean_coef2"], step, nd) * x
            z = np.asarray(draw(x.shape), dtype=np.float32)
            nonzero = (step != 0).astype(np.float32).reshape(-1, *([1] * (nd - 1)))  # no noise at the last step
            x = (mean + nonzero * _exp(np.float32(0.5) * log_var) * z).astype(np.float32)
        else:
            # epsilon re-derived from the (possibly clipped) x0, so both agree
            eps = (_col(tab["sqrt_recip_alphas_cumprod"], step, nd) * x - x0) / _col(
                tab["sqrt_recipm1_alphas_cumprod"], step, nd)
            ab = _col(tab["alphas_cumprod"], step, nd, np.float64)
            ab_prev = _col(tab["alphas_cumprod_prev"], step, nd, np.float64)
            sigma = config.eta * np.sqrt((1 - ab_prev) / (1 - ab)) * np.sqrt(1 - ab / ab_prev)
            mean = x0 * np.sqrt(ab_prev) + np.sqrt(1 - ab_prev - sigma**2) * eps
            if config.eta > 0:
                nonzero = (step != 0).astype(np.float64).reshape(-1, *([1] * (nd - 1)))
                mean = mean + nonzero * sigma * np.asarray(draw(x.shape), dtype=np.float32)
            x = mean.astype(np.float32)
    return x
