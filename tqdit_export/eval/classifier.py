"""The bundled digits classifier: accuracy of class-conditional samples and the feature
space of the Fréchet distance on the 8x8 digits (the role Inception plays for ImageNet).

Trained on the train split only by `python -m tqdit_export.training.train_classifier`;
the weights ship as `tqdit_export/eval/weights/digits-classifier.safetensors`.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

FORMAT = "tqdit-digits-classifier"
NUM_CLASSES = 10
FEATURE_DIM = 64
DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "weights" / "digits-classifier.safetensors"


class DigitsClassifier(nn.Module):
    """Small CNN for (N, 1, 8, 8) images in [-1, 1].

    conv 1->32 (3x3, pad 1), ReLU, conv 32->64 (3x3, pad 1), ReLU, maxpool 2, flatten,
    linear 1024->64, ReLU (= the 64-d `features`), dropout, linear 64->10 (logits).
    """

    def __init__(self, dropout: float = 0.3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc1 = nn.Linear(64 * 4 * 4, FEATURE_DIM)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(FEATURE_DIM, NUM_CLASSES)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations, (N, 64), non-negative (post-ReLU)."""
        h = torch.relu(self.conv1(x))
        h = torch.relu(self.conv2(h))
        h = torch.max_pool2d(h, 2)
        return torch.relu(self.fc1(h.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dropout(self.features(x)))


def read_classifier_metadata(path: str | Path | None = None) -> dict:
    """The training info stored with the weights (held-out accuracy, epochs, seed, ...)."""
    from safetensors import safe_open

    path = Path(path) if path is not None else DEFAULT_WEIGHTS
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not a digits-classifier file (no '{FORMAT}' metadata)")
    return json.loads(meta.get("info", "{}"))


def load_digits_classifier(path: str | Path | None = None, device: str | torch.device = "cpu") -> DigitsClassifier:
    """The committed classifier (or the one at `path`), in eval mode."""
    from safetensors.torch import load_file

    path = Path(path) if path is not None else DEFAULT_WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(
            f"digits classifier weights not found at {path}; create them with "
            "`python -m tqdit_export.training.train_classifier`"
        )
    read_classifier_metadata(path)
    model = DigitsClassifier()
    model.load_state_dict(load_file(str(path), device=str(device)))
    return model.to(device).eval()
