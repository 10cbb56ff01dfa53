"""The DiffMa paper's comparison backbones: DiT, ZigMa, ViM, VMamba and EfficientVMamba (EMamba).

As in the released code (`model.py`), every baseline is the DiffMa network (`backbone.ConditionedBackbone`)
with another block: the same patch embedding, fixed sin-cos positions, timestep embedding, condition
vector c (released: [t + y, t + mean_T(y2)]; `condition` chooses another mode, `conditioning.py`), long
skips and final layer. They are called like DiffMa, `model(x, t, y, y2, w)`, and use y and y2 through c;
the soft mask w is accepted and ignored (only DiffMa's blocks use it).

Blocks:
- DiT: adaLN-Zero attention + MLP (`dit.DiTBlock`), 8 heads.
- Mamba baselines (`MambaBaselineBlock`): LayerNorm, adaLN shift/scale/gate from c, ONE Mamba mixer that
  reads the tokens in the family's orders (`baseline_orders`), x + gate · mixer(...). ZigMa: one zigzag
  whose scheme cycles with the block index; ViM: raster forward and backward, the two outputs averaged;
  VMamba: four snakes (cross scan), outputs summed; EMamba: the four stride-2 sub-grids, each scanned on
  its own. Setting `scan`: "released" (default) gathers as the released code does (needed for its
  checkpoints), "path" reads the paths the methods describe; they differ for ZigMa and VMamba only.

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
from diffma_cli.models import baseline_orders
from diffma_cli.models.backbone import ConditionedBackbone
from diffma_cli.models.conditioning import check_condition
from diffma_cli.models.dit import DiTBlock
from diffma_cli.models.layers import modulate, per_token
from diffma_cli.models.mamba import D_STATE, MultiOrderMamba
from diffma_cli.models.registry import Factory, resolve_settings

#: Latent side for 224² images through the SD VAE (factor 8) and its channels, as released.
LATENT_SIZE, LATENT_CHANNELS = 28, 4
#: Width of every released model (it must equal the 512-d BiomedCLIP embedding added to t).
HIDDEN_SIZE = 512
#: Released depths of the sizes (`model.py`); every family has S, B, L, XL with patches 2, 4, 7.
DEPTHS = {"S": 4, "B": 8, "L": 16, "XL": 28}
PATCH_SIZES = (2, 4, 7)
#: `scan` of the Mamba baselines: the released gather, or the paths of the methods' papers.
BASELINE_SCANS = ("released", "path")


class MambaBaselineBlock(nn.Module):
    """Tokens (N, T, D), condition c (N, 2D) or (N, T, 2D) -> (N, T, D):
    x + gate · mixer(LN(x)·(1 + scale) + shift).

    `mixer` is the block's one Mamba mixer (N, T, D) -> (N, T, D), reading the family's token orders.
    The soft mask w is accepted for DiffMa's signature and ignored, as released.
    """

    def __init__(self, hidden_size: int, mixer: nn.Module):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(2 * hidden_size, 3 * hidden_size))
        self.mamba = mixer

    def forward(self, x: torch.Tensor, c: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
        shift, scale, gate = self.adaLN_modulation(c).chunk(3, dim=-1)  # (N, D) or (N, T, D) each
        return x + per_token(gate) * self.mamba(modulate(self.norm1(x), shift, scale))


class ReleasedViMMamba(MultiOrderMamba):
    """The released ViM mixer as it actually computes, (N, T, D) -> (N, T, D).

    The released code averages the raster scan's output with the backward scan's output, but "flips back"
    the backward output along dim 2 of its (N, L, D) result: it reverses the D channels and leaves the
    tokens in backward order (token position t receives the output computed for token T−1−t). Reproduced
    here for released checkpoints; `scan="path"` gives the ViM the paper describes (tokens restored).
    """

    def __init__(self, d_model: int, grid: int, d_state: int = D_STATE):
        super().__init__(d_model, baseline_orders.bidirectional_orders(grid), d_state=d_state)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.scan_orders(x).transpose(2, 3)  # (N, 2, L, Di), each in its reading order
        forward_out = self.out_proj(y[:, 0])  # raster order = token order
        backward_out = self.out_proj(y[:, 1]).flip(-1)  # the released flip of dim 2: channels, not tokens
        return (forward_out + backward_out) / 2


def _mixer(family: str, hidden_size: int, grid: int, block_index: int, settings: dict[str, Any]) -> nn.Module:
    """The Mamba mixer of block `block_index` of a Mamba baseline on a grid×grid token grid."""
    released, d_state = settings["scan"] == "released", settings["d_state"]
    if family == "ViM":
        if released:
            return ReleasedViMMamba(hidden_size, grid, d_state)
        # (forward + backward) / 2 with both outputs at their tokens
        return MultiOrderMamba(hidden_size, baseline_orders.bidirectional_orders(grid), d_state=d_state,
                               merge="mean")
    if family == "ZigMa":
        orders = baseline_orders.zigzag_orders(grid, block_index, released)
    elif family == "VMamba":
        orders = baseline_orders.cross_scan_orders(grid, released)
    else:  # EMamba: every token read once, by its sub-grid
        orders = baseline_orders.atrous_orders(grid)
    return MultiOrderMamba(hidden_size, orders, d_state=d_state, merge="sum")


def _common_defaults(depth: int, patch_size: int) -> dict[str, Any]:
    return {"input_size": LATENT_SIZE, "patch_size": patch_size, "in_channels": LATENT_CHANNELS,
            "hidden_size": HIDDEN_SIZE, "depth": depth, "learn_sigma": True, "condition": "released"}


def _resolve(name: str, defaults: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Settings = defaults updated by overrides, with the checks every backbone needs."""
    settings = resolve_settings(name, defaults, overrides)
    check_condition(name, settings["condition"])
    if settings["depth"] < 1 or settings["hidden_size"] < 4 or settings["hidden_size"] % 4:
        raise InputError(f"{name}: depth {settings['depth']}, hidden_size {settings['hidden_size']}",
                         hint="depth must be at least 1 and hidden_size a positive multiple of 4 "
                              "(the 2-D sin-cos positions split it in four)")
    return settings


