"""`diffma train-vae`: a small diffusers AutoencoderKL trained on the prepared CT and MR slices.

It replaces the Stable Diffusion VAE where that cannot be downloaded: same interface (3-channel images in
[-1, 1], 8x downsampling, 4 latent channels), saved with `save_pretrained` so that every place that takes
`stabilityai/sd-vae-ft-ema` also takes its folder. Loss, as the LDM autoencoders (Rombach et al. 2022)
without their perceptual and GAN terms: per image, sum |x - x_hat| + kl_weight * KL(q(z|x) || N(0, I)),
divided by the number of pixel values (3 H W) to keep it near 1.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.data import Dataset

from diffma_cli.config import VAEConfig
from diffma_cli.train.data_order import SampleRandomness

MODALITIES = ("ct", "mr")
# SD's latents have std about 1/0.18215; ours are rescaled the same way: scaling_factor = 1 / std(latents).
SCALE_ESTIMATE_IMAGES = 256


def build_vae(config: VAEConfig):
    """A randomly initialised AutoencoderKL: len(block_out_channels) levels = 2^(levels-1) downsampling."""
    from diffusers import AutoencoderKL

    levels = len(config.block_out_channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(config.block_out_channels), layers_per_block=config.layers_per_block,
        latent_channels=config.latent_channels, norm_num_groups=config.norm_num_groups,
    )


class SlicesOfBothModalities(Dataset):
    """Every CT slice and every MR slice of a prepared-slices data set as one 3-channel image each.

    Items: {"image": float32 (3, H, W) in [-1, 1]} -- the grey slice replicated to RGB as the released
    code feeds the SD VAE. Index i < N is CT slice i, index N + i is MR slice i.
    """

    def __init__(self, slices: Dataset):
        self.slices = slices

    def __len__(self) -> int:
        return 2 * len(self.slices)

    def __getitem__(self, index: int) -> dict:
        modality = MODALITIES[index // len(self.slices)]
        image = torch.as_tensor(self.slices[index % len(self.slices)][modality])
        return {"image": image.expand(3, *image.shape[-2:]).contiguous()}


class Reconstruction(nn.Module):
    """Encode, sample the posterior with the given noise, decode: one module so that DDP sees one forward."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, images: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images (N, 3, H, W), noise (N, C, H/8, W/8) -> (reconstruction (N, 3, H, W), KL per image (N,))."""
        posterior = self.vae.encode(images).latent_dist
        latents = posterior.mean + posterior.std * noise
        return self.vae.decode(latents).sample, posterior.kl()


class VAETask:
    """The training task of `fit` for the VAE (model: `Reconstruction`, so `task.model.vae` is the VAE)."""

    find_unused_parameters = False

    def __init__(self, config: VAEConfig, dataset: Dataset, image_size: int):
        self.model = Reconstruction(build_vae(config))
        self.dataset = dataset
        self.kl_weight = config.kl_weight
        self.latent_shape = (config.latent_channels, image_size // 8, image_size // 8)

    def loss(self, model: nn.Module, batch: dict, randomness: SampleRandomness) -> torch.Tensor:
        images = batch["image"]
        reconstruction, kl = model(images, randomness.randn(*self.latent_shape))
        values_per_image = images[0].numel()
        absolute = (images - reconstruction.float()).abs().flatten(1).sum(1)
        return ((absolute + self.kl_weight * kl.float()) / values_per_image).mean()


@torch.no_grad()
def latent_std(vae: nn.Module, dataset: Dataset, device: torch.device, batch_size: int = 16) -> float:
    """Standard deviation of the posterior means over the first SCALE_ESTIMATE_IMAGES images (spread over
    both modalities)."""
    count = min(len(dataset), SCALE_ESTIMATE_IMAGES)
    indices = torch.linspace(0, len(dataset) - 1, count).round().long().tolist()
    latents = []
    for start in range(0, count, batch_size):
        images = torch.stack([dataset[i]["image"] for i in indices[start:start + batch_size]]).to(device)
        latents.append(vae.encode(images).latent_dist.mean.float().cpu())
    return float(torch.cat(latents).std())


@torch.no_grad()
def reconstruction_psnr(vae: nn.Module, slices: Dataset, device: torch.device, batch_size: int = 16) -> dict:
    """Mean PSNR (dB) per slice of CT and MR reconstructed through the posterior mean, on the [-1, 1] scale
    (peak-to-peak 2): 10 log10(2^2 / MSE), MSE over the grey slice (the mean of the three output channels)."""
    both = SlicesOfBothModalities(slices)
    results = {}
    for m, modality in enumerate(MODALITIES):
        values = []
        for start in range(0, len(slices), batch_size):
            stop = min(start + batch_size, len(slices))
            images = torch.stack([both[m * len(slices) + i]["image"] for i in range(start, stop)]).to(device)
            decoded = vae.decode(vae.encode(images).latent_dist.mean).sample.float()
            mse = ((decoded.mean(1) - images[:, 0]) ** 2).flatten(1).mean(1).clamp_min(1e-12)
            values += (10 * torch.log10(4.0 / mse)).tolist()
        results[modality] = sum(values) / len(values) if values else math.nan
    return results
