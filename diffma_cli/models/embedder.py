"""The CT Vision Embedder of DiffMa and its contrastive pre-training loss (released `CT_Encoder`).

It turns the CT latent into the tokens y2 and the soft mask w that condition the backbone:
    tokens = PatchEmbed(z)                                              (N, T, D)
    weight = sigmoid(MLP(mean_D tokens) + MLP(max_D tokens))            (N, T, 1) channel attention over
                                                                        tokens, MLP = T -> T/14 -> T
    tokens = LayerNorm(tokens · weight)
and returns (weight, tokens). It is pre-trained alone with InfoNCE (`info_nce_loss`) and then frozen.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from diffma_cli.models.layers import PatchEmbed

#: Reduction ratio of the token MLP (released `reduction_ratio=14`).
REDUCTION_RATIO = 14
#: InfoNCE temperature (paper, released `infoNCE_loss_b`).
INFO_NCE_TAU = 0.07


class VisionEmbedding(PatchEmbed):
    """Patch embedding with BEiT's `mask_token` (1, 1, D): a released parameter, unused at inference."""

    def __init__(self, patch_size: int, in_channels: int, hidden_size: int):
        super().__init__(patch_size, in_channels, hidden_size)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, hidden_size))


class CTVisionEmbedder(nn.Module):
    """CT latent z (N, C, H, W) -> (weight (N, T, 1), tokens (N, T, D)), T = (H/p)², H = input_size."""

    def __init__(self, config: dict, input_size: int, patch_size: int, in_channels: int, hidden_size: int):
        super().__init__()
        self.config = config
        self.input_size = input_size
        num_tokens = (input_size // patch_size) ** 2
        # Released: int(T / 14); at least 1 so that tiny test grids (T < 14) still build.
        reduced = max(1, num_tokens // REDUCTION_RATIO)
        self.vision_embedding = VisionEmbedding(patch_size, in_channels, hidden_size)
        self.fc = nn.Sequential(nn.Linear(num_tokens, reduced), nn.ReLU(), nn.Linear(reduced, num_tokens))
        self.norm = nn.LayerNorm(hidden_size)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if z.shape[-2:] != (self.input_size, self.input_size):
            raise ValueError(f"embedder built for {self.input_size}² latents, got {tuple(z.shape[-2:])}")
        tokens = self.vision_embedding(z)  # (N, T, D)
        avg = self.fc(tokens.mean(dim=-1))  # (N, T): pooled over the features of each token
        peak = self.fc(tokens.amax(dim=-1))  # (N, T)
        weight = torch.sigmoid(avg + peak).unsqueeze(-1)  # (N, T, 1)
        return weight, self.norm(tokens * weight)


def info_nce_loss(tokens: torch.Tensor, tau: float = INFO_NCE_TAU) -> torch.Tensor:
    """InfoNCE over a batch: each sample's token sequence (N, T, D), flattened and L2-normalised, must be
    most similar to itself among the batch (label = own index; no augmentation, as released)."""
    flat = F.normalize(tokens.reshape(tokens.shape[0], -1), p=2, dim=1)  # (N, T·D)
    logits = flat @ flat.T / tau  # (N, N) cosine similarities / tau
    return F.cross_entropy(logits, torch.arange(flat.shape[0], device=flat.device))
