"""The calibrated tiny DiT the export tests share: one record per bit width (W8A8, W6A6), 3 time groups."""
import pytest

from calibration.calibrate import CalibrationConfig
from tqdit_export.quant import calibrate_dit


@pytest.fixture(scope="module")
def model(make_tiny_dit):
    return make_tiny_dit()


@pytest.fixture(scope="module", params=["W8A8", "W6A6"])
def record(request, model):
    w, a = (8, 8) if request.param == "W8A8" else (6, 6)
    return calibrate_dit(model, CalibrationConfig(w, a, num_groups=3, rounds=1), samples_per_group=4,
                         trajectory_steps=20, progress=False)
