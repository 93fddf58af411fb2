"""Diffusion schedule, respacing, and the DDPM/DDIM loops (with an oracle denoiser)."""
import numpy as np
import pytest
import torch

from tqdit_export.diffusion import GaussianDiffusion, SamplerConfig, linear_betas, sample, space_timesteps

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
