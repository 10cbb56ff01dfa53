"""The two DiffMa trainings as tasks of the shared loop: embedder pre-training and diffusion training.

Both read VAE posteriors (mean and std, unscaled) from the latent cache and draw the latent sample
themselves, per sample, from the loop's generators: z = (mean + std * eps) * scale, as the released code's
`vae.encode(x).latent_dist.sample().mul_(0.18215)` does at every step.

Batch items (dicts of tensors, one per slice):
    source_mean, source_std   (4, h, w) posterior of the conditioning image (CT for ct->mr)
    target_mean, target_std   (4, h, w) posterior of the image to generate (MR for ct->mr); diffusion only
    clip                      (E,) CLIP image embedding of the conditioning image; absent without CLIP
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset

from diffma_cli.models.backbone import regression_latents
from diffma_cli.train.data_order import SampleRandomness


def sample_latents(mean: torch.Tensor, std: torch.Tensor, scale: float,
                   randomness: SampleRandomness) -> torch.Tensor:
    """(N, C, h, w) posterior sample times the latent scale, with one generator per sample."""
    return (mean + std * randomness.randn(*mean.shape[1:]).to(mean.dtype)) * scale


def gather_with_gradients(tokens: torch.Tensor) -> torch.Tensor:
    """Concatenate a tensor over all processes along dim 0, keeping gradients to every rank's part.

    Contrastive losses need every sample of the global batch as a negative; torch.distributed.nn's
    all_gather sums the gradients of all ranks' copies of the loss back onto each rank's slice, and DDP
    then averages over ranks, so the parameter gradient is that of the single-process loss.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tokens
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(tokens), dim=0)


def freeze_unused(model: nn.Module, names: tuple[str, ...]) -> None:
    """Stop training parameters the forward pass never uses (the embedder's mask token): with
    requires_grad False, DDP need not look for unused parameters and AdamW leaves them as they are, which
    is also what the released code's optimiser did to them (they never get a gradient)."""
    for name, parameter in model.named_parameters():
        if name.split(".")[-1] in names:
            parameter.requires_grad_(False)


class EmbedderTask:
    """InfoNCE pre-training of the CT Vision Embedder (paper Fig. 3, eq. for S; tau from the recipe).

    The negatives of each sample are all other samples of the micro-batch over all processes.
    """

    find_unused_parameters = False

    def __init__(self, embedder: nn.Module, dataset: Dataset, scale: float, tau: float, info_nce):
        self.model = embedder
        freeze_unused(embedder, ("mask_token",))
        self.dataset = dataset
        self.scale = scale
        self.tau = tau
        self.info_nce = info_nce

    def loss(self, model: nn.Module, batch: dict, randomness: SampleRandomness) -> torch.Tensor:
        latents = sample_latents(batch["source_mean"], batch["source_std"], self.scale, randomness)
        _, tokens = model(latents)
        return self.info_nce(gather_with_gradients(tokens.float()), self.tau)


class DiffusionTask:
    """The diffusion backbone learns to denoise target latents conditioned on the source (docs/reference.md
    §3.1): y = CLIP embedding of the source, y2 / w = tokens / soft mask of the frozen embedder, and
    the source latent itself for the `latent` conditions (models/conditioning.py)."""

    find_unused_parameters = False

    def __init__(self, backbone: nn.Module, embedder: nn.Module, diffusion, dataset: Dataset, scale: float,
                 clip_width: int, objective: str = "diffusion", min_snr_gamma: float | None = None):
        self.model = backbone
        self.objective = objective
        self.min_snr_gamma = min_snr_gamma  # None: the released uniform weighting of the ε loss
        self.embedder = embedder
        self.diffusion = diffusion
        self.dataset = dataset
        self.scale = scale
        self.clip_width = clip_width

    def to(self, device: torch.device) -> DiffusionTask:
        self.embedder.to(device)
        return self

    def loss(self, model: nn.Module, batch: dict, randomness: SampleRandomness) -> torch.Tensor:
        # Fixed order of draws per sample: source posterior, target posterior, timestep, noise.
        source = sample_latents(batch["source_mean"], batch["source_std"], self.scale, randomness)
        target = sample_latents(batch["target_mean"], batch["target_std"], self.scale, randomness)
        t = randomness.randint(self.diffusion.num_timesteps)
        noise = randomness.randn(*target.shape[1:])
        with torch.no_grad():
            w, y2 = self.embedder(source)
        if "clip" in batch:
            y = batch["clip"].float()
        else:  # no CLIP encoder: the condition vector carries no image embedding (`clip: none`)
            y = torch.zeros(len(target), self.clip_width, device=target.device)

        if self.objective == "regression":  # one pass from the CT: x = 0, t = 0, MSE on the latent channels
            predicted = regression_latents(model, y, y2, w, source)
            return torch.nn.functional.mse_loss(predicted.float(), target.float())

        def denoiser(x_t: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
            return model(x_t, steps, y, y2, w, source)  # source: the CT latent (`latent` conditions)

        losses = self.diffusion.training_losses(denoiser, target, t, noise, min_snr_gamma=self.min_snr_gamma)
        return losses["loss"].mean()

