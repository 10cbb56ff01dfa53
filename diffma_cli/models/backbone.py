"""The network every diffusion backbone shares around its stack of blocks (released `model.DiffMa`).

patch embedding + fixed sin-cos positions -> blocks with long skips, each conditioned on c (and, for
DiffMa, the soft mask w) -> adaLN final layer -> unpatchify. DiffMa and every baseline differ only in
their blocks, each called as `block(tokens, c, w)`. How c is built and whether the CT latent is an input
is the model's `condition` (`conditioning.py`): c = [t + y, t + mean_T(y2)] (N, 2D) as released, or per
token (N, T, 2D) as the paper's Eq. 6 writes it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from diffma_cli.models.conditioning import concatenates_latent, per_token
from diffma_cli.models.layers import (
    FinalLayer,
    PatchEmbed,
    TimestepEmbedder,
    condition_vector,
    init_backbone_common,
    run_with_long_skips,
    token_condition,
    unpatchify,
    xavier_init_linears,
    zero_init_,
)


class ConditionedBackbone(nn.Module):
    """x (N, C, H, W) latent, t (N,) diffusion step, y (N, D) CLIP embedding, y2 (N, T, D) embedder
    tokens, w (N, T, 1) soft mask, source (N, C, H, W) CT latent (needed by the `latent` conditions only)
    -> (N, 2C, H, W) with learn_sigma (epsilon, then the variance interpolation v), else (N, C, H, W).
    T = (H/p)·(W/p); H = W = input_size.

    `config` is the model's registry record ({"name": …, settings …}); `create_model(**config)` rebuilds it.
    Its "condition" (default "released") says how the CT reaches the blocks (`conditioning.py`).
    """

    def __init__(
        self,
        blocks: list[nn.Module],
        config: dict[str, Any],
        input_size: int,
        patch_size: int,
        in_channels: int,
        hidden_size: int,
        learn_sigma: bool,
    ):
        super().__init__()
        self.config = config
        condition = config.get("condition", "released")
        self.per_token_condition = per_token(condition)
        self.concatenates_latent = concatenates_latent(condition)
        self.in_channels = in_channels
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.patch_size = patch_size
        self.grid_size = input_size // patch_size
        # With the CT latent as input, the patch embedding reads 2C channels: [noisy MR latent, CT latent].
        embedded = 2 * in_channels if self.concatenates_latent else in_channels
        self.x_embedder = PatchEmbed(patch_size, embedded, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        # Fixed, but a parameter (requires_grad=False) so that it is in the state dict, as released.
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid_size**2, hidden_size), requires_grad=False)
        self.blocks = nn.ModuleList(blocks)
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """The released initialisation as it actually runs: xavier-uniform for EVERY Linear (the released
        `DiffMa.initialize_weights` applies it last, over the blocks' own inits, Mamba's `dt_proj` and
        DiffMa's fusion layers included), then the shared parts, then zero adaLN outputs in every block."""
        xavier_init_linears(self)
        init_backbone_common(self.x_embedder, self.t_embedder, self.final_layer, self.pos_embed)
        for block in self.blocks:
            zero_init_(block.adaLN_modulation[-1])

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, y2: torch.Tensor, w: torch.Tensor,
        source: torch.Tensor | None = None,
    ) -> torch.Tensor:
        grid = (x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size)
        if x.shape[-2:] != (self.grid_size * self.patch_size,) * 2:
            raise ValueError(f"input {tuple(x.shape[-2:])} does not match the model's "
                             f"{self.grid_size * self.patch_size}² latent (patch {self.patch_size})")
        if self.concatenates_latent:
            if source is None or source.shape != x.shape:
                raise ValueError(f"condition {self.config['condition']!r} needs the CT latent `source` "
                                 f"shaped like x {tuple(x.shape)}")
            x = torch.cat([x, source.to(x.dtype)], dim=1)  # (N, 2C, H, W)
        tokens = self.x_embedder(x) + self.pos_embed  # (N, T, D)
        t_emb = self.t_embedder(t)
        if self.per_token_condition:
            c = token_condition(t_emb, y, y2)  # (N, T, 2D)
        else:
            c = condition_vector(t_emb, y, y2)  # (N, 2D)
        tokens = run_with_long_skips(self.blocks, tokens, lambda block, h: block(h, c, w))  # (N, T, D)
        patches = self.final_layer(tokens, c)  # (N, T, p²·out_channels)
        return unpatchify(patches, self.patch_size, self.out_channels, grid)  # (N, out_channels, H, W)


def regression_latents(model: nn.Module, y: torch.Tensor, y2: torch.Tensor, w: torch.Tensor,
                       source: torch.Tensor) -> torch.Tensor:
    """The `regression` objective's prediction (config.DiffusionConfig): the backbone's first C output
    channels for x = 0 and t = 0 with the CT latent `source` (N, C, h, w) as its input -> (N, C, h, w) MR
    latents. `model` may be wrapped (DDP, torch.compile): only its forward is called."""
    steps = torch.zeros(len(source), dtype=torch.long, device=source.device)
    return model(torch.zeros_like(source), steps, y, y2, w, source)[:, :source.shape[1]]
