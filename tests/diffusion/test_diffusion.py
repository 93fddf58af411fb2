"""Diffusion schedule, respacing, and the DDPM/DDIM loops (with an oracle denoiser)."""
import numpy as np
import pytest
import torch

from tqdit_export.diffusion import GaussianDiffusion, SamplerConfig, linear_betas, sample, space_timesteps
from tqdit_export.diffusion.schedule import ddim_step_counts
from tqdit_export.models import DiT, dit_config

BASE = GaussianDiffusion(linear_betas())


def test_linear_schedule_endpoints():
    betas = linear_betas(1000)
    assert betas[0] == pytest.approx(1e-4) and betas[-1] == pytest.approx(0.02)


@pytest.mark.parametrize("steps", [250, 100, 50, 7])
def test_respacing_keeps_both_ends_and_the_marginals(steps):
    kept = space_timesteps(1000, steps)
    assert len(kept) == steps and kept[0] == 0 and kept[-1] == 999
    spaced = GaussianDiffusion.respaced(steps)
    # The respaced process has the same noise level as the base one at every kept timestep.
    np.testing.assert_allclose(spaced.alphas_cumprod.numpy(), BASE.alphas_cumprod.numpy()[kept], rtol=1e-12)
    assert spaced.timestep_map == kept


def test_ddim_spacing_is_a_stride():
    assert space_timesteps(1000, "ddim20") == list(range(0, 1000, 50))
    with pytest.raises(ValueError):
        space_timesteps(1000, 0)


def test_every_ddim_step_count_a_stride_makes_is_accepted_and_the_others_refused_up_front():
    counts = ddim_step_counts(1000)
    for n, stride in counts.items():
        assert space_timesteps(1000, f"ddim{n}") == list(range(0, 1000, stride)) and len(range(0, 1000, stride)) == n
    assert {36, 38, 500, 1000} <= set(counts) and not {1, 37, 999} & set(counts)
    # The sampler's settings refuse a count no stride makes before any sampling, naming the nearest.
    with pytest.raises(ValueError, match="steps=37.*36 or 38"):
        SamplerConfig("ddim", 37)
    with pytest.raises(ValueError, match="steps=999.*500 or 1000"):
        SamplerConfig("ddim", 999)
    SamplerConfig("ddpm", 37)  # DDPM respacing makes any count


class OracleDenoiser:
    """Knows the clean image: returns the true epsilon for any x_t. Records the timesteps it sees."""

    def __init__(self, x0: torch.Tensor):
        self.x0 = x0
        self.seen: list[int] = []

    def __call__(self, x, t, y):
        self.seen.append(int(t[0]))
        ab = BASE.alphas_cumprod[t].float().view(-1, 1, 1, 1)
        x0 = self.x0.expand(x.shape[0], -1, -1, -1)
        eps = (x - ab.sqrt() * x0) / (1 - ab).sqrt()
        return torch.cat([eps, torch.zeros_like(eps)], dim=1)


@pytest.mark.parametrize("sampler,steps", [("ddpm", 50), ("ddpm", 1000), ("ddim", 20)])
def test_sampler_recovers_the_clean_image_from_an_oracle(sampler, steps):
    x0 = torch.rand(1, 1, 8, 8) * 2 - 1
    oracle = OracleDenoiser(x0)
    out = sample(oracle, torch.zeros(4, dtype=torch.long), (1, 8, 8),
                 SamplerConfig(sampler, steps, cfg_scale=1.0), null_class=10, seed=3, progress=False)
    torch.testing.assert_close(out, x0.expand(4, -1, -1, -1), atol=2e-3, rtol=0)
    # The denoiser is called with training timesteps, from noisy to clean.
    expected = space_timesteps(1000, f"ddim{steps}" if sampler == "ddim" else steps)[::-1]
    assert oracle.seen == expected


def test_guidance_doubles_the_batch_with_the_null_class():
    calls = []

    def denoiser(x, t, y):
        calls.append(y.clone())
        return torch.cat([torch.zeros_like(x), torch.zeros_like(x)], dim=1)

    sample(denoiser, torch.tensor([2, 5]), (1, 8, 8), SamplerConfig("ddim", 3, cfg_scale=1.5),
           null_class=10, progress=False)
    assert all(c.tolist() == [2, 5, 10, 10] for c in calls)


