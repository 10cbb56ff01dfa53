"""Layers shared by every diffusion backbone (DiffMa and the paper's baselines).

The parts that surround the token mixer are identical in DiffMa and its baselines (released code,
`model.py`): patch embedding, fixed 2-D sin-cos positions, timestep embedding, the condition vector,
adaLN modulation, the final layer, unpatchify and the U-Net-like long skips. State-dict names follow the
released code (`x_embedder.proj`, `t_embedder.mlp.{0,2}`, `final_layer.adaLN_modulation.1`,
`final_layer.linear`) so that its checkpoints load unchanged.

Shapes: N batch, C latent channels (4 for the SD VAE), H, W latent size, p patch size, T = (H/p)(W/p)
tokens, D hidden size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

#: Number of sinusoidal frequencies fed to the timestep MLP (DiT / released code).
TIMESTEP_FREQUENCIES = 256
#: Lowest frequency of the timestep and position encodings is 1 / MAX_PERIOD (Transformer convention).
MAX_PERIOD = 10000


def per_token(values: torch.Tensor) -> torch.Tensor:
    """An adaLN output as a (N, T or 1, D) tensor: (N, D) per sample -> (N, 1, D); (N, T, D) as it is."""
    return values.unsqueeze(1) if values.dim() == 2 else values


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x (N, T, D) scaled and shifted per sample (shift, scale (N, D)) or per token ((N, T, D))."""
    return x * (1 + per_token(scale)) + per_token(shift)


