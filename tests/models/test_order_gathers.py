"""Reading tokens in K orders and merging them back: values against plain indexing, gradients by gradcheck.

The mixer back-propagates each of the two gathers with the other (they are adjoints); gradcheck compares
that with finite differences, for full permutations (DiffMa) and for partitions that skip tokens (EMamba).
"""

import pytest
import torch

from diffma_cli.models.mamba import MultiOrderMamba, merge_orders, read_orders


def _orders(kind: str) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    if kind == "permutations":
        return torch.stack([torch.randperm(6, generator=generator) for _ in range(3)])
    return torch.randperm(6, generator=generator).view(3, 2)  # three orders of two tokens each


@pytest.mark.parametrize("kind", ["permutations", "partition"])
def test_read_and_merge_match_indexing_and_gradcheck(kind):
    orders = _orders(kind)
    mixer = MultiOrderMamba(4, orders)
    restore, skips = mixer.restore, mixer.skips_tokens
    assert skips == (kind == "partition")
    x = torch.randn(2, 6, 5, dtype=torch.float64, requires_grad=True)
    read = read_orders(x, orders, restore, skips)
    for k in range(orders.shape[0]):
        torch.testing.assert_close(read[:, k], x[:, orders[k]])
    y = torch.randn(2, *orders.shape, 5, dtype=torch.float64, requires_grad=True)
    expected = torch.zeros(2, 6, 5, dtype=torch.float64)
    for k in range(orders.shape[0]):
        expected[:, orders[k]] += y[:, k].detach()
    torch.testing.assert_close(merge_orders(y, orders, restore, skips), expected)
    assert torch.autograd.gradcheck(lambda t: read_orders(t, orders, restore, skips), (x,))
    assert torch.autograd.gradcheck(lambda t: merge_orders(t, orders, restore, skips), (y,))
