"""IDDPM diffusion math against tensors made by the released DiffMa code (tests/data/released/README.md)."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffma_cli.diffusion.gaussian import GaussianDiffusion, linear_betas, released_betas, respace_betas

RELEASED = Path(__file__).parents[1] / "data" / "released" / "diffusion_losses.safetensors"


@pytest.fixture(scope="module")
def ref():
    return load_file(RELEASED)


@pytest.fixture(scope="module")
def diffusion():
    return GaussianDiffusion()


def test_schedule_tables_match_released(ref, diffusion):
    assert torch.equal(released_betas(), ref["betas"])
    torch.testing.assert_close(linear_betas(), ref["betas"], rtol=0, atol=1e-15)
    for name in ("alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped"):
        torch.testing.assert_close(getattr(diffusion, name), ref[name], rtol=1e-12, atol=0)


def test_forward_process_and_posterior_match_released(ref, diffusion):
    x_t = diffusion.q_sample(ref["x_start"], ref["t"], ref["noise"])
    torch.testing.assert_close(x_t, ref["x_t"], rtol=1e-6, atol=1e-6)
    mean, _, log_var = diffusion.q_posterior(ref["x_start"], ref["x_t"], ref["t"])
    torch.testing.assert_close(mean, ref["posterior_mean"], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(log_var, ref["posterior_log_variance"], rtol=1e-6, atol=1e-6)


def test_p_mean_variance_matches_released(ref, diffusion):
    p = diffusion.p_mean_variance(ref["model_output"], ref["x_t"], ref["t"])
    torch.testing.assert_close(p.mean, ref["p_mean"], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(p.log_variance, ref["p_log_variance"], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(p.pred_xstart, ref["p_pred_xstart"], rtol=1e-6, atol=1e-6)


def test_hybrid_loss_matches_released(ref, diffusion):
    # t includes 0 (decoder NLL branch) and T-1; the fake output is a fixed tensor.
    output = ref["model_output"]
    terms = diffusion.training_losses(lambda x, t: output, ref["x_start"], ref["t"], ref["noise"])
    for key in ("mse", "vb", "loss"):
        torch.testing.assert_close(terms[key], ref[key], rtol=1e-6, atol=1e-6)


def test_min_snr_weights_match_diffusers(diffusion):
    """min(SNR_t, γ) / SNR_t against diffusers' `compute_snr` on its own linear scheduler (the same
    1e-4 … 0.02 schedule in float32), the recipe that diffusers' training scripts use for ε prediction."""
    from diffusers import DDPMScheduler
    from diffusers.training_utils import compute_snr

    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02,
                              beta_schedule="linear")
    t = torch.tensor([0, 1, 50, 129, 130, 500, 999])
    snr = compute_snr(scheduler, t).double()
    # diffusers computes in float32: 1 − ᾱ_0 = 1e-4 keeps about 4 significant digits there.
    torch.testing.assert_close(diffusion.snr(t), snr, rtol=5e-4, atol=0)
    expected = torch.minimum(snr, torch.full_like(snr, 5.0)) / snr
    torch.testing.assert_close(diffusion.mse_weights(t, 5.0), expected, rtol=5e-4, atol=0)
    # Below SNR 5 (t >= 130 on this schedule) nothing changes; at t = 0 the weight is 5 / SNR_0.
    assert torch.equal(diffusion.mse_weights(t[4:], 5.0), torch.ones(3, dtype=torch.float64))
    assert diffusion.mse_weights(t[:1], 5.0).item() < 1e-3


def test_min_snr_loss_weights_only_the_mse_term(ref, diffusion):
    output = ref["model_output"]
    plain = diffusion.training_losses(lambda x, t: output, ref["x_start"], ref["t"], ref["noise"])
    weighted = diffusion.training_losses(lambda x, t: output, ref["x_start"], ref["t"], ref["noise"],
                                         min_snr_gamma=5.0)
    alphas_cumprod = ref["alphas_cumprod"][ref["t"]]
    snr = alphas_cumprod / (1 - alphas_cumprod)
    weight = (snr.clamp(max=5.0) / snr).to(plain["mse"])
    assert not torch.allclose(weight, torch.ones_like(weight))  # the reference batch has clean timesteps
    torch.testing.assert_close(weighted["mse"], plain["mse"], rtol=0, atol=0)
    torch.testing.assert_close(weighted["vb"], plain["vb"], rtol=0, atol=0)
    torch.testing.assert_close(weighted["loss"], weight * plain["mse"] + plain["vb"])


def test_vb_term_trains_only_the_variance_head(ref, diffusion):
    out = ref["model_output"].clone().requires_grad_(True)
    terms = diffusion.training_losses(lambda x, t: out, ref["x_start"], ref["t"], ref["noise"])
    terms["vb"].sum().backward()
    channels = ref["x_start"].shape[1]
    assert torch.count_nonzero(out.grad[:, :channels]) == 0
    assert torch.count_nonzero(out.grad[:, channels:]) > 0


def test_learned_range_end_points(diffusion):
    t = torch.tensor([5, 700])
    ones = torch.ones(2, 1, 1, 1, dtype=torch.float64)
    torch.testing.assert_close(diffusion.learned_log_variance(ones, t).flatten(), diffusion.betas[t].log())
    torch.testing.assert_close(diffusion.learned_log_variance(-ones, t).flatten(),
                               diffusion.posterior_variance[t].log())


def test_uniform_timesteps_cover_range(diffusion):
    t = diffusion.sample_timesteps(20000, generator=torch.Generator().manual_seed(0))
    assert t.min() == 0 and t.max() == diffusion.num_timesteps - 1
    assert abs(t.double().mean().item() - 499.5) < 10


def test_wrong_output_channels_is_a_clear_error(diffusion):
    x = torch.zeros(1, 4, 2, 2)
    with pytest.raises(ValueError, match="2x the channels"):
        diffusion.training_losses(lambda x, t: torch.zeros(1, 4, 2, 2), x, torch.tensor([3]))


def test_respaced_chain_keeps_the_kept_alphas_cumprod():
    keep = [0, 111, 500, 999]
    spaced = GaussianDiffusion(respace_betas(linear_betas(), keep))
    full = GaussianDiffusion()
    torch.testing.assert_close(spaced.alphas_cumprod, full.alphas_cumprod[keep], rtol=1e-12, atol=0)