class PatchEmbed(nn.Module):
    """Non-overlapping p×p patches to tokens: (N, C, H, W) -> (N, T, D), tokens in raster order."""

    def __init__(self, patch_size: int, in_channels: int, hidden_size: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (N, D, h, w) -> (N, h*w, D)


def sincos_pos_embed_2d(hidden_size: int, grid_size: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding of a grid_size² token grid (MAE), (T, D) float32.

    Token t = row * grid_size + col. The first D/2 channels encode the column, the last D/2 the row
    (MAE builds its grid with the column coordinate first); each half is [sin(pos·ω), cos(pos·ω)] with
    ω_k = MAX_PERIOD^(-k / (D/4)), k = 0 … D/4 − 1. Computed in float64 like MAE, then cast.
    """
    if hidden_size % 4:
        raise ValueError(f"hidden_size must be divisible by 4 for a 2-D sin-cos embedding, got {hidden_size}")
    quarter = hidden_size // 4
    omega = 1.0 / MAX_PERIOD ** (torch.arange(quarter, dtype=torch.float64) / quarter)  # (D/4,)
    coords = torch.arange(grid_size, dtype=torch.float64)
    row, col = torch.meshgrid(coords, coords, indexing="ij")  # (n, n) each

    def encode(pos: torch.Tensor) -> torch.Tensor:  # (T,) -> (T, D/2)
        angles = pos.reshape(-1, 1) * omega
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([encode(col), encode(row)], dim=1).float()


class TimestepEmbedder(nn.Module):
    """Diffusion step t (N,) -> (N, D): 256 sinusoidal frequencies, then Linear -> SiLU -> Linear."""

    def __init__(self, hidden_size: int, frequency_size: int = TIMESTEP_FREQUENCIES):
        super().__init__()
        self.frequency_size = frequency_size
        self.mlp = nn.Sequential(
            nn.Linear(frequency_size, hidden_size),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size),
        )

    @staticmethod
    def timestep_frequencies(t: torch.Tensor, dim: int, max_period: int = MAX_PERIOD) -> torch.Tensor:
        """(N,) possibly fractional steps -> (N, dim): [cos(t·f), sin(t·f)], f_k = max_period^(-k/half)."""
        half = dim // 2
        steps = torch.arange(half, dtype=torch.float32, device=t.device)
        freqs = torch.exp(-math.log(max_period) * steps / half)
        args = t[:, None].float() * freqs[None]
        embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if dim % 2:
            embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
        return embedding

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        freqs = self.timestep_frequencies(t, self.frequency_size)
        return self.mlp(freqs.to(self.mlp[0].weight.dtype))


def condition_vector(t_emb: torch.Tensor, y: torch.Tensor, y2: torch.Tensor) -> torch.Tensor:
    """The DiffMa condition c = [t + y, t + mean_T(y2)], shape (N, 2D).

    t_emb (N, D) timestep embedding; y (N, D) BiomedCLIP image embedding of the CT (D = 512);
    y2 (N, T, D) CT Vision Embedder tokens, averaged over the tokens.
    """
    return torch.cat([t_emb + y, t_emb + y2.mean(dim=1)], dim=1)


def token_condition(t_emb: torch.Tensor, y: torch.Tensor, y2: torch.Tensor) -> torch.Tensor:
    """The paper's Eq. 6 as written: c_i = [t + y, t + y2_i] for every token i, shape (N, T, 2D).

    Same inputs as `condition_vector`; the embedder's tokens keep their place instead of being averaged,
    so every token's adaLN modulation sees the CT under it. Equals `condition_vector` on every token when
    y2 is the same for all tokens.
    """
    shared = (t_emb + y).unsqueeze(1).expand(-1, y2.shape[1], -1)  # (N, T, D)
    return torch.cat([shared, t_emb.unsqueeze(1) + y2], dim=-1)


class FinalLayer(nn.Module):
    """Tokens (N, T, D) and condition c (N, 2D) or (N, T, 2D) -> per-token patch values (N, T, p²·C_out)."""

    def __init__(
        self, hidden_size: int, patch_size: int, out_channels: int, condition_size: int | None = None
    ):
        super().__init__()
        condition_size = 2 * hidden_size if condition_size is None else condition_size
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(condition_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


def unpatchify(x: torch.Tensor, patch_size: int, channels: int, grid: tuple[int, int]) -> torch.Tensor:
    """(N, T, p²·C) raster-ordered patches -> (N, C, h·p, w·p) for a grid of (h, w) tokens.

    Inside a patch the values are ordered (p_row, p_col, channel), as the final linear layer emits them.
    """
    h, w = grid
    n = x.shape[0]
    x = x.reshape(n, h, w, patch_size, patch_size, channels)
    x = torch.einsum("nhwpqc->nchpwq", x)
    return x.reshape(n, channels, h * patch_size, w * patch_size)


def run_with_long_skips(
    blocks: Sequence[nn.Module], x: torch.Tensor, call: Callable[[nn.Module, torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """Run blocks in sequence with the released code's U-Net-like long skips; returns the last output.

    Block 0 takes x; block i > depth/2 takes out[i−1] + out[depth−i−1]; every other block takes out[i−1].
    `call(block, tokens)` runs one block (the caller closes over its condition and mask).
    """
    depth = len(blocks)
    outputs: list[torch.Tensor] = []
    for i, block in enumerate(blocks):
        if i == 0:
            tokens = x
        elif i > depth / 2:
            tokens = outputs[-1] + outputs[depth - i - 1]
        else:
            tokens = outputs[-1]
        outputs.append(call(block, tokens))
    return outputs[-1]


def xavier_init_linears(module: nn.Module, skip: Callable[[nn.Linear], bool] | None = None) -> None:
    """Xavier-uniform weights and zero biases for every nn.Linear in `module` (DiT's basic init).

    `skip(linear)` returning True leaves that layer as it is (e.g. a Mamba `dt_proj` with its own init).
    """
    for sub in module.modules():
        if isinstance(sub, nn.Linear) and not (skip is not None and skip(sub)):
            nn.init.xavier_uniform_(sub.weight)
            if sub.bias is not None:
                nn.init.zeros_(sub.bias)


def zero_init_(layer: nn.Module) -> None:
    """Zero a layer's weight and bias: adaLN outputs and the final projection start at zero (DiT)."""
    nn.init.zeros_(layer.weight)
    if getattr(layer, "bias", None) is not None:
        nn.init.zeros_(layer.bias)


def init_backbone_common(
    x_embedder: PatchEmbed, t_embedder: TimestepEmbedder, final_layer: FinalLayer, pos_embed: nn.Parameter
) -> None:
    """The initialisation every backbone shares (after `xavier_init_linears` on the whole model).

    - pos_embed: the fixed sin-cos table (it is a frozen parameter, stored in the state dict);
    - patch embedding: xavier on the flattened (D, C·p·p) weight, like a Linear layer (DiT), zero bias;
    - timestep MLP: normal(0, 0.02) weights (DiT);
    - final layer: adaLN and output projection zero, so an untrained model predicts zero noise and
      variance interpolation 0.
    """
    grid = round(pos_embed.shape[1] ** 0.5)
    with torch.no_grad():
        pos_embed.copy_(sincos_pos_embed_2d(pos_embed.shape[-1], grid).unsqueeze(0))
    weight = x_embedder.proj.weight.data
    nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))
    nn.init.zeros_(x_embedder.proj.bias)
    nn.init.normal_(t_embedder.mlp[0].weight, std=0.02)
    nn.init.normal_(t_embedder.mlp[2].weight, std=0.02)
    zero_init_(final_layer.adaLN_modulation[-1])
    zero_init_(final_layer.linear)
