"""Diffusion process and samplers; backend-agnostic (they call a denoiser).

Names load lazily, so `tqdit_export.diffusion.schedule` (numpy only: tables and
`SamplerConfig`) imports without torch: the edge runtime depends on that.
"""
from importlib import import_module

_EXPORTS = {
    "NUM_TRAIN_TIMESTEPS": "schedule", "linear_betas": "schedule", "space_timesteps": "schedule",
    "GaussianDiffusion": "gaussian",
    "SAMPLERS": "schedule", "SamplerConfig": "schedule", "Denoiser": "samplers", "guided_output": "samplers",
    "sample": "samplers",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
