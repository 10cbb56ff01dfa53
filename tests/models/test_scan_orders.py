"""DiffMa spiral orders: against the released code's lists, a hand-walked spiral, path properties."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffma_cli.models import scan_orders as so

RELEASED = load_file(Path(__file__).parents[1] / "data" / "released" / "scan_orders.safetensors")


def test_hand_walked_spiral_scheme_0():
    # start at the centre, then right, down, left, left, up, up, right, right
    assert so.spiral_visit_numbers(3, 0).tolist() == [[7, 8, 9], [6, 1, 2], [5, 4, 3]]


@pytest.mark.parametrize("n", [14, 7, 4])
def test_released_lists_equal_the_released_code(n):
    lists = RELEASED[f"spiral{n}.lists"].long()  # tools.spiral(n)[0]: 16 lists, F and R per scheme
    inverses = RELEASED[f"spiral{n}.inverse"].long()  # tools.spiral(n)[1]
    for scheme in range(8):
        forward, reverse = so.released_spiral_lists(n, scheme)
        assert torch.equal(forward, lists[2 * scheme])
        assert torch.equal(reverse, lists[2 * scheme + 1])
        assert torch.equal(so.inverse_permutation(forward), inverses[2 * scheme])
        assert torch.equal(so.inverse_permutation(reverse), inverses[2 * scheme + 1])
    for block in range(10):  # released block i: lists 2i mod 16 and 2i mod 16 + 1
        orders = so.diffma_block_orders(n, block, "released")
        assert torch.equal(orders[1], lists[(2 * block) % 16])
        assert torch.equal(orders[2], lists[(2 * block) % 16 + 1])


@pytest.mark.parametrize("scan", so.SCAN_MODES)
@pytest.mark.parametrize("n", [4, 7, 14])
def test_every_order_is_a_permutation_whose_inverse_restores_raster(scan, n):
    tokens = torch.arange(n * n) * 10
    for block in range(8):
        orders = so.diffma_block_orders(n, block, scan)
        assert torch.equal(orders[0], torch.arange(n * n))
        for order in orders:
            assert sorted(order.tolist()) == list(range(n * n))
            assert torch.equal(tokens[order][so.inverse_permutation(order)], tokens)


@pytest.mark.parametrize("n", [14, 7])
def test_spiral_mode_is_continuous_and_released_mode_is_not(n):
    for block in range(8):
        spiral = so.diffma_block_orders(n, block, "spiral")
        released = so.diffma_block_orders(n, block, "released")
        for order in spiral[1:]:
            assert so.neighbour_fraction(order, n) >= 0.99
        # the quirk: gathering with the visit-number lists scans the inverse permutation (about half)
        for order in released[1:]:
            assert so.neighbour_fraction(order, n) < 0.6


def test_spiral_path_starts_at_the_centre_along_the_first_direction():
    n = 7
    for scheme, directions in enumerate(so.SPIRAL_SCHEMES):
        path = so.spiral_path(n, scheme)
        (r0, c0), (r1, c1) = divmod(int(path[0]), n), divmod(int(path[1]), n)
        assert (r0, c0) == (n // 2, n // 2)
        assert (r1 - r0, c1 - c0) == directions[0]
        reverse = so.diffma_block_orders(n, scheme, "spiral")[2]
        assert torch.equal(reverse, path.flip(0))


def test_unknown_scan_mode_is_refused():
    with pytest.raises(ValueError, match="released"):
        so.diffma_block_orders(7, 0, "zigzag")
