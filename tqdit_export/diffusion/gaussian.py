"""Gaussian diffusion with learned-range variance, as ADM / DiT.

References: Ho et al. 2020 (DDPM); Nichol & Dhariwal 2021 (learned sigma, hybrid loss,
respacing); Song et al. 2021 (DDIM). Formulas follow openai/improved-diffusion and the
`diffusion/` folder of facebookresearch/DiT; the code here is our own.

The model output has 2C channels: epsilon, then `v` in [-1, 1] that interpolates the log
variance between the posterior variance (beta-tilde) and beta.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .schedule import NUM_TRAIN_TIMESTEPS, linear_betas, respaced_betas, schedule_tables, space_timesteps

__all__ = ["NUM_TRAIN_TIMESTEPS", "GaussianDiffusion", "linear_betas", "space_timesteps"]


def _extract(arr: torch.Tensor, t: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Gather arr[t] and broadcast to `shape` (N, 1, 1, ...)."""
    out = arr.to(t.device)[t].float()
    return out.reshape(-1, *([1] * (len(shape) - 1)))


class GaussianDiffusion:
    """Forward process, posterior and the learned-sigma reverse step on a (possibly respaced) schedule.

    `timestep_map[i]` is the training timestep that respaced step i stands for; the model
    is always called with training timesteps, so time groups defined on [0, 1000) apply to
    any step count.
    """

    def __init__(self, betas: np.ndarray, timestep_map: list[int] | None = None) -> None:
        tables = schedule_tables(betas)
        self.num_timesteps = len(tables["betas"])
        self.timestep_map = list(range(self.num_timesteps)) if timestep_map is None else list(timestep_map)
        if len(self.timestep_map) != self.num_timesteps:
            raise ValueError("timestep_map must have one entry per step")
        for name, table in tables.items():
            setattr(self, name, torch.from_numpy(table))

    @classmethod
    def respaced(cls, steps: int | str, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> "GaussianDiffusion":
        """The linear-beta process respaced to `steps` (an int, or "ddimN")."""
        betas, kept = respaced_betas(steps, num_train_timesteps)
        return cls(betas, timestep_map=kept)

    # ---- forward process -------------------------------------------------------------
    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise."""
        return (
            _extract(self.sqrt_alphas_cumprod, t, x0.shape) * x0
            + _extract(self.sqrt_one_minus_alphas_cumprod, t, x0.shape) * noise
        )

    def q_posterior(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
        """Mean and clipped log variance of q(x_{t-1} | x_t, x0)."""
        mean = _extract(self.posterior_mean_coef1, t, x_t.shape) * x0 + _extract(
            self.posterior_mean_coef2, t, x_t.shape
        ) * x_t
        return mean, _extract(self.posterior_log_variance_clipped, t, x_t.shape)

    # ---- reverse process -------------------------------------------------------------
    def p_mean_variance(self, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, clip_denoised: bool):
        """From the raw model output (eps | v) to the mean, log variance and x0 estimate of p(x_{t-1}|x_t)."""
        c = x_t.shape[1]
        if model_output.shape[1] != 2 * c:
            raise ValueError(
                f"model output has {model_output.shape[1]} channels; a learned-sigma model must give 2x{c}"
            )
        eps, v = model_output[:, :c], model_output[:, c:]
        min_log = self.posterior_log_variance_clipped
        frac = (v + 1) / 2
        log_var = frac * _extract(self.log_betas, t, x_t.shape) + (1 - frac) * _extract(min_log, t, x_t.shape)
        x0 = self.predict_x0(x_t, t, eps)
        if clip_denoised:
            x0 = x0.clamp(-1, 1)
        mean, _ = self.q_posterior(x0, x_t, t)
        return mean, log_var, x0, eps

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return (
            _extract(self.sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t
            - _extract(self.sqrt_recipm1_alphas_cumprod, t, x_t.shape) * eps
        )

    # ---- training loss ---------------------------------------------------------------
    def training_loss(self, model_output: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                      noise: torch.Tensor) -> torch.Tensor:
        """Hybrid loss of improved DDPM: MSE on epsilon + the variational bound for the variance.

        The bound sees a detached epsilon so it trains only the variance, as in ADM/DiT.
        Returns a per-sample loss (N,).
        """
        c = x_t.shape[1]
        eps = model_output[:, :c]
        mse = ((noise - eps) ** 2).mean(dim=(1, 2, 3))
        frozen = torch.cat([eps.detach(), model_output[:, c:]], dim=1)
        vb = self._vb_terms_bpd(frozen, x0, x_t, t)
        return mse + vb

    def _vb_terms_bpd(self, model_output: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
        true_mean, true_log_var = self.q_posterior(x0, x_t, t)
        mean, log_var, _, _ = self.p_mean_variance(model_output, x_t, t, clip_denoised=False)
        kl = normal_kl(true_mean, true_log_var, mean, log_var).mean(dim=(1, 2, 3)) / math.log(2.0)
        nll = -discretized_gaussian_log_likelihood(x0, mean, 0.5 * log_var).mean(dim=(1, 2, 3)) / math.log(2.0)
        return torch.where(t == 0, nll, kl)


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor):
    """Log-likelihood of data in [-1, 1] quantized to 256 bins, as ADM's decoder term."""
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = _approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = _approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    cdf_delta = cdf_plus - cdf_min
    return torch.where(
        x < -0.999,
        log_cdf_plus,
        torch.where(x > 0.999, log_one_minus_cdf_min, torch.log(cdf_delta.clamp(min=1e-12))),
    )