def _backbone(blocks: list[nn.Module], name: str, settings: dict[str, Any]) -> ConditionedBackbone:
    shell_keys = ("input_size", "patch_size", "in_channels", "hidden_size", "learn_sigma")
    return ConditionedBackbone(blocks, {"name": name, **settings}, **{k: settings[k] for k in shell_keys})


def build_dit(name: str, depth: int, patch_size: int, overrides: dict[str, Any]) -> ConditionedBackbone:
    """DiT baseline `name` (e.g. "DiT-B/2"): `depth` adaLN-Zero transformer blocks, 8 heads (released)."""
    defaults = {**_common_defaults(depth, patch_size), "num_heads": 8, "mlp_ratio": 4.0}
    settings = _resolve(name, defaults, overrides)
    if settings["hidden_size"] % settings["num_heads"]:
        raise InputError(f"{name}: hidden_size {settings['hidden_size']} is not divisible by "
                         f"num_heads {settings['num_heads']}")
    blocks = [DiTBlock(settings["hidden_size"], settings["num_heads"], settings["mlp_ratio"])
              for _ in range(settings["depth"])]
    return _backbone(blocks, name, settings)


def build_mamba_baseline(
    name: str, depth: int, patch_size: int, overrides: dict[str, Any]
) -> ConditionedBackbone:
    """Mamba baseline `name` ("ZigMa-…", "ViM-…", "VMamba-…" or "EMamba-…"): `depth` one-mixer blocks."""
    family = name.split("-")[0]
    defaults = {**_common_defaults(depth, patch_size), "scan": "released", "d_state": D_STATE}
    settings = _resolve(name, defaults, overrides)
    if settings["scan"] not in BASELINE_SCANS:
        raise InputError(f"{name}: unknown scan {settings['scan']!r}",
                         hint=f"choose one of {', '.join(BASELINE_SCANS)}")
    grid = settings["input_size"] // settings["patch_size"]
    if family == "EMamba" and grid % 2:
        raise InputError(f"{name}: the atrous scan needs an even token grid, got {grid}×{grid} "
                         f"(input_size {settings['input_size']} / patch_size {settings['patch_size']})",
                         hint="choose a patch size that leaves an even number of tokens per side")
    width = settings["hidden_size"]
    blocks = [MambaBaselineBlock(width, _mixer(family, width, grid, i, settings))
              for i in range(settings["depth"])]
    return _backbone(blocks, name, settings)


def _factory(builder: Callable[..., nn.Module], name: str, depth: int, patch: int) -> Factory:
    def factory(**overrides: Any) -> nn.Module:
        return builder(name, depth, patch, overrides)

    factory.__doc__ = f"{name}: depth {depth}, patch {patch}, width {HIDDEN_SIZE} (released sizes)."
    return factory


def _baseline_factories() -> dict[str, Factory]:
    factories = {}
    builders = {"DiT": build_dit, **dict.fromkeys(("ZigMa", "ViM", "VMamba", "EMamba"), build_mamba_baseline)}
    for family, builder in builders.items():
        patches = [p for p in PATCH_SIZES if not (family == "EMamba" and (LATENT_SIZE // p) % 2)]
        for size, depth in DEPTHS.items():
            for patch in patches:
                name = f"{family}-{size}/{patch}"
                factories[name] = _factory(builder, name, depth, patch)
        extra_name, extra_depth = ("DiT-SB/2", 7) if family == "DiT" else (f"{family}-BL/2", 13)
        factories[extra_name] = _factory(builder, extra_name, extra_depth, 2)
    return factories


#: Every baseline name with its factory `factory(**overrides) -> model` (registered by models/__init__).
BASELINE_FACTORIES: dict[str, Factory] = _baseline_factories()
