"""DiffMa: the diffusion Mamba backbone of the paper (Wang et al., arXiv 2406.15910), as released.

Each block (released `Spiral_MambaBlock`):
    shift, scale, gate = adaLN(c)                                  (N, D) each, c = [t + y, t + mean y2]
    x_ssm = LN(x)·(1 + scale) + shift                               (N, T, D)
    out1  = mamba1(x_ssm);   out2 = mamba2(x_ssm · w)               w (N, T, 1): the CT soft mask
    a     = sigmoid(MLP(LN([out1, out2])))                          (N, T, 1) learned fusion
    x    <- x + gate · (a·out1 + (1 − a)·out2)
Both mixers read the tokens in raster order, the block's spiral and the reversed spiral (see scan_orders).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from diffma_cli.models.backbone import ConditionedBackbone
from diffma_cli.models.layers import modulate, per_token
from diffma_cli.models.mamba import D_STATE, MultiOrderMamba
from diffma_cli.models.scan_orders import diffma_block_orders


class DiffMaBlock(nn.Module):
    """Tokens (N, T, D), condition c (N, 2D) or per token (N, T, 2D), soft mask w (N, T, 1) -> (N, T, D).

    orders: (3, T) gather orders of this block's two mixers. soft_mask=False ignores w (w = 1), the
    paper's ablation without the soft mask.
    """

    def __init__(
        self, hidden_size: int, orders: torch.Tensor, soft_mask: bool = True, d_state: int = D_STATE
    ):
        super().__init__()
        self.soft_mask = soft_mask
        self.norm1 = nn.LayerNorm(hidden_size)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(2 * hidden_size, 3 * hidden_size))
        self.mamba1 = MultiOrderMamba(hidden_size, orders, d_state=d_state)
        self.mamba2 = MultiOrderMamba(hidden_size, orders, d_state=d_state)
        self.attention_network = nn.Sequential(
            nn.LayerNorm(2 * hidden_size),
            nn.Linear(2 * hidden_size, hidden_size),
            nn.SiLU(),
            nn.Linear(hidden_size, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor, c: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.adaLN_modulation(c).chunk(3, dim=-1)  # (N, D) or (N, T, D) each
        x_ssm = modulate(self.norm1(x), shift, scale)  # (N, T, D)
        masked = x_ssm * w if self.soft_mask else x_ssm
        out1, out2 = self.mamba1(x_ssm), self.mamba2(masked)  # (N, T, D) each
        a = self.attention_network(torch.cat([out1, out2], dim=-1))  # (N, T, 1)
        return x + per_token(gate) * (a * out1 + (1 - a) * out2)


def build_diffma(config: dict[str, Any]) -> ConditionedBackbone:
    """The DiffMa backbone for a resolved config (see `diffma_cli.models.create_model`)."""
    grid = config["input_size"] // config["patch_size"]
    blocks = [
        DiffMaBlock(config["hidden_size"], diffma_block_orders(grid, i, config["scan"]),
                    soft_mask=config["soft_mask"], d_state=config["d_state"])
        for i in range(config["depth"])
    ]
    shell_keys = ("input_size", "patch_size", "in_channels", "hidden_size", "learn_sigma")
    shell = {key: config[key] for key in shell_keys}
    return ConditionedBackbone(blocks, config, **shell)
