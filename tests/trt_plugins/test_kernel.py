"""The TimeGroupQuantize kernel's arithmetic equals the calibration quantizer: CPU reference
(numpy and the C++ built from the kernel's own header) always, the CUDA kernel on a GPU."""
import shutil

import numpy as np
import pytest
import torch

from calibration.quantizers import fake_quant
from trt_plugins import time_group_quantize
from trt_plugins.build import build_cpu_reference, build_cuda_kernel, run_library

SCALES = np.array([0.05, 0.013, 0.2, 1e-3], dtype=np.float32)


def _inputs() -> np.ndarray:
    rng = np.random.default_rng(0)
    x = rng.normal(0, 2, 4096).astype(np.float32)
    # exact ties k + 0.5 (half to even), values far outside the range (saturation), zeros
    ties = ((np.arange(-20, 20) + 0.5) * SCALES[1]).astype(np.float32)
    return np.concatenate([x, ties, [0.0, -0.0, 1e4, -1e4]]).astype(np.float32)


def _calibration_codes(x: np.ndarray, scale: float, bits: int) -> np.ndarray:
    """The codes behind calibration.quantizers.fake_quant (what the fake-quant model simulates)."""
    return fake_quant(torch.from_numpy(x), torch.tensor(scale), bits).numpy()


@pytest.mark.parametrize("bits", [8, 6, 4])
@pytest.mark.parametrize("group", [0, 1, 3])
def test_numpy_reference_matches_the_calibration_quantizer(bits, group):
    x = _inputs()
    codes = time_group_quantize(x, SCALES, group, bits)
    assert codes.dtype == np.int8
    np.testing.assert_array_equal(codes.astype(np.float32) * SCALES[group], _calibration_codes(x, SCALES[group], bits))


@pytest.fixture(scope="module")
def cpu_library(tmp_path_factory):
    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler")
    return build_cpu_reference(tmp_path_factory.mktemp("cpu_ref"))


@pytest.mark.parametrize("bits", [8, 6, 4])
@pytest.mark.parametrize("group", [0, 2, 3])
def test_cpu_build_of_the_kernel_header_matches_the_reference(cpu_library, bits, group):
    x = _inputs()
    got = run_library(cpu_library, "tqdit_time_group_quantize_cpu", x, SCALES, group, bits)
    np.testing.assert_array_equal(got, time_group_quantize(x, SCALES, group, bits))


def test_an_index_outside_the_table_selects_the_nearest_group(cpu_library):
    x = _inputs()
    for group, nearest in ((-3, 0), (99, 3)):
        got = run_library(cpu_library, "tqdit_time_group_quantize_cpu", x, SCALES, group, 8)
        np.testing.assert_array_equal(got, time_group_quantize(x, SCALES, nearest, 8))


def test_a_bad_table_is_refused_before_the_library_is_called(cpu_library):
    with pytest.raises(ValueError, match="scales"):
        run_library(cpu_library, "tqdit_time_group_quantize_cpu", _inputs(), np.array([0.1, 0.0]), 0, 8)
    with pytest.raises(ValueError, match="bits"):
        time_group_quantize(_inputs(), SCALES, 0, 9)


@pytest.fixture(scope="module")
def cuda_library(tmp_path_factory):
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc is not installed")
    return build_cuda_kernel(tmp_path_factory.mktemp("cuda"))


def test_nvcc_compiles_the_kernel(cuda_library):
    assert cuda_library.stat().st_size > 0


@pytest.mark.gpu
@pytest.mark.parametrize("bits", [8, 6])
def test_cuda_kernel_matches_the_reference_on_the_gpu(cuda_library, bits):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    x = _inputs()
    for group in range(len(SCALES)):
        got = run_library(cuda_library, "tqdit_time_group_quantize_cuda", x, SCALES, group, bits)
        np.testing.assert_array_equal(got, time_group_quantize(x, SCALES, group, bits))
