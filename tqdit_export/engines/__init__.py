"""Backends: callables `backend(x, t, y) -> model output` that the sampler drives."""
from .torch_backend import TorchBackend

__all__ = ["TorchBackend"]
