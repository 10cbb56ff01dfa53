"""The DiT block (Peebles & Xie, "Scalable Diffusion Models with Transformers"), as the DiffMa paper's
transformer baseline uses it: adaLN-Zero self-attention and MLP, conditioned on the DiffMa condition vector
c (N, 2D) instead of DiT's (N, D).

Parameter names follow the released code, which builds the block from timm's `Attention` and `Mlp`:
`attn.qkv`, `attn.proj`, `mlp.fc1`, `mlp.fc2`, `adaLN_modulation.1`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from diffma_cli.models.layers import modulate, per_token


class SelfAttention(nn.Module):
    """Multi-head self-attention over tokens (N, T, D) -> (N, T, D), softmax(q·kᵀ/√d_head)·v."""

    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        qkv = self.qkv(x).reshape(n, t, 3, self.num_heads, d // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (N, heads, T, d_head)
        out = F.scaled_dot_product_attention(q, k, v)  # (N, heads, T, d_head)
        return self.proj(out.transpose(1, 2).reshape(n, t, d))


class MLP(nn.Module):
    """Token-wise Linear -> GELU (tanh approximation, as DiT) -> Linear, (N, T, D) -> (N, T, D)."""

    def __init__(self, hidden_size: int, inner_size: int):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, inner_size)
        self.fc2 = nn.Linear(inner_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class DiTBlock(nn.Module):
    """adaLN-Zero transformer block: tokens (N, T, D), condition c (N, 2D) or (N, T, 2D) -> (N, T, D).

    The soft mask `w` of the DiffMa signature is accepted and ignored: the released DiT baseline does not
    use it (only DiffMa's blocks do).
    """

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        # LayerNorms without affine parameters: adaLN supplies scale and shift (DiT).
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = MLP(hidden_size, int(hidden_size * mlp_ratio))
        # shift, scale, gate for attention and for the MLP, from the (N, 2D) condition.
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(2 * hidden_size, 6 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.adaLN_modulation(c).chunk(6, dim=-1)
        x = x + per_token(gate_a) * self.attn(modulate(self.norm1(x), shift_a, scale_a))
        return x + per_token(gate_m) * self.mlp(modulate(self.norm2(x), shift_m, scale_m))
