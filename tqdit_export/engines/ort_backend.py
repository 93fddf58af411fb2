"""ONNX Runtime backend: the torch face of `tqdit_export.edge.OrtDenoiser` (integer Q/DQ kernels on the CPU,
the CUDA EP when onnxruntime-gpu is installed)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..edge.ort_runtime import DISABLED_OPTIMIZERS, OrtDenoiser, make_session

__all__ = ["DISABLED_OPTIMIZERS", "OrtBackend", "make_session"]


class OrtBackend:
    """Denoiser over an export folder (per-group, single or plugin layout) taking and returning torch tensors."""

    name = "ort"

    def __init__(self, export_dir: str | Path, threads: int | None = None, providers: list[str] | None = None,
                 fp32: bool = False) -> None:
        self.denoiser = OrtDenoiser(export_dir, threads, providers, fp32)
        self.manifest = self.denoiser.manifest
        self.sessions = self.denoiser.sessions
        self.feeds_group = self.denoiser.feeds_group
        if fp32:
            self.name = "ort-fp32"

    def session_for(self, t: torch.Tensor):
        """The session that serves timesteps `t` (per-group layout: the session of their group)."""
        return self.denoiser.session_for(t.cpu().numpy())

    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = self.denoiser(x.detach().cpu().numpy().astype(np.float32), t.cpu().numpy(), y.cpu().numpy())
        return torch.from_numpy(out)
