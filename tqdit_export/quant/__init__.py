"""TQ-DiT applied to DiT: the sites, the calibration data from FP trajectories, the fake-quant backend."""
from .dit_calibration import (
    BITS_PRESETS,
    FakeQuantBackend,
    calibrate_dit,
    collect_calibration_data,
    denoising_loss,
    dit_sites,
    parse_bits,
)

__all__ = ["BITS_PRESETS", "FakeQuantBackend", "calibrate_dit", "collect_calibration_data", "denoising_loss",
           "dit_sites", "parse_bits"]
