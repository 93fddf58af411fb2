"""DDPM / DDIM sampling in numpy, the same arithmetic as `tqdit_export.diffusion.samplers`.

Every operation mirrors the torch sampler's, in the same order and precision (float32
state, float64 tables cast to float32 where the torch code casts them, float64 where it
keeps them), so given the same denoiser outputs and the same noise both produce the
same images (tests/edge). A denoiser here is `denoiser(x, t, y) -> out` on numpy arrays.
"""
from __future__ import annotations

from typing import Callable, Protocol

import numpy as np

from ..diffusion.schedule import SamplerConfig, respaced_betas, schedule_tables

class NumpyDenoiser(Protocol):
    def __call__(self, x: np.ndarray, t: np.ndarray, y: np.ndarray) -> np.ndarray: ...


def _col(table: np.ndarray, step: np.ndarray, ndim: int, dtype=np.float32) -> np.ndarray:
    return table[step].astype(dtype).reshape(-1, *([1] * (ndim - 1)))


def guided_output(denoiser: NumpyDenoiser, x: np.ndarray, t: np.ndarray, y: np.ndarray, cfg_scale: float,
                  null_class: int) -> np.ndarray:
    """One denoiser evaluation with classifier-free guidance (conditional half first, as the torch sampler)."""
    if cfg_scale == 1.0:
        return np.asarray(denoiser(x, t, y), dtype=np.float32)
    n, c = x.shape[0], x.shape[1]
    out = np.asarray(denoiser(np.concatenate([x, x]), np.concatenate([t, t]),
                              np.concatenate([y, np.full_like(y, null_class)])), dtype=np.float32)
    cond, uncond = out[:n], out[n:]
    eps = uncond[:, :c] + np.float32(cfg_scale) * (cond[:, :c] - uncond[:, :c])
    return np.concatenate([eps, cond[:, c:]], axis=1)


def sample_numpy(denoiser: NumpyDenoiser, y: np.ndarray, shape: tuple[int, int, int], config: SamplerConfig,
                 null_class: int, seed: int = 0, noise: np.ndarray | None = None,
                 noise_fn: Callable[[tuple[int, ...]], np.ndarray] | None = None,
                 on_step: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Draw len(y) samples of `shape` (C, H, W); returns x0 (N, C, H, W) float32.

    Noise comes from `noise_fn(shape)` when given (the initial draw first, then one per
    DDPM step, as the torch sampler draws), else from numpy's PCG64 seeded with `seed`.
    """
    betas, timestep_map = respaced_betas(config.spacing)
    tab = schedule_tables(betas)
    rng = np.random.default_rng(seed)
    draw = noise_fn or (lambda s: rng.standard_normal(s, dtype=np.float32))
    y = np.asarray(y, dtype=np.int64)
    n = y.shape[0]
    x = np.asarray(draw((n, *shape)) if noise is None else noise, dtype=np.float32).copy()
    if x.shape != (n, *shape):
        raise ValueError(f"noise has shape {x.shape}, expected {(n, *shape)}")
    c, nd = shape[0], x.ndim
    for i in range(len(betas) - 1, -1, -1):
        step = np.full((n,), i, dtype=np.int64)
        t_train = np.asarray(timestep_map, dtype=np.int64)[step]
        if on_step is not None:
            on_step(i, int(t_train[0]))
        out = guided_output(denoiser, x, t_train, y, config.cfg_scale, null_class)
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
            x = (mean + nonzero * np.exp(np.float32(0.5) * log_var) * z).astype(np.float32)
        else:
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
