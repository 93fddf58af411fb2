"""Diffusion process and samplers; backend-agnostic (they call a denoiser)."""
from .gaussian import NUM_TRAIN_TIMESTEPS, GaussianDiffusion, linear_betas, space_timesteps
from .samplers import SAMPLERS, Denoiser, SamplerConfig, guided_output, sample

__all__ = [
    "NUM_TRAIN_TIMESTEPS", "GaussianDiffusion", "linear_betas", "space_timesteps",
    "SAMPLERS", "Denoiser", "SamplerConfig", "guided_output", "sample",
]
