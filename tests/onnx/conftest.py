"""The calibrated tiny DiT the export tests share: one record per bit width (W8A8, W6A6) with the
paper's MRQ forms, and W8A8 with the cheap forms (saturating softmax, shifted GELU); 3 time groups."""
import pytest

from calibration.calibrate import CalibrationConfig
from tqdit_export.quant import calibrate_dit


@pytest.fixture(scope="module")
def model(make_tiny_dit):
    return make_tiny_dit()


@pytest.fixture(scope="module", params=["W8A8", "W6A6", "W8A8-cheap-mrq"])
def record(request, model):
    w, a = (6, 6) if request.param == "W6A6" else (8, 8)
    forms = dict(softmax_mrq="saturate", gelu_mrq="shift") if request.param.endswith("cheap-mrq") else {}
    return calibrate_dit(model, CalibrationConfig(w, a, num_groups=3, rounds=1, **forms), samples_per_group=4,
                         trajectory_steps=20, progress=False)
