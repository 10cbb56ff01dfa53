"""The models of a conversion: a run folder's recipe, EMA backbone and embedder, with its frozen encoders, on
one device (`load_models`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from diffma_cli.config import Recipe
from diffma_cli.errors import InputError


@dataclass
class ConversionModels:
    """Everything sampling needs, on one device: the run's recipe, EMA backbone, embedder, frozen encoders."""

    recipe: Recipe
    backbone: torch.nn.Module
    embedder: torch.nn.Module
    vae: torch.nn.Module  # diffma_cli.encoders.vae.FrozenVAE
    clip: torch.nn.Module  # diffma_cli.encoders.clip.FrozenClip
    device: torch.device

    @property
    def direction(self) -> str:
        """"ct->mr" or "mr->ct" (recipe data.direction)."""
        return self.recipe.data.direction


def load_models(run_dir: str | Path, device: str = "auto") -> ConversionModels:
    """Read a diffusion run folder (`load_run`) and its frozen encoders (recipe.encoders) onto `device`.

    The VAE's latent scale is the one the run trained with (run.json `encoders.latent_scale`, else the
    recipe's, else the VAE's own). Encoders whose weights differ from those recorded in run.json (a changed
    local folder, another hub revision) are refused: the model would see latents it was not trained on.
    `device`: "auto" (CUDA if available), "cpu", "cuda" or "cuda:N"; CUDA where there is none raises
    EnvironmentProblem. Encoders that are not available offline raise EnvironmentProblem (docs/encoders.md).
    """
    from diffma_cli.devices import resolve_device
    from diffma_cli.encoders.clip import load_clip
    from diffma_cli.encoders.vae import load_vae
    from diffma_cli.runs import load_run

    where = resolve_device(device)
    run = load_run(run_dir)
    encoders, trained = run.recipe.encoders, run.info.get("encoders") or {}
    offline = True if encoders.offline else None  # None: follow HF_HUB_OFFLINE, as training does
    scale = trained.get("latent_scale", encoders.latent_scale)
    vae = load_vae(encoders.vae, offline=offline, device=where, scale=scale)
    clip = load_clip(encoders.clip, offline=offline, device=where)
    for what, encoder, source in (("vae", vae, encoders.vae), ("clip", clip, encoders.clip)):
        check_same_encoder(what, encoder.identity, trained.get(what), source, run.path)
    backbone, embedder = run.backbone.to(where).eval(), run.embedder.to(where).eval()
    return ConversionModels(run.recipe, backbone, embedder, vae, clip, where)


def check_same_encoder(what: str, identity: dict, recorded: dict | None, source: str, run_path) -> None:
    """InputError if a loaded encoder computes something else than the one the run recorded (weights
    fingerprint, or CLIP's "none" and its input normalisation); nothing to compare for older runs."""
    if not isinstance(recorded, dict):
        return
    keys = ("weights_sha256", "weights", "normalize")
    if any(recorded.get(key) != identity.get(key) for key in keys if key in recorded or key in identity):
        raise InputError(f"the {what.upper()} named by the recipe ({source}) is not the one this run was "
                         "trained with (different weights)", path=run_path,
                         hint=f"make encoders.{what} in recipe.yaml point to the training's {what.upper()}")