def test_seeded_runs_are_reproducible_and_seeds_differ():
    def denoiser(x, t, y):
        return torch.cat([0.1 * x, torch.zeros_like(x)], dim=1)

    cfg = SamplerConfig("ddpm", 10, cfg_scale=1.0)
    y = torch.zeros(3, dtype=torch.long)
    a = sample(denoiser, y, (1, 8, 8), cfg, 10, seed=1, progress=False)
    b = sample(denoiser, y, (1, 8, 8), cfg, 10, seed=1, progress=False)
    c = sample(denoiser, y, (1, 8, 8), cfg, 10, seed=2, progress=False)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_training_loss_is_finite_and_smaller_for_the_true_noise():
    x0 = torch.rand(8, 1, 8, 8) * 2 - 1
    t = torch.randint(0, 1000, (8,))
    t[0] = 0  # the decoder term
    noise = torch.randn_like(x0)
    x_t = BASE.q_sample(x0, t, noise).float()
    good = BASE.training_loss(torch.cat([noise, torch.zeros_like(noise)], 1), x0, x_t, t, noise)
    bad = BASE.training_loss(torch.cat([-noise, torch.zeros_like(noise)], 1), x0, x_t, t, noise)
    assert torch.isfinite(good).all() and (good < bad).all()


def test_sampler_config_rejects_bad_values():
    with pytest.raises(ValueError, match="sampler"):
        SamplerConfig("euler")
    with pytest.raises(ValueError, match="cfg_scale"):
        SamplerConfig(cfg_scale=0.5)


@torch.no_grad()
def test_guidance_on_the_first_channels_matches_the_official_forward_with_cfg():
    """cfg_channels=3 on a 4-channel model is facebookresearch/DiT's guidance: the model's
    `forward_with_cfg` (checked against the official code) and the sampler agree."""
    from tqdit_export.diffusion import OFFICIAL_CFG_CHANNELS, guided_output
    from tqdit_export.diffusion.samplers import numpy_denoiser
    from tqdit_export.engines import TorchBackend

    torch.manual_seed(0)
    model = DiT(dit_config("DiT-tiny", in_channels=4)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "pos_embed":  # DiT zero-initialises adaLN and the output layer
                p.add_(torch.randn_like(p) * 0.05)
    x = torch.randn(2, 4, 8, 8)
    t = torch.tensor([300, 300])
    y = torch.tensor([1, 7])
    official = model.forward_with_cfg(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, 10)]),
                                      cfg_scale=4.0, cfg_channels=OFFICIAL_CFG_CHANNELS)[:2].numpy()
    ours = guided_output(numpy_denoiser(TorchBackend(model)), x.numpy(), t.numpy(), y.numpy(), 4.0, 10,
                         cfg_channels=OFFICIAL_CFG_CHANNELS)
    np.testing.assert_allclose(ours, official, rtol=1e-5, atol=1e-5)
    every = guided_output(numpy_denoiser(TorchBackend(model)), x.numpy(), t.numpy(), y.numpy(), 4.0, 10)
    # The fourth channel is guided only when every channel is, the variance channels never.
    assert not np.allclose(every[:, 3], official[:, 3]) and np.allclose(every[:, 4:], official[:, 4:])
    with pytest.raises(ValueError, match="cfg_channels=5"):
        guided_output(numpy_denoiser(TorchBackend(model)), x.numpy(), t.numpy(), y.numpy(), 4.0, 10, cfg_channels=5)


def test_sampler_config_refuses_eta_it_would_ignore_or_misread():
    with pytest.raises(ValueError, match="eta=-1"):
        SamplerConfig("ddim", eta=-1.0)
    with pytest.raises(ValueError, match="DDIM sampler only"):
        SamplerConfig("ddpm", eta=0.5)
    with pytest.raises(ValueError, match="cfg_channels=0"):
        SamplerConfig(cfg_channels=0)
    assert SamplerConfig("ddim", eta=1.0).eta == 1.0


def test_torch_sampler_is_the_numpy_loop_with_torch_noise():
    """The torch adapter adds no arithmetic: the same denoiser through both faces, equal bit for bit."""
    from tqdit_export.diffusion import sample_numpy
    from tqdit_export.diffusion.samplers import torch_noise

    def denoiser_np(x, t, y):
        scale = (t.astype(np.float32) / 1000).reshape(-1, 1, 1, 1)
        return np.concatenate([np.tanh(x) * scale, np.full_like(x, 0.3)], axis=1)

    def denoiser_torch(x, t, y):
        return torch.from_numpy(denoiser_np(x.numpy(), t.numpy(), y.numpy()))

    y = torch.tensor([0, 4, 9])
    for config in (SamplerConfig("ddpm", 12, 1.5, clip_denoised=True), SamplerConfig("ddim", 6, 2.0, eta=0.7)):
        a = sample(denoiser_torch, y, (1, 8, 8), config, 10, seed=4, progress=False).numpy()
        b = sample_numpy(denoiser_np, y.numpy(), (1, 8, 8), config, 10, noise_fn=torch_noise(4))
        np.testing.assert_array_equal(a, b)
