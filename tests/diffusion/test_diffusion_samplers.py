"""Samplers: the released ancestral sampler's numbers, an independent IDDPM step loop, exact recovery of
known data, and the noise options."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffma_cli.diffusion.gaussian import GaussianDiffusion
from diffma_cli.diffusion.samplers import SAMPLERS, draw_noise, sample
from diffma_cli.errors import InputError

RELEASED = Path(__file__).parents[1] / "data" / "released" / "diffusion_ancestral.safetensors"


def toy_model(x, t):
    """The same fixed stand-in network the reference tensors were made with (make_diffusion_reference.py)."""
    s = (t.float() / 1000.0).view(-1, 1, 1, 1)
    return torch.cat([0.3 * x + 0.2 * torch.sin(3 * x + s), torch.tanh(x - s)], dim=1)


@pytest.mark.parametrize("steps", [10, 250])
def test_ddpm_matches_released_respaced_ancestral_sampler(steps):
    ref = load_file(RELEASED)
    noise = ref[f"noise_{steps}"]
    # The released sampler drew its step noise from the global generator seeded 123, in the same order.
    out = sample(toy_model, noise.shape, "ddpm", steps, generator=torch.Generator().manual_seed(123),
                 initial_noise=noise, progress=False)
    torch.testing.assert_close(out, ref[f"sample_{steps}"], rtol=1e-4, atol=1e-4)


def test_ddpm_1000_steps_matches_iddpm_step_loop():
    """Our diffusers-based ancestral sampler against p_mean_variance of the IDDPM math, step by step."""
    diffusion = GaussianDiffusion()
    shape = (2, 4, 4, 4)
    start = torch.randn(shape, generator=torch.Generator().manual_seed(5))
    ours = sample(toy_model, shape, "ddpm", 1000, generator=torch.Generator().manual_seed(7),
                  initial_noise=start, progress=False)
    generator = torch.Generator().manual_seed(7)
    x = start.double()  # the IDDPM loop in float64: the comparison does not depend on this CPU's float32
    for i in reversed(range(1000)):
        t = torch.full((shape[0],), i)
        p = diffusion.p_mean_variance(toy_model(x, t), x, t)
        x = p.mean
        if i > 0:
            x = x + torch.exp(0.5 * p.log_variance) * torch.randn(shape, generator=generator).double()
    # Our sampler runs in float32 with diffusers' float32 coefficients: after 1000 steps it is 3.3e-4 from
    # the float64 loop at most (measured here).
    torch.testing.assert_close(ours.double(), x, rtol=0, atol=1e-3)


def exact_denoiser(data: torch.Tensor):
    """The optimal network when the data is the single point `data`: ε = (x_t − √ᾱ x_0)/√(1−ᾱ)."""
    abar = GaussianDiffusion().alphas_cumprod

    def model_fn(x, t):
        a = abar[t].float().view(-1, 1, 1, 1)
        eps = (x - a.sqrt() * data) / (1 - a).sqrt()
        return torch.cat([eps, torch.zeros_like(eps)], dim=1)

    return model_fn


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_recovers_known_data(sampler):
    data = torch.randn(3, 4, 6, 6, generator=torch.Generator().manual_seed(1))
    out = sample(exact_denoiser(data), data.shape, sampler, 20, generator=torch.Generator().manual_seed(2),
                 progress=False)
    torch.testing.assert_close(out, data, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_same_seed_same_result_across_runs(sampler):
    runs = [sample(toy_model, (2, 4, 4, 4), sampler, 8, generator=torch.Generator().manual_seed(3),
                   progress=False) for _ in range(2)]
    assert torch.equal(runs[0], runs[1])
    assert torch.isfinite(runs[0]).all()


def test_shared_initial_noise_gives_identical_slices_with_an_ode_sampler():
    noise = draw_noise((3, 4, 4, 4), torch.Generator().manual_seed(0), z_correlation=1.0)
    out = sample(toy_model, noise.shape, "dpm", 6, initial_noise=noise, progress=False)
    assert torch.equal(out[0], out[1]) and torch.equal(out[0], out[2])


def test_z_correlated_noise_is_standard_normal_with_neighbour_correlation():
    rho = 0.8
    noise = draw_noise((64, 4, 32, 32), torch.Generator().manual_seed(0), z_correlation=rho)
    flat = noise.flatten(1)
    assert abs(flat.std().item() - 1) < 0.02 and abs(flat.mean().item()) < 0.02
    neighbour = torch.stack([torch.corrcoef(flat[i:i + 2])[0, 1] for i in range(63)]).mean()
    assert abs(neighbour.item() - rho) < 0.02
    independent = draw_noise((64, 4, 32, 32), torch.Generator().manual_seed(0))
    assert torch.equal(independent, torch.randn(64, 4, 32, 32, generator=torch.Generator().manual_seed(0)))


def test_bad_sampler_steps_and_correlation_are_user_errors():
    with pytest.raises(InputError, match="ddpm, ddim, dpm"):
        sample(toy_model, (1, 4, 2, 2), "euler", 5, progress=False)
    with pytest.raises(InputError, match="steps"):
        sample(toy_model, (1, 4, 2, 2), "dpm", 0, progress=False)
    with pytest.raises(InputError, match="correlation"):
        draw_noise((2, 4, 2, 2), z_correlation=1.5)
