"""The library API: pipelines over export folders, requests sampled together or alone, checked inputs."""
import numpy as np
import pytest
import torch

from tqdit_export.api import (ImageRequest, ModelSpec, Pipeline, SampleSettings, balanced_labels, open_pipeline,
                              to_uint8)
from tqdit_export.diffusion import SamplerConfig, sample


def _denoiser(x, t, y):
    """A deterministic stand-in with per-row arithmetic (each row sees only itself)."""
    eps = np.tanh(x * 0.5 + (t[:, None, None, None] % 7) * 0.01 + y[:, None, None, None] * 0.001)
    return np.concatenate([eps, np.zeros_like(eps)], axis=1).astype(np.float32)


SPEC = ModelSpec(1, 4, 10, pixel_space=True)


def test_requests_sampled_together_equal_each_sampled_alone():
    pipe = Pipeline(_denoiser, SPEC)
    settings = SampleSettings(steps=6)
    requests = [ImageRequest((1, 2), 5, settings), ImageRequest((3,), 9, settings),
                ImageRequest((4,), 5, SampleSettings("ddim", 4, 2.0))]
    together = pipe.sample_requests(requests)
    for r, got in zip(requests, together):
        np.testing.assert_array_equal(got, pipe.sample_requests([r])[0])
    np.testing.assert_array_equal(together[0], pipe.sample([1, 2], seed=5, steps=6))


def test_the_api_draws_what_the_torch_sampler_draws():
    """Same loop and noise as `diffusion.sample` (the path every earlier result was made with)."""
    pipe = Pipeline(_denoiser, SPEC)
    labels = balanced_labels(6, 10, [2, 7])
    config = SamplerConfig("ddpm", 5, 1.5, clip_denoised=True)
    torch_den = lambda x, t, y: torch.from_numpy(_denoiser(x.numpy(), t.numpy(), y.numpy()))  # noqa: E731
    expected = sample(torch_den, torch.from_numpy(labels), SPEC.shape, config, SPEC.null_class, seed=3,
                      progress=False).numpy()
    np.testing.assert_array_equal(pipe.sample(labels, seed=3, steps=5), expected)


def test_bad_inputs_name_what_is_wrong():
    pipe = Pipeline(_denoiser, SPEC)
    with pytest.raises(ValueError, match="class label 10 is out of range"):
        pipe.sample([1, 10])
    with pytest.raises(ValueError, match="steps 0"):
        pipe.sample([1], steps=0)
    with pytest.raises(ValueError, match="guidance scale -2"):
        pipe.sample([1], guidance=-2)
    with pytest.raises(ValueError, match="batch size 0"):
        pipe.sample([1], batch_size=0)
    with pytest.raises(FileNotFoundError, match="tqdit export"):
        open_pipeline("/nonexistent/folder")


def test_to_uint8_maps_the_model_range_to_bytes():
    x = np.array([-1.0, -0.99, 0.0, 1.0, 1.5], dtype=np.float32).reshape(5, 1, 1, 1)
    assert to_uint8(x).reshape(-1).tolist() == [0, 1, 128, 255, 255]
