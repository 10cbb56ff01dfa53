"""The DiffMa paper's comparison backbones: DiT, ZigMa, ViM, VMamba and EfficientVMamba (EMamba).

As in the released code (`model.py`), every baseline is the DiffMa network with another block: the same
patch embedding, fixed sin-cos positions, timestep embedding, condition vector c = [t + y, t + mean_T(y2)],
U-Net-like long skips and final layer; only the blocks differ. They are called like DiffMa,
`model(x, t, y, y2, w)`, and use y and y2 through c; the soft mask w is accepted and ignored (only
DiffMa's blocks use it).

Blocks:
- DiT: adaLN-Zero attention + MLP (`dit.DiTBlock`), 8 heads.
- Mamba baselines: LayerNorm, adaLN shift/scale/gate from c, ONE Mamba mixer reading the tokens in the
  family's orders (`baseline_orders`), x + gate · mixer(...). ZigMa: one zigzag, its scheme cycling with
  the block index; ViM: raster forward and backward, outputs averaged; VMamba: four snakes (cross scan),
  outputs summed; EMamba: the four stride-2 sub-grids, each scanned on its own.

Names and sizes are the released ones (all width 512): S depth 4, B 8, L 16, XL 28 with patch 2, 4 or 7,
the 13-layer `BL/2` of the Mamba baselines and the 7-layer `DiT-SB/2`. `EMamba-*/4` is left out: its 7×7
token grid cannot be split into 2×2 sub-grids (the released code fails on it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from diffma_cli.errors import InputError
from diffma_cli.models.dit import DiTBlock
from diffma_cli.models.layers import (
    FinalLayer,
    PatchEmbed,
    TimestepEmbedder,
    condition_vector,
    init_backbone_common,
    run_with_long_skips,
    unpatchify,
    xavier_init_linears,
    zero_init_,
)

Factory = Callable[..., nn.Module]

#: Latent side for 224² images through the SD VAE (factor 8), as in the released code.
LATENT_SIZE = 28
#: SD VAE latent channels.
LATENT_CHANNELS = 4
#: Width of every released model (it must equal the 512-d BiomedCLIP embedding added to t).
HIDDEN_SIZE = 512


class ConditionedBackbone(nn.Module):
    """DiffMa's network around a stack of blocks, each called as `block(tokens, c, w)`.

    x (N, C, H, W) latent, t (N,) diffusion step, y (N, D) CLIP embedding, y2 (N, T, D) embedder tokens,
    w (N, T, 1) soft mask -> (N, 2C, H, W) with learn_sigma (epsilon, then variance interpolation), else
    (N, C, H, W). T = (H/p)(W/p).
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
        self.in_channels = in_channels
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.patch_size = patch_size
        self.grid_size = input_size // patch_size
        self.x_embedder = PatchEmbed(patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        # Fixed, but a parameter (requires_grad=False) so that it is in the state dict as released.
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid_size**2, hidden_size), requires_grad=False)
        self.blocks = nn.ModuleList(blocks)
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Released initialisation: xavier Linears (the Mamba `dt_proj` included, as the released
        `DiffMa.initialize_weights` re-initialises it too), the shared parts, zero adaLN outputs."""
        xavier_init_linears(self)
        init_backbone_common(self.x_embedder, self.t_embedder, self.final_layer, self.pos_embed)
        for block in self.blocks:
            zero_init_(block.adaLN_modulation[-1])

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, y2: torch.Tensor, w: torch.Tensor
    ) -> torch.Tensor:
        grid = (x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size)
        if grid != (self.grid_size, self.grid_size):
            raise ValueError(f"input {tuple(x.shape[-2:])} does not give the model's "
                             f"{self.grid_size}×{self.grid_size} tokens with patch {self.patch_size}")
        tokens = self.x_embedder(x) + self.pos_embed  # (N, T, D)
        c = condition_vector(self.t_embedder(t), y, y2)  # (N, 2D)
        tokens = run_with_long_skips(self.blocks, tokens, lambda block, h: block(h, c, w))  # (N, T, D)
        patches = self.final_layer(tokens, c)  # (N, T, p²·out_channels)
        return unpatchify(patches, self.patch_size, self.out_channels, grid)  # (N, out_channels, H, W)


def _resolve(name: str, defaults: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Defaults updated by overrides; unknown keys are refused with the valid ones listed."""
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise InputError(f"{name} has no setting {', '.join(unknown)}",
                         hint=f"valid overrides: {', '.join(sorted(defaults))}")
    settings = {**defaults, **overrides}
    if settings["input_size"] % settings["patch_size"]:
        raise InputError(f"{name}: input_size {settings['input_size']} is not a multiple of "
                         f"patch_size {settings['patch_size']}")
    return settings


def _shell_kwargs(settings: dict[str, Any]) -> dict[str, Any]:
    keys = ("input_size", "patch_size", "in_channels", "hidden_size", "learn_sigma")
    return {key: settings[key] for key in keys}


def _common_defaults(depth: int, patch_size: int) -> dict[str, Any]:
    return {"input_size": LATENT_SIZE, "patch_size": patch_size, "in_channels": LATENT_CHANNELS,
            "hidden_size": HIDDEN_SIZE, "depth": depth, "learn_sigma": True}


def build_dit(name: str, depth: int, patch_size: int, overrides: dict[str, Any]) -> ConditionedBackbone:
    """DiT baseline `name` (e.g. "DiT-B/2"): `depth` adaLN-Zero transformer blocks, 8 heads (released)."""
    defaults = {**_common_defaults(depth, patch_size), "num_heads": 8, "mlp_ratio": 4.0}
    settings = _resolve(name, defaults, overrides)
    if settings["hidden_size"] % settings["num_heads"]:
        raise InputError(f"{name}: hidden_size {settings['hidden_size']} is not divisible by "
                         f"num_heads {settings['num_heads']}")
    blocks = [DiTBlock(settings["hidden_size"], settings["num_heads"], settings["mlp_ratio"])
              for _ in range(settings["depth"])]
    return ConditionedBackbone(blocks, {"name": name, **settings}, **_shell_kwargs(settings))


#: Released depths of the sizes (`model.py`): every family has S, B, L, XL with patches 2, 4, 7.
DEPTHS = {"S": 4, "B": 8, "L": 16, "XL": 28}
PATCH_SIZES = (2, 4, 7)


def _factory(builder: Callable[..., nn.Module], name: str, depth: int, patch: int) -> Factory:
    def factory(**overrides: Any) -> nn.Module:
        return builder(name, depth, patch, overrides)

    factory.__doc__ = f"{name}: depth {depth}, patch {patch}, width {HIDDEN_SIZE} (released sizes)."
    return factory


def _dit_factories() -> dict[str, Callable[..., nn.Module]]:
    factories = {f"DiT-{size}/{patch}": _factory(build_dit, f"DiT-{size}/{patch}", depth, patch)
                 for size, depth in DEPTHS.items() for patch in PATCH_SIZES}
    factories["DiT-SB/2"] = _factory(build_dit, "DiT-SB/2", 7, 2)  # released: 7 blocks
    return factories


#: Every baseline name with its factory `factory(**overrides) -> model`.
BASELINE_FACTORIES: dict[str, Callable[..., nn.Module]] = {**_dit_factories()}
