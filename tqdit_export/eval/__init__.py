"""Evaluation: the bundled digits classifier, FD / accuracy / PSNR metrics, sample grids."""
from .classifier import DigitsClassifier, load_digits_classifier, read_classifier_metadata
from .grid import save_image_grid
from .metrics import (
    DigitsFeatures,
    FeatureExtractor,
    OnnxFeatureExtractor,
    class_accuracy,
    evaluate_digits,
    frechet_distance,
    paired_psnr,
)

__all__ = [
    "DigitsClassifier",
    "DigitsFeatures",
    "FeatureExtractor",
    "OnnxFeatureExtractor",
    "class_accuracy",
    "evaluate_digits",
    "frechet_distance",
    "load_digits_classifier",
    "paired_psnr",
    "read_classifier_metadata",
    "save_image_grid",
]
