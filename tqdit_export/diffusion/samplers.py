"""The torch face of the sampling loop: torch denoisers and tensors in, the numpy loop inside.

A denoiser is any callable `denoiser(x, t, y) -> model output` taking a noisy batch
(N, C, H, W) float32, the *training* timesteps (N,) int64 and the labels (N,) int64, and
returning epsilon and variance channels (N, 2C, H, W). The torch model, a fake-quant
model, an ONNX Runtime session or a TensorRT engine all fit; the loop never knows which.

The loop itself is `loop.sample_numpy`, the one the torch-free edge runtime runs: this
adapter converts tensors at the denoiser boundary and draws the noise from a torch
generator, and adds no arithmetic of its own, so both paths give the same images from the
same denoiser and noise, bit for bit.
"""
from __future__ import annotations

from typing import Callable, Protocol

import numpy as np
import torch

from .loop import sample_numpy
from .schedule import SAMPLERS, SamplerConfig  # noqa: F401  (re-exported)


class Denoiser(Protocol):
    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor: ...


def numpy_denoiser(denoiser: Denoiser) -> Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]:
    """`denoiser` on numpy arrays: CPU tensors in (sharing the arrays' memory), float32 numpy out."""

    @torch.no_grad()
    def call(x: np.ndarray, t: np.ndarray, y: np.ndarray) -> np.ndarray:
        out = denoiser(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(y))
        return out.float().cpu().numpy()

    return call


def torch_noise(seed: int) -> Callable[[tuple[int, ...]], np.ndarray]:
    """Standard normal draws from a CPU torch generator seeded with `seed`, as numpy arrays.

    A seeded run then gives the same images whatever the denoiser runs on, and the same
    as a torch sampler drawing `torch.randn(shape, generator=gen)` in the loop's order.
    """
    gen = torch.Generator().manual_seed(seed)
    return lambda shape: torch.randn(shape, generator=gen).numpy()


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

    The initial noise (unless `noise` is given) and every later draw come from a CPU torch
    generator seeded with `seed`. `on_step(train_t, x_t, y)` is called with CPU tensors
    before each denoiser call (calibration records trajectories through it; x_t shares
    the loop's memory: clone it to keep it). `progress` shows a bar (default on).
    """
    hook = None
    if on_step is not None:
        def hook(t: int, x: np.ndarray, labels: np.ndarray) -> None:
            on_step(t, torch.from_numpy(x), torch.from_numpy(labels))

    x = sample_numpy(numpy_denoiser(denoiser), y.long().cpu().numpy(), shape, config, null_class,
                     noise=None if noise is None else noise.detach().float().cpu().numpy(),
                     noise_fn=torch_noise(seed), on_step=hook, progress=progress)
    return torch.from_numpy(x)
