"""The PyTorch backend: the float model (later also the fake-quant reference)."""
from __future__ import annotations

import torch
import torch.nn as nn


class TorchBackend:
    """Runs a torch DiT as a denoiser; inputs arrive on the CPU and go to `device`."""

    name = "torch"

    def __init__(self, model: nn.Module, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(self.device), t.to(self.device), y.to(self.device))
