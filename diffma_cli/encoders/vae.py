"""The frozen image autoencoder: diffusers AutoencoderKL mapping 224² slices to 4×28×28 latents and back.

Default weights: Stable Diffusion's `stabilityai/sd-vae-ft-ema` (the released DiffMa code's default), or any
AutoencoderKL in diffusers format — a folder written by `diffma train-vae`, or a single weights file with a
config folder beside it. Images are (N, 3, H, W) in [-1, 1]; grayscale (N, 1, H, W) slices are replicated
to 3 channels as the released code does. Latents handed to the diffusion model are the posterior sample
multiplied by `scale` (the config's `scaling_factor`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from diffusers import AutoencoderKL
from torch import nn

from diffma_cli.encoders.source import (
    TINY,
    freeze,
    hub_unreachable,
    offline_requested,
    source_kind,
    weights_fingerprint,
)
from diffma_cli.errors import EnvironmentProblem, InputError

SD_VAE_HUB_ID = "stabilityai/sd-vae-ft-ema"

# Stable Diffusion v1's latent scale: 1 / (std of its VAE latents on LAION), Rombach et al. 2022. It is the
# default `scaling_factor` of diffusers' AutoencoderKL config (the sd-vae-ft-* configs predate the key and
# get it by default) and the constant the released DiffMa code multiplies by (docs/reference.md §7).
SD_LATENT_SCALE = 0.18215

# A stand-in with the SD VAE's shape contract (3 image channels, 4 latent channels, 8× downsampling: four
# encoder blocks, three of which halve the size) but ~67k parameters, for tests and the CPU demo.
TINY_VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(8, 8, 16, 16),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=4,
    sample_size=224,
    scaling_factor=SD_LATENT_SCALE,
)


class Posterior(NamedTuple):
    """The VAE's diagonal Gaussian q(z | image), before scaling: mean and std, each (N, 4, H/8, W/8)."""

    mean: torch.Tensor
    std: torch.Tensor


def to_three_channels(images: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) -> (N, 3, H, W) by replication (released code: torch.cat([x] * 3, dim=1)); 3 passes."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images (N, 1 or 3, H, W), got {tuple(images.shape)}")
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


class FrozenVAE(nn.Module):
    """A frozen AutoencoderKL with DiffMa's conventions; `identity` says exactly which weights it holds."""

    def __init__(self, autoencoder: AutoencoderKL, source: str):
        super().__init__()
        self.autoencoder = freeze(autoencoder)
        self.source = source
        self.scale = float(autoencoder.config.scaling_factor)
        self.downsample = 2 ** (len(autoencoder.config.block_out_channels) - 1)
        self.latent_channels = int(autoencoder.config.latent_channels)
        config = {k: v for k, v in autoencoder.config.items() if not k.startswith("_")}
        self.identity = {"encoder": "vae", "class": "AutoencoderKL", "config": config,
                         "weights_sha256": weights_fingerprint(autoencoder)}

    @property
    def dtype(self) -> torch.dtype:
        return self.autoencoder.dtype

    @property
    def device(self) -> torch.device:
        return self.autoencoder.device

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> Posterior:
        """images (N, 1|3, H, W) in [-1, 1], H and W multiples of 8 -> float32 posterior (unscaled), on the
        VAE's device."""
        images = to_three_channels(images)
        if images.shape[-1] % self.downsample or images.shape[-2] % self.downsample:
            raise ValueError(f"image size {tuple(images.shape[-2:])} is not a multiple of {self.downsample}")
        posterior = self.autoencoder.encode(images.to(self.device, self.dtype)).latent_dist
        return Posterior(posterior.mean.float(), posterior.std.float())

    def latents(self, posterior: Posterior, generator: torch.Generator | None = None) -> torch.Tensor:
        """A posterior sample times `scale`: the (N, 4, H/8, W/8) latents the diffusion model works on."""
        noise = torch.randn(posterior.mean.shape, generator=generator, device=posterior.mean.device,
                            dtype=posterior.mean.dtype)
        return (posterior.mean + posterior.std * noise) * self.scale

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Diffusion latents (N, 4, h, w), i.e. scaled, -> float32 images (N, 3, 8h, 8w), about [-1, 1]."""
        return self.autoencoder.decode((latents / self.scale).to(self.device, self.dtype)).sample.float()


def tiny_autoencoder(seed: int = 0) -> AutoencoderKL:
    """The randomly initialised stand-in (TINY_VAE_CONFIG); the same seed gives the same weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoencoderKL(**TINY_VAE_CONFIG)


def _load_autoencoder(source: str, config: str | None, offline: bool) -> AutoencoderKL:
    # low_cpu_mem_usage=False: diffusers' low-memory path needs `accelerate` (not a dependency) and warns
    # on every load without it; a VAE of 84 M parameters loads fine the ordinary way.
    kind = source_kind(source)
    if kind == TINY:
        return tiny_autoencoder()
    if kind == "folder":
        try:
            return AutoencoderKL.from_pretrained(source, local_files_only=True, low_cpu_mem_usage=False)
        except (OSError, ValueError) as error:
            raise InputError(f"not a diffusers AutoencoderKL folder ({error})", path=source,
                             hint="expected config.json and diffusion_pytorch_model.safetensors") from error
    if kind == "file":
        if config is None and offline:
            raise EnvironmentProblem(
                "a single VAE weights file needs its architecture config; the hub is offline", path=source,
                hint="pass a local folder holding the VAE's config.json as the VAE config (docs/encoders.md)")
        try:
            return AutoencoderKL.from_single_file(source, config=config, local_files_only=offline)
        except (OSError, ValueError, KeyError, RuntimeError) as error:
            raise InputError(f"cannot read AutoencoderKL weights ({error})", path=source) from error
    try:
        return AutoencoderKL.from_pretrained(source, local_files_only=offline, low_cpu_mem_usage=False)
    except OSError as error:
        raise hub_unreachable(source, offline, "VAE", error) from error


def load_vae(source: str = SD_VAE_HUB_ID, *, config: str | None = None, offline: bool | None = None,
             device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
             scale: float | None = None) -> FrozenVAE:
    """Load a frozen VAE from "tiny", a hub id, a diffusers folder or a single weights file.

    `config`: a local folder (or hub id) with the AutoencoderKL config.json, needed for a single file.
    `offline`: only use local files (default: HF_HUB_OFFLINE). Raises EnvironmentProblem when weights are
    not reachable, InputError for a path that is not a usable VAE. `scale` replaces the config's
    `scaling_factor` (a recipe's `encoders.latent_scale`); it is not part of the identity, because the
    posterior does not depend on it.
    """
    vae = FrozenVAE(_load_autoencoder(source, config, offline_requested(offline)), source)
    vae.identity["dtype"] = str(dtype).removeprefix("torch.")
    if scale is not None:
        vae.scale = float(scale)
    return vae.to(device=device, dtype=dtype)
