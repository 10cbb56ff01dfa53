"""How a volume is sampled: one `SamplingOptions`, checked once when it is made (docs/convert.md).

The command line builds it from its options and a Python caller from keywords; the sampler, step count,
seed and batch size may be left to the run's recipe (None), and `resolved(recipe)` fills them in before
sampling. Every value is checked in `__post_init__`, so a bad option fails with one line before any model
loads, whoever builds the options.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from diffma_cli.config import Recipe
from diffma_cli.errors import InputError

NOISE_MODES = ("independent", "shared", "correlated")
# AR(1) coefficient between the starting noise of neighbouring slices for --noise correlated: a starting
# point, to be replaced by what the measurements in docs/consistency.md support.
DEFAULT_NOISE_CORRELATION = 0.9
# Gaussian sigma (voxels) of the through-plane filter of the result. 1.0, not off, from the H100 comparison in
# docs/consistency.md: of the options measured it was the only one that improved every measure against
# independent slices without a filter (per-slice SSIM, 3-D SSIM, MAE, sagittal/coronal SSIM, roughness).
# 0 gives the method as published (and what Table 2 in docs/quality.md scores).
DEFAULT_SMOOTH_Z = 1.0
# Test-time augmentation (none, or the left-right mirror image too) and how members are combined.
TTA_MODES = ("none", "flip")
COMBINE_MODES = ("mean", "median")
# Fields that default to the run's recipe (its `sampling` section) when left None.
FROM_RECIPE = ("sampler", "steps", "seed", "batch_size")


@dataclass(frozen=True)
class SamplingOptions:
    """Sampler, steps, seed and batch size (None: the recipe's), samples per member, the slice-consistency
    options (noise, noise_correlation, smooth_z) and the members' test-time augmentation and combination."""

    sampler: str | None = None
    steps: int | None = None
    seed: int | None = None
    batch_size: int | None = None
    samples: int = 1
    noise: str = "independent"
    noise_correlation: float = DEFAULT_NOISE_CORRELATION
    smooth_z: float = DEFAULT_SMOOTH_Z
    tta: str = "none"
    combine: str = "mean"

    def __post_init__(self):
        from diffma_cli.diffusion.gaussian import DIFFUSION_STEPS
        from diffma_cli.diffusion.samplers import SAMPLERS, check_z_correlation

        object.__setattr__(self, "noise_correlation", float(self.noise_correlation))
        object.__setattr__(self, "smooth_z", float(self.smooth_z))
        choices = (("sampler", self.sampler, SAMPLERS), ("noise mode", self.noise, NOISE_MODES),
                   ("test-time augmentation", self.tta, TTA_MODES),
                   ("combination", self.combine, COMBINE_MODES))
        for what, value, allowed in choices:
            if value is not None and value not in allowed:
                raise InputError(f"unknown {what} {value!r}", hint=f"choose one of {', '.join(allowed)}")
        checks = [
            (self.steps is None or 1 <= self.steps <= DIFFUSION_STEPS,
             f"--steps must be between 1 and {DIFFUSION_STEPS}, got {self.steps}"),
            (self.samples >= 1, f"--samples must be at least 1, got {self.samples}"),
            (self.seed is None or 0 <= self.seed < 2**63, f"--seed must be in [0, 2^63), got {self.seed}"),
            (self.batch_size is None or self.batch_size >= 1,
             f"--batch-size must be at least 1, got {self.batch_size}"),
            (math.isfinite(self.smooth_z) and self.smooth_z >= 0.0,
             f"--smooth-z must be >= 0 voxels, got {self.smooth_z}"),
        ]
        for ok, problem in checks:
            if not ok:
                raise InputError(problem)
        check_z_correlation(self.noise_correlation, "--noise-correlation")

    def resolved(self, recipe: Recipe) -> SamplingOptions:
        """These options with every None taken from the recipe's `sampling` section."""
        missing = {name: getattr(recipe.sampling, name) for name in FROM_RECIPE
                   if getattr(self, name) is None}
        return dataclasses.replace(self, **missing) if missing else self

    def members(self, runs: int = 1) -> int:
        """How many volumes a conversion combines: every run x (the input and its mirror image with tta
        "flip") x every sample."""
        return runs * (2 if self.tta == "flip" else 1) * self.samples
