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


def test_an_export_of_an_official_checkpoint_samples_as_tqdit_sample_does(tmp_path):
    """facebookresearch/DiT checkpoints guide 3 of 4 channels and sample latents: the export records it,
    so the pipeline over the export (what `tqdit serve` runs) draws what `tqdit sample --model` draws."""
    from calibration.calibrate import CalibrationConfig
    from tqdit_export.cli import main
    from tqdit_export.io import load_samples
    from tqdit_export.models.dit import DiT, dit_config
    from tqdit_export.models.loaders import save_official_state_dict
    from tqdit_export.quant import calibrate_dit

    torch.manual_seed(0)
    model = DiT(dit_config("DiT-S/2", input_size=8, depth=1, num_classes=4)).eval()
    with torch.no_grad():  # adaLN and the final layer start at zero: give guidance something to differ in
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    checkpoint = tmp_path / "official.pt"
    save_official_state_dict(model, checkpoint)
    calibrate_dit(model, CalibrationConfig(8, 8, num_groups=2, rounds=1, method="minmax"), samples_per_group=2,
                  trajectory_steps=4, progress=False).save(tmp_path / "record")
    assert main(["export", "--model", str(checkpoint), "--record", str(tmp_path / "record"),
                 "--out", str(tmp_path / "onnx")]) == 0
    pipe = open_pipeline(tmp_path / "onnx")
    assert (pipe.spec.cfg_channels, pipe.spec.pixel_space) == (3, False)
    with pytest.raises(ValueError, match="cfg_channels 5: this model has 4 epsilon channels"):
        open_pipeline(tmp_path / "onnx", cfg_channels=5)  # refused when opened, not at the first step
    assert main(["sample", "--model", str(checkpoint), "--record", str(tmp_path / "record"), "--backend", "ort",
                 "--onnx", str(tmp_path / "onnx"), "--class", "1", "--num", "2", "--steps", "4", "--seed", "3",
                 "--save-npz", str(tmp_path / "s.npz"), "--quiet"]) == 0
    np.testing.assert_array_equal(pipe.sample([1, 1], seed=3, steps=4), load_samples(tmp_path / "s.npz")[0])
    # Guiding every channel draws other images: the recorded default is what made them equal.
    assert not np.array_equal(pipe.sample([1, 1], seed=3, steps=4, cfg_channels=4),
                              load_samples(tmp_path / "s.npz")[0])
    # The torch-free edge sampler reads the same defaults: as if told --cfg-channels 3 --latent.
    from tqdit_export.edge.__main__ import main as edge_main

    drawn = {}
    for name, extra in {"default": [], "told": ["--cfg-channels", "3", "--latent"], "all": ["--cfg-channels", "4"]}.items():
        out = tmp_path / f"edge_{name}.npz"
        assert edge_main(["--onnx", str(tmp_path / "onnx"), "--num", "2", "--steps", "4", "--out", str(out), *extra]) == 0
        drawn[name] = load_samples(out)[0]
    np.testing.assert_array_equal(drawn["default"], drawn["told"])
    assert not np.array_equal(drawn["default"], drawn["all"])
