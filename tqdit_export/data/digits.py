"""scikit-learn's bundled handwritten digits (UCI optdigits test set): 1797 images, 8x8, 0..16.

One fixed, stratified split serves every script: the DiT and the metrics classifier train
on `train`; the Fréchet distance compares samples with `heldout`, which neither has seen.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DIGITS_SHAPE = (1, 8, 8)
PIXEL_MAX = 16.0
HELDOUT_FRACTION = 0.2
SPLIT_SEED = 0


@dataclass(frozen=True)
class DigitsSplit:
    """Images in the model range [-1, 1], (N, 1, 8, 8) float32, and labels (N,) int64."""

    train_images: np.ndarray
    train_labels: np.ndarray
    heldout_images: np.ndarray
    heldout_labels: np.ndarray


def to_model_range(pixels: np.ndarray) -> np.ndarray:
    """0..16 grey levels -> [-1, 1]."""
    return (np.asarray(pixels, dtype=np.float32) / (PIXEL_MAX / 2) - 1.0).astype(np.float32)


def from_model_range(x: np.ndarray) -> np.ndarray:
    """[-1, 1] -> 0..16 grey levels (clipped, not rounded)."""
    return np.clip((np.asarray(x, dtype=np.float32) + 1.0) * (PIXEL_MAX / 2), 0.0, PIXEL_MAX)


def digits_split() -> DigitsSplit:
    """The project's fixed train / held-out split (80/20, stratified by class, seed 0)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    images = to_model_range(data.images.reshape(-1, *DIGITS_SHAPE))
    labels = data.target.astype(np.int64)
    tr_x, ho_x, tr_y, ho_y = train_test_split(
        images, labels, test_size=HELDOUT_FRACTION, random_state=SPLIT_SEED, stratify=labels
    )
    return DigitsSplit(tr_x, tr_y, ho_x, ho_y)
