"""Diffusion process and samplers; backend-agnostic (they call a denoiser).

Names load lazily, so `schedule` (tables and `SamplerConfig`) and `loop` (the one sampling
loop) import without torch: the edge runtime depends on that. `sample` is the torch
adapter over the same loop.
"""
from importlib import import_module

_EXPORTS = {
    "NUM_TRAIN_TIMESTEPS": "schedule", "linear_betas": "schedule", "space_timesteps": "schedule",
    "GaussianDiffusion": "gaussian",
    "SAMPLERS": "schedule", "SamplerConfig": "schedule", "OFFICIAL_CFG_CHANNELS": "schedule",
    "Denoiser": "samplers", "sample": "samplers", "guided_output": "loop", "sample_numpy": "loop",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
