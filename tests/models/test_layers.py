"""Shared backbone layers against hand-computed cases."""

import math

import torch
from torch import nn

from diffma_cli.models.layers import (
    PatchEmbed,
    TimestepEmbedder,
    condition_vector,
    run_with_long_skips,
    sincos_pos_embed_2d,
    unpatchify,
)


def test_sincos_pos_embed_matches_formula_per_cell():
    d, n = 8, 3
    table = sincos_pos_embed_2d(d, n)
    assert table.shape == (n * n, d)
    omega = [1.0, 1.0 / 100.0]  # 10000^(-k/2) for k = 0, 1 (D/4 = 2 frequencies)
    for row in range(n):
        for col in range(n):
            expected = (
                [math.sin(col * w) for w in omega] + [math.cos(col * w) for w in omega]
                + [math.sin(row * w) for w in omega] + [math.cos(row * w) for w in omega]
            )
            torch.testing.assert_close(table[row * n + col], torch.tensor(expected), rtol=0, atol=1e-7)


def test_timestep_frequencies_cos_first():
    t = torch.tensor([0.0, 3.0])
    emb = TimestepEmbedder.timestep_frequencies(t, 4)
    freqs = [1.0, 1.0 / 100.0]  # exp(-ln(10000) * k / 2)
    expected = torch.tensor([[1.0, 1.0, 0.0, 0.0], [math.cos(3 * freqs[0]), math.cos(3 * freqs[1]),
                                                     math.sin(3 * freqs[0]), math.sin(3 * freqs[1])]])
    torch.testing.assert_close(emb, expected)


def test_patch_embed_then_unpatchify_round_trip():
    # An identity "projection" (one output channel per input value) makes unpatchify the exact inverse.
    p, c = 2, 3
    embed = PatchEmbed(p, c, p * p * c)
    with torch.no_grad():
        embed.proj.bias.zero_()
        weight = torch.zeros(p * p * c, c, p, p)
        for i in range(p):
            for j in range(p):
                for ch in range(c):
                    weight[(i * p + j) * c + ch, ch, i, j] = 1.0  # token layout (p_row, p_col, channel)
        embed.proj.weight.copy_(weight)
    x = torch.randn(2, c, 6, 4)
    tokens = embed(x)
    assert tokens.shape == (2, 3 * 2, p * p * c)
    torch.testing.assert_close(unpatchify(tokens, p, c, (3, 2)), x)


def test_condition_vector():
    t, y = torch.ones(1, 2), torch.tensor([[1.0, 2.0]])
    y2 = torch.tensor([[[0.0, 2.0], [2.0, 4.0]]])
    torch.testing.assert_close(condition_vector(t, y, y2), torch.tensor([[2.0, 3.0, 2.0, 4.0]]))


class _Record(nn.Module):
    def __init__(self, index, log):
        super().__init__()
        self.index, self.log = index, log

    def forward(self, x):
        self.log.append((self.index, x.item()))
        return x * 0 + 10 ** self.index  # output of block i is 10^i


def test_long_skips_follow_released_wiring():
    log = []
    blocks = [_Record(i, log) for i in range(5)]
    out = run_with_long_skips(blocks, torch.tensor(0.5), lambda block, x: block(x))
    # depth 5: blocks 3 and 4 (i > 2.5) add out[5-i-1] = out[1], out[0].
    assert log == [(0, 0.5), (1, 1.0), (2, 10.0), (3, 100.0 + 10.0), (4, 1000.0 + 1.0)]
    assert out.item() == 10_000
