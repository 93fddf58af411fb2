"""DDPM and DDIM sampling loops over any denoiser.

A denoiser is any callable `denoiser(x, t, y) -> model output` taking a noisy batch
(N, C, H, W) float32, the *training* timesteps (N,) int64 and the labels (N,) int64, and
returning epsilon and variance channels (N, 2C, H, W). The torch model, a fake-quant
model, an ONNX Runtime session or a TensorRT engine all fit; the loop never knows which.

Classifier-free guidance doubles the batch: the first half carries the labels, the second
the null class, and the guided epsilon is uncond + s * (cond - uncond). The variance
channels come from the conditional half.
"""
from __future__ import annotations

from typing import Callable, Protocol

import torch
from tqdm.auto import tqdm

from .gaussian import GaussianDiffusion
from .schedule import SAMPLERS, SamplerConfig  # noqa: F401  (re-exported)


class Denoiser(Protocol):
    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor: ...


def guided_output(denoiser: Denoiser, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor,
                  cfg_scale: float, null_class: int) -> torch.Tensor:
    """One denoiser evaluation, with classifier-free guidance when cfg_scale > 1."""
    if cfg_scale == 1.0:
        return denoiser(x, t, y)
    n, c = x.shape[0], x.shape[1]
    out = denoiser(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, null_class)]))
    cond, uncond = out[:n], out[n:]
    eps = uncond[:, :c] + cfg_scale * (cond[:, :c] - uncond[:, :c])
    return torch.cat([eps, cond[:, c:]], dim=1)


def sample(
    denoiser: Denoiser,
    y: torch.Tensor,
    shape: tuple[int, int, int],
    config: SamplerConfig,
    null_class: int,
    seed: int = 0,
    noise: torch.Tensor | None = None,
    progress: bool = True,
    on_step: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Draw len(y) samples of `shape` (C, H, W); returns x0 (N, C, H, W) on the CPU, float32.

    The initial noise and every DDPM noise draw come from a CPU generator seeded with
    `seed`, so a seeded run is reproducible whatever the denoiser runs on. `on_step`
    is called as on_step(train_t, x_t, y) before each denoiser call (calibration records
    trajectories through it).
    """
    diffusion = config.diffusion()
    gen = torch.Generator().manual_seed(seed)
    n = y.shape[0]
    x = torch.randn((n, *shape), generator=gen) if noise is None else noise.clone().float()
    if x.shape != (n, *shape):
        raise ValueError(f"noise has shape {tuple(x.shape)}, expected {(n, *shape)}")
    y = y.long()
    steps = range(diffusion.num_timesteps - 1, -1, -1)
    for i in tqdm(steps, desc=f"{config.sampler} {config.steps} steps", disable=not progress, leave=False):
        step = torch.full((n,), i, dtype=torch.long)
        t_train = diffusion.training_timesteps(step)
        if on_step is not None:
            on_step(int(t_train[0]), x, y)
        with torch.no_grad():
            out = guided_output(denoiser, x, t_train, y, config.cfg_scale, null_class).float().cpu()
        if config.sampler == "ddpm":
            x = _ddpm_step(diffusion, out, x, step, config.clip_denoised, gen)
        else:
            x = _ddim_step(diffusion, out, x, step, config.clip_denoised, config.eta, gen)
    return x


def _ddpm_step(diffusion: GaussianDiffusion, out: torch.Tensor, x: torch.Tensor, step: torch.Tensor,
               clip: bool, gen: torch.Generator) -> torch.Tensor:
    mean, log_var, _, _ = diffusion.p_mean_variance(out, x, step, clip)
    noise = torch.randn(x.shape, generator=gen)
    nonzero = (step != 0).float().view(-1, *([1] * (x.dim() - 1)))  # no noise at the last step
    return (mean + nonzero * torch.exp(0.5 * log_var) * noise).float()


def _ddim_step(diffusion: GaussianDiffusion, out: torch.Tensor, x: torch.Tensor, step: torch.Tensor,
               clip: bool, eta: float, gen: torch.Generator) -> torch.Tensor:
    _, _, x0, _ = diffusion.p_mean_variance(out, x, step, clip)
    eps = diffusion.eps_from_x0(x, step, x0)  # re-derived so clipping is consistent
    shape = [-1] + [1] * (x.dim() - 1)
    ab = diffusion.alphas_cumprod[step].view(shape)
    ab_prev = diffusion.alphas_cumprod_prev[step].view(shape)
    sigma = eta * torch.sqrt((1 - ab_prev) / (1 - ab)) * torch.sqrt(1 - ab / ab_prev)
    mean = x0 * torch.sqrt(ab_prev) + torch.sqrt(1 - ab_prev - sigma**2) * eps
    if eta > 0:
        nonzero = (step != 0).double().view(shape)
        mean = mean + nonzero * sigma * torch.randn(x.shape, generator=gen)
    return mean.float()
