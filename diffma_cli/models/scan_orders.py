"""DiffMa's spiral scan orders: the released lists and the true spiral path.

Tokens of an n×n grid are numbered in raster order, t = row·n + col (n = latent side / patch size:
14, 7 or 4 for 224² images). An *order* is a LongTensor of gather indices: sequence[j] = tokens[order[j]].
A DiffMa mixer reads its tokens in three orders (raster, a forward and a reverse spiral) and puts every
result back in raster order with the inverse permutation.

The spiral walk (released `tools.spiral`): start at cell (n//2, n//2) with run length 1; do two legs, each
`run` steps long — on every step, if the cell is inside the grid it gets the next visit number 1, 2, 3 …,
then move — turning to the scheme's next direction after each leg; after two legs the run grows by one;
stop when all n² cells are numbered. Eight schemes differ in their four directions (below).

Two modes (`scan=`):
- ``"released"``: the released code builds, for each cell in raster order, visit − 1 (list F) and
  n² − visit (list R), and GATHERS with them. That reads the tokens in the inverse permutation of the
  spiral: only about half of the consecutive tokens are grid neighbours. Released checkpoints were trained
  this way, so loading them needs it.
- ``"spiral"``: the path the paper describes, sequence[v] = the token visited at step v (inverse of F),
  and the same path backwards; 99-100 % of consecutive tokens are grid neighbours.
Block i uses scheme i mod 8 in both modes.
"""

from __future__ import annotations

import torch

#: The eight spiral schemes of the released code: each a cycle of four (row step, col step) directions.
SPIRAL_SCHEMES: tuple[tuple[tuple[int, int], ...], ...] = (
    ((0, 1), (1, 0), (0, -1), (-1, 0)),
    ((1, 0), (0, -1), (-1, 0), (0, 1)),
    ((0, -1), (-1, 0), (0, 1), (1, 0)),
    ((-1, 0), (0, 1), (1, 0), (0, -1)),
    ((0, 1), (-1, 0), (0, -1), (1, 0)),
    ((0, -1), (1, 0), (0, 1), (-1, 0)),
    ((1, 0), (0, 1), (-1, 0), (0, -1)),
    ((-1, 0), (0, -1), (1, 0), (0, 1)),
)
SCAN_MODES = ("released", "spiral")


def spiral_visit_numbers(n: int, scheme: int) -> torch.Tensor:
    """Visit number (1 … n²) of every cell of an n×n grid along spiral `scheme`, LongTensor (n, n)."""
    directions = SPIRAL_SCHEMES[scheme]
    visits = torch.zeros(n, n, dtype=torch.long, device="cpu")  # index data: CPU even under a meta context
    row = col = n // 2
    heading, run, visit = 0, 1, 1
    while visit <= n * n:
        for _ in range(2):  # two legs of the same length, then the run grows
            for _ in range(run):
                if 0 <= row < n and 0 <= col < n:
                    visits[row, col] = visit
                    visit += 1
                row, col = row + directions[heading][0], col + directions[heading][1]
            heading = (heading + 1) % 4
        run += 1
    return visits


def released_spiral_lists(n: int, scheme: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The released lists F (visit − 1) and R (n² − visit) of every cell in raster order, each (n²,)."""
    visits = spiral_visit_numbers(n, scheme).flatten()
    return visits - 1, n * n - visits


def inverse_permutation(order: torch.Tensor) -> torch.Tensor:
    """inverse[order[j]] = j: gathering with `inverse` puts a sequence read in `order` back in raster."""
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), dtype=order.dtype, device=order.device)
    return inverse


def spiral_path(n: int, scheme: int) -> torch.Tensor:
    """The true spiral: path[v] = raster index of the cell visited at step v (v = 0 … n²−1)."""
    forward, _ = released_spiral_lists(n, scheme)
    return inverse_permutation(forward)


def spiral_scheme_of_block(block_index: int) -> int:
    """Block i uses scheme i mod 8 (released: lists 2i mod 16 and 2i mod 16 + 1)."""
    return block_index % len(SPIRAL_SCHEMES)


def diffma_block_orders(n: int, block_index: int, scan: str = "released") -> torch.Tensor:
    """The three gather orders of DiffMa block `block_index`: raster, forward, reverse; LongTensor (3, n²)."""
    if scan not in SCAN_MODES:
        raise ValueError(f"unknown scan mode {scan!r}; choose one of {', '.join(SCAN_MODES)}")
    scheme = spiral_scheme_of_block(block_index)
    raster = torch.arange(n * n, device="cpu")
    if scan == "released":
        forward, reverse = released_spiral_lists(n, scheme)
    else:
        forward = spiral_path(n, scheme)
        reverse = forward.flip(0)
    return torch.stack([raster, forward, reverse])


def neighbour_fraction(order: torch.Tensor, n: int) -> float:
    """Fraction of consecutive tokens of a sequence read in `order` that are 4-neighbours on the grid."""
    rows, cols = order // n, order % n
    steps = rows.diff().abs() + cols.diff().abs()
    return (steps == 1).double().mean().item()
