"""Sampling a trained DiffMa backbone through diffusers schedulers: ancestral DDPM, DDIM and DPM-Solver++.

Every scheduler gets the exact IDDPM float64 betas DiffMa trains with (`gaussian.released_betas`, passed as
`trained_betas`), a fresh instance and `set_timesteps` for every run (diffusers schedulers keep state).
The network output has 2C channels (ε and the learned-range variance value, docs/reference.md §3.5):

- `ddpm`: ancestral sampling with the learned variance, as the released `p_sample_loop`
  (`DDPMScheduler(variance_type="learned_range")` splits the 2C output itself). "linspace" timestep spacing
  reproduces IDDPM's respacing, so `steps=250` is the released sampler (it used 250 steps).
- `ddim`: deterministic DDIM (η = 0) on ε; `clip_sample=False` because latents are not bounded by ±1.
- `dpm`: DPM-Solver++ (2nd order multistep ODE solver) on ε. diffusers' own `variance_type="learned_range"`
  there assumes 3 channels, so ε is split off here and the variance value is ignored (an ODE needs none).

Schedulers never import models: `model_fn(x_t, t)` is any callable mapping (N, C, H, W) and (N,) int64
timesteps to (N, 2C, H, W).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from tqdm.auto import tqdm

from diffma_cli.diffusion.gaussian import DIFFUSION_STEPS, released_betas
from diffma_cli.errors import InputError

SAMPLERS = ("ddpm", "ddim", "dpm")
DEFAULT_SAMPLER = "dpm"
# DPM-Solver++ converges in about 20 steps (Lu et al. 2022); the released code sampled 250 ancestral steps.
DEFAULT_STEPS = 20

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def make_scheduler(sampler: str, betas: torch.Tensor | None = None):
    """A fresh diffusers scheduler for `sampler` ("ddpm", "ddim" or "dpm") over the IDDPM betas."""
    trained = (released_betas() if betas is None else betas).numpy()
    common = dict(num_train_timesteps=len(trained), trained_betas=trained)
    if sampler == "ddpm":
        return DDPMScheduler(**common, variance_type="learned_range", clip_sample=False,
                             timestep_spacing="linspace")
    if sampler == "ddim":
        # "trailing" starts at t = T−1 (pure noise) like the training chain; α at the end is 1 (x_0 itself).
        return DDIMScheduler(**common, clip_sample=False, set_alpha_to_one=True, timestep_spacing="trailing")
    if sampler == "dpm":
        return DPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++", solver_order=2)
    raise InputError(f"unknown sampler {sampler!r}", hint=f"choose one of {', '.join(SAMPLERS)}")


def check_z_correlation(value: float, name: str = "the z noise correlation") -> None:
    """InputError unless `value` is a correlation `draw_noise` takes: in [0, 1] (0 = independent slices)."""
    if not 0.0 <= value <= 1.0:
        raise InputError(f"{name} must be in [0, 1], got {value}")


def draw_noise(shape: tuple[int, ...], generator: torch.Generator | None = None, device=None,
                  z_correlation: float = 0.0) -> torch.Tensor:
    """(N, C, H, W) standard normal starting noise for N slices taken in order along z.

    z_correlation ρ in [0, 1] couples neighbouring slices: n_0 = e_0, n_i = ρ·n_{i−1} + √(1−ρ²)·e_i (an AR(1)
    chain, so every slice's noise stays N(0, I)); 0 gives independent noise, 1 the same noise for every
    slice. Draw it once per volume and pass slices of it to `sample` batch by batch.
    """
    check_z_correlation(z_correlation)
    # Draw on the generator's device so a seed gives the same noise whatever `device` is.
    draw_device = generator.device if generator is not None else device
    fresh = torch.randn(shape, generator=generator, device=draw_device, dtype=torch.float32).to(device)
    if z_correlation == 0.0:
        return fresh
    keep, innovate = z_correlation, math.sqrt(1.0 - z_correlation**2)
    noise = torch.empty_like(fresh)
    noise[0] = fresh[0]
    for i in range(1, shape[0]):
        noise[i] = keep * noise[i - 1] + innovate * fresh[i]
    return noise


@torch.no_grad()
def sample(model_fn: ModelFn, shape: tuple[int, ...], sampler: str = DEFAULT_SAMPLER,
           steps: int = DEFAULT_STEPS, generator: torch.Generator | None = None,
           initial_noise: torch.Tensor | None = None, device=None, progress: bool = True,
           betas: torch.Tensor | None = None) -> torch.Tensor:
    """Run the reverse process from noise to latents x_0: returns (N, C, H, W) float32.

    model_fn(x_t, t): x_t (N, C, H, W) float32, t (N,) int64 training timesteps in [0, 1000) -> (N, 2C, H, W)
    (any float dtype; cast to float32 here). `initial_noise` (N, C, H, W) replaces the first draw (see
    `draw_noise()` for noise shared or correlated across slices); otherwise it is drawn from `generator`.
    `generator` also drives the ancestral noise of `ddpm`. `steps` is the number of network evaluations.
    """
    if not 1 <= steps <= DIFFUSION_STEPS:
        raise InputError(f"--steps must be between 1 and {DIFFUSION_STEPS}, got {steps}")
    scheduler = make_scheduler(sampler, betas)
    scheduler.set_timesteps(steps, device=device)
    if initial_noise is None:
        x = draw_noise(shape, generator=generator, device=device)
    else:
        if tuple(initial_noise.shape) != tuple(shape):
            raise ValueError(f"initial_noise has shape {tuple(initial_noise.shape)}, expected {tuple(shape)}")
        x = initial_noise.to(device=device, dtype=torch.float32)
    x = x * scheduler.init_noise_sigma  # 1 for all three; kept so other schedulers stay correct
    channels = shape[1]
    for timestep in tqdm(scheduler.timesteps, desc=f"{sampler} sampling", unit="step",
                         disable=not progress, leave=False):
        t = int(timestep)  # a Python int indexes the schedulers' CPU tables whatever device x is on
        t_batch = torch.full((shape[0],), t, dtype=torch.int64, device=x.device)
        output = model_fn(scheduler.scale_model_input(x, t), t_batch).float()
        if output.shape[1] != 2 * channels:
            raise ValueError(f"model output has {output.shape[1]} channels, expected {2 * channels} "
                             "(epsilon and learned variance)")
        if sampler != "ddpm":
            output = output[:, :channels]  # ε only: DDIM and DPM-Solver do not use the variance
        x = scheduler.step(output, t, x, generator=generator).prev_sample
    return x
