"""IDDPM Gaussian diffusion as DiffMa trains it: schedule, forward process, posterior and the hybrid loss.

The math follows Improved DDPM (Nichol & Dhariwal 2021) as the released DiffMa code computes it
(docs/reference.md §3.5): 1000 steps, linear betas 1e-4 … 0.02 in float64, epsilon prediction with a
learned variance range, loss = MSE(eps) + variational-bound term with the predicted mean detached. Tables are
kept in float64 and gathered in the input's dtype, as the released `_extract_into_tensor` does.

Notation: x_0 = `x_start`, x_t = `x_t`, ᾱ_t = `alphas_cumprod[t]`, β̃_t = `posterior_variance[t]`, ε = `noise`.
Timestep indices run 0 … T−1 (0 means one step of noise). Sampling lives in `samplers.py` (diffusers).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch

# Ho et al. (2020) linear schedule, as IDDPM's `get_named_beta_schedule("linear", 1000)` (released code).
DIFFUSION_STEPS = 1000
LINEAR_BETA_START = 1e-4
LINEAR_BETA_END = 0.02


def linear_betas(steps: int = DIFFUSION_STEPS) -> torch.Tensor:
    """(steps,) float64 betas; end points scale with 1000/steps so other step counts keep the shape."""
    scale = 1000 / steps
    # numpy's linspace, like the released code, so the table is bit-identical to it.
    betas = np.linspace(scale * LINEAR_BETA_START, scale * LINEAR_BETA_END, steps, dtype=np.float64)
    return torch.from_numpy(betas)


def respace_betas(betas: torch.Tensor, keep) -> torch.Tensor:
    """Betas of the chain that visits only the timesteps in `keep` (IDDPM respacing): 1 − ᾱ_k / ᾱ_prev(k).

    The released code always builds its diffusion this way, even when it keeps all 1000 steps, so its
    betas differ from `linear_betas()` by rounding (≤ 2e-16); `released_betas()` reproduces them exactly.
    """
    alphas_cumprod = np.cumprod(1.0 - betas.numpy())
    kept = sorted(set(int(k) for k in keep))
    previous = np.concatenate([[1.0], alphas_cumprod[kept[:-1]]])
    return torch.from_numpy(1.0 - alphas_cumprod[kept] / previous)


def released_betas(steps: int = DIFFUSION_STEPS) -> torch.Tensor:
    """(steps,) float64: the schedule DiffMa trains with, bit-identical to the released code's table."""
    return respace_betas(linear_betas(steps), range(steps))


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over all but the batch dimension: (N, ...) -> (N,)."""
    return x.mean(dim=tuple(range(1, x.ndim)))


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) per element, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    # The tanh approximation of Φ used by IDDPM (kept for identical losses).
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor):
    """log p(x) per element (nats) of a Gaussian discretised into 256 bins on [-1, 1] (IDDPM's decoder term).

    The bins assume 8-bit data; DiffMa applies it to VAE latents unchanged, and so do we (loss at t = 0 only).
    """
    half_bin = 1.0 / 255.0
    centered = x - means
    inv_std = torch.exp(-log_scales)
    cdf_plus = _approx_standard_normal_cdf(inv_std * (centered + half_bin))
    cdf_min = _approx_standard_normal_cdf(inv_std * (centered - half_bin))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    # Edge bins extend to ±infinity.
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


class PMeanVariance(NamedTuple):
    """p(x_{t-1} | x_t) predicted from one network output; all (N, C, H, W)."""

    mean: torch.Tensor
    log_variance: torch.Tensor
    pred_xstart: torch.Tensor


class GaussianDiffusion:
    """Forward process, posterior and hybrid loss of IDDPM with epsilon prediction and learned-range variance.

    The network output has 2C channels: the first C predict ε, the last C a value v in [-1, 1] that sets
    log Σ_t = (v+1)/2 · log β_t + (1 − (v+1)/2) · log β̃_t  (IDDPM eq. 15).
    """

    def __init__(self, betas: torch.Tensor | None = None):
        betas = released_betas() if betas is None else torch.as_tensor(betas, dtype=torch.float64)
        if betas.ndim != 1 or not bool(((betas > 0) & (betas <= 1)).all()):
            raise ValueError("betas must be a 1-D tensor with values in (0, 1]")
        self.betas = betas
        self.num_timesteps = betas.shape[0]
        alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(alphas, dim=0)
        self.alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - self.alphas_cumprod).sqrt()
        self.sqrt_recip_alphas_cumprod = (1.0 / self.alphas_cumprod).sqrt()
        self.sqrt_recipm1_alphas_cumprod = (1.0 / self.alphas_cumprod - 1.0).sqrt()
        # q(x_{t-1} | x_t, x_0) = N(coef1·x_0 + coef2·x_t, β̃_t)  (DDPM eq. 6-7)
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # β̃_0 = 0: its log is clipped to β̃_1 so that the learned range stays finite at t = 0.
        self.posterior_log_variance_clipped = torch.log(
            torch.cat([self.posterior_variance[1:2], self.posterior_variance[1:]])
        )
        self.posterior_mean_coef1 = betas * self.alphas_cumprod_prev.sqrt() / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (
            (1.0 - self.alphas_cumprod_prev) * alphas.sqrt() / (1.0 - self.alphas_cumprod)
        )
        self.log_betas = torch.log(betas)

    @staticmethod
    def _at(table: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """table[t] as (N, 1, ..., 1) in like's dtype and device, ready to broadcast against like."""
        values = table.to(t.device)[t].to(device=like.device, dtype=like.dtype)
        return values.view(-1, *([1] * (like.ndim - 1)))

    def sample_timesteps(self, n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        """(n,) int64 timesteps drawn uniformly from 0 … T−1 (the released uniform schedule sampler)."""
        return torch.randint(0, self.num_timesteps, (n,), generator=generator, device=device)

    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = √ᾱ_t · x_0 + √(1 − ᾱ_t) · ε."""
        return (self._at(self.sqrt_alphas_cumprod, t, x_start) * x_start
                + self._at(self.sqrt_one_minus_alphas_cumprod, t, x_start) * noise)

    def q_posterior(self, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0), each x_t's shape."""
        mean = (self._at(self.posterior_mean_coef1, t, x_t) * x_start
                + self._at(self.posterior_mean_coef2, t, x_t) * x_t)
        variance = self._at(self.posterior_variance, t, x_t).expand_as(x_t)
        log_variance = self._at(self.posterior_log_variance_clipped, t, x_t).expand_as(x_t)
        return mean, variance, log_variance

    def predict_xstart_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x_0 = (x_t − √(1 − ᾱ_t) · ε) / √ᾱ_t, written as IDDPM does."""
        return (self._at(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t
                - self._at(self.sqrt_recipm1_alphas_cumprod, t, x_t) * eps)

    def learned_log_variance(self, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """log Σ_t from the variance head v in [-1, 1]: v = −1 gives β̃_t (clipped), v = +1 gives β_t."""
        frac = (v + 1) / 2
        max_log = self._at(self.log_betas, t, v)
        min_log = self._at(self.posterior_log_variance_clipped, t, v)
        return frac * max_log + (1 - frac) * min_log

    def p_mean_variance(self, model_output: torch.Tensor, x_t: torch.Tensor,
                        t: torch.Tensor) -> PMeanVariance:
        """p(x_{t-1} | x_t) from a (N, 2C, H, W) network output; x_0 is not clipped (as released)."""
        eps, v = self.split_output(model_output, x_t)
        pred_xstart = self.predict_xstart_from_eps(x_t, t, eps)
        mean, _, _ = self.q_posterior(pred_xstart, x_t, t)
        return PMeanVariance(mean, self.learned_log_variance(v, t), pred_xstart)

    @staticmethod
    def split_output(model_output: torch.Tensor, x_t: torch.Tensor):
        """(N, 2C, H, W) -> ε (N, C, H, W), variance value v (N, C, H, W)."""
        channels = x_t.shape[1]
        if model_output.shape[1] != 2 * channels or model_output.shape[2:] != x_t.shape[2:]:
            raise ValueError(f"model output {tuple(model_output.shape)} must have 2x the channels of "
                             f"x_t {tuple(x_t.shape)} (epsilon and learned variance)")
        return model_output[:, :channels], model_output[:, channels:]

    def vb_terms_bpd(self, model_output: torch.Tensor, x_start: torch.Tensor, x_t: torch.Tensor,
                     t: torch.Tensor) -> torch.Tensor:
        """(N,) variational-bound term in bits per dimension: KL(q || p) for t > 0, decoder NLL at t = 0."""
        true_mean, _, true_log_variance = self.q_posterior(x_start, x_t, t)
        p = self.p_mean_variance(model_output, x_t, t)
        kl = mean_flat(normal_kl(true_mean, true_log_variance, p.mean, p.log_variance)) / math.log(2.0)
        nll = -discretized_gaussian_log_likelihood(x_start, p.mean, 0.5 * p.log_variance)
        nll = mean_flat(nll) / math.log(2.0)
        return torch.where(t == 0, nll, kl)

    def training_losses(self, model_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                        x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None,
                        generator: torch.Generator | None = None,
                        min_snr_gamma: float | None = None) -> dict[str, torch.Tensor]:
        """The hybrid loss of IDDPM / DiT for one batch.

        model_fn(x_t (N, C, H, W), t (N,)) -> (N, 2C, H, W). Returns per-sample (N,) tensors
        {"loss": weight · mse + vb, "mse": ‖ε − ε̂‖² mean, "vb": VB term}. The VB term sees the predicted ε
        detached, so it trains only the variance head (IDDPM §3.1). Losses are computed in x_start's dtype
        even when the network ran under autocast.

        weight is 1 (the released loss) unless `min_snr_gamma` is given: then min(SNR_t, γ) / SNR_t, the
        Min-SNR-γ weighting of the ε loss (`mse_weights`).
        """
        if noise is None:
            noise = torch.randn(x_start.shape, generator=generator, device=x_start.device,
                                dtype=x_start.dtype)
        x_t = self.q_sample(x_start, t, noise)
        model_output = model_fn(x_t, t).to(x_start.dtype)
        eps, v = self.split_output(model_output, x_t)
        frozen = torch.cat([eps.detach(), v], dim=1)
        vb = self.vb_terms_bpd(frozen, x_start, x_t, t)
        mse = mean_flat((noise - eps) ** 2)
        weighted = mse if min_snr_gamma is None else self.mse_weights(t, min_snr_gamma).to(mse) * mse
        return {"loss": weighted + vb, "mse": mse, "vb": vb}

    def snr(self, t: torch.Tensor) -> torch.Tensor:
        """(N,) float64 signal-to-noise ratio ᾱ_t / (1 − ᾱ_t) of timesteps t."""
        alphas_cumprod = self.alphas_cumprod.to(t.device)[t]
        return alphas_cumprod / (1.0 - alphas_cumprod)

    def mse_weights(self, t: torch.Tensor, gamma: float) -> torch.Tensor:
        """(N,) float64 Min-SNR-γ weights of the ε loss (Hang et al., ICCV 2023): min(SNR_t, γ) / SNR_t.

        Predicting ε, the plain loss weights each timestep's x_0 error by SNR_t, so the nearly clean
        timesteps, where SNR runs into the thousands, dominate it; capping the weight at γ (5 in the paper)
        takes that weight away from them. Only timesteps with SNR_t > γ change: with the linear schedule of
        1 000 steps, t < 130 for γ = 5."""
        snr = self.snr(t)
        return torch.clamp(snr, max=gamma) / snr
