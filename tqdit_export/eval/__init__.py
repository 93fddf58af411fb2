"""Evaluation: the bundled digits classifier, FD / accuracy / PSNR metrics, sample grids."""
from .classifier import DigitsClassifier, load_digits_classifier, read_classifier_metadata
from .grid import grid_canvas, save_image_grid, save_side_by_side
from .metrics import (
    DigitsFeatures,
    FeatureExtractor,
    OnnxFeatureExtractor,
    class_accuracy,
    class_mean_shift,
    class_spread,
    evaluate_digits,
    frechet_distance,
    frechet_terms,
    paired_psnr,
)

__all__ = [
    "DigitsClassifier",
    "DigitsFeatures",
    "FeatureExtractor",
    "OnnxFeatureExtractor",
    "class_accuracy",
    "class_mean_shift",
    "class_spread",
    "evaluate_digits",
    "frechet_distance",
    "frechet_terms",
    "load_digits_classifier",
    "paired_psnr",
    "read_classifier_metadata",
    "grid_canvas",
    "save_image_grid",
    "save_side_by_side",
]
