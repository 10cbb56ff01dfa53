"""How the CT reaches a diffusion backbone: the `model.condition` setting of DiffMa and every baseline.

    released        c = [t + y, t + mean_T(y2)], (N, 2D): the released code (`model.py`), whose average over
                    the embedder's tokens keeps no trace of where the anatomy is; released checkpoints.
    tokens          c_i = [t + y, t + y2_i] for every token i, (N, T, 2D): the paper's Eq. 6 as written; the
                    adaLN modulation of every block and of the final layer becomes per token with the same
                    parameter shapes, so released checkpoints load in either mode.
    latent          the CT latent concatenated to the noisy MR latent as input channels (the usual
                    conditioning of image-to-image latent diffusion, not in the paper), c as `released`.
    latent+tokens   both.

The soft mask w reaches DiffMa's blocks in every mode (`model.soft_mask` switches it off).
docs/architecture.md ("Conditioning") gives the sources and the measured effect of each mode.
"""

from __future__ import annotations

from diffma_cli.errors import InputError

#: Every mode, the released one first (the default of a model built by name).
CONDITIONS = ("released", "tokens", "latent", "latent+tokens")


def check_condition(name: str, condition: str) -> str:
    """`condition` if it is a known mode, else InputError naming the model and the choices."""
    if condition not in CONDITIONS:
        raise InputError(f"{name}: unknown condition {condition!r}",
                         hint=f"choose one of {', '.join(CONDITIONS)}")
    return condition


def per_token(condition: str) -> bool:
    """Whether the condition vector keeps the embedder's tokens (Eq. 6) instead of their mean."""
    return "tokens" in condition.split("+")


def concatenates_latent(condition: str) -> bool:
    """Whether the CT latent is an input channel block of the backbone."""
    return "latent" in condition.split("+")
