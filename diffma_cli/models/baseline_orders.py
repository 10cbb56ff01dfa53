"""Token orders of the Mamba baselines: zigzag (ZigMa), bidirectional (ViM), cross scan (VMamba), atrous
(EfficientVMamba).

Tokens of an n×n grid are numbered in raster order, t = row·n + col. Every function returns orders as a
LongTensor of shape (K, L'): K sequences, each reading the tokens listed in its row, in that order
("gather" indices: sequence[k][j] = tokens[orders[k, j]]). Together the rows list every token exactly
K·L'/n² times; a mixer scans each row separately and scatters its outputs back to the token positions.

Two kinds of orders:
- A *path* lists the tokens in the order the method's paper walks them (sequence[v] = token visited at
  step v), so consecutive tokens of a zigzag are grid neighbours.
- The *released* order is what the released DiffMa code actually gathers with: for ZigMa and VMamba it
  builds, for every cell in raster order, the cell's visit number, and gathers with that list. That is the
  inverse permutation of the path. It coincides with the path only where the path is its own inverse
  (e.g. the row snakes starting in the top row); the column snakes are then no longer continuous.
  Released checkpoints need the released order; `scan="path"` gives the paper's path.

Orders are built on the CPU even inside a `torch.device("meta")` context (index data, not parameters).
"""

from __future__ import annotations

import torch

from diffma_cli.models.scan_orders import inverse_permutation

_CPU = torch.device("cpu")

#: The eight zigzag (boustrophedon) schemes of the released ZigMa reproduction (`tools.zig1`…`zig8`),
#: as (snake along columns?, mirror top-bottom?, mirror left-right?) applied to the row snake that starts
#: at the top-left cell going right. Scheme 1 starts top-left along rows, 2 top-left down the columns,
#: 3 top-right along rows, 4 top-right down the columns, 5 bottom-left along rows, 6 bottom-left up the
#: columns, 7 bottom-right along rows, 8 bottom-right up the columns.
ZIGZAG_SCHEMES: dict[int, tuple[bool, bool, bool]] = {
    1: (False, False, False),
    2: (True, False, False),
    3: (False, False, True),
    4: (True, False, True),
    5: (False, True, False),
    6: (True, True, False),
    7: (False, True, True),
    8: (True, True, True),
}

#: The zigzag schemes of VMamba's four-way cross scan in the released code (`tools.vmamba_`): row and
#: column snakes from the top-left corner and from the bottom-right corner.
CROSS_SCAN_SCHEMES = (1, 2, 7, 8)


def zigzag_visit_numbers(n: int, scheme: int) -> torch.Tensor:
    """(n, n) grid holding, for each cell, its step (0…n²−1) along zigzag `scheme` (1…8)."""
    along_columns, mirror_rows, mirror_cols = ZIGZAG_SCHEMES[scheme]
    steps = torch.arange(n * n, device=_CPU).reshape(n, n)
    steps[1::2] = steps[1::2].flip(1)  # row snake: every second row runs right to left
    if along_columns:
        steps = steps.T  # cell (i, j) of the column snake is cell (j, i) of the row snake
    if mirror_rows:
        steps = steps.flip(0)
    if mirror_cols:
        steps = steps.flip(1)
    return steps.contiguous()


def zigzag_path(n: int, scheme: int) -> torch.Tensor:
    """(n²,) raster indices of the cells in the order zigzag `scheme` visits them."""
    return inverse_permutation(zigzag_visit_numbers(n, scheme).flatten())


def zigzag_scheme_of_block(index: int) -> int:
    """Released ZigMa: block i uses `zig(n, i)`, i.e. scheme i mod 8, where 0 means scheme 8."""
    return (index - 1) % 8 + 1


def zigzag_orders(n: int, block_index: int, released: bool) -> torch.Tensor:
    """ZigMa orders (1, n²) of block `block_index`: one zigzag, its scheme cycling over the blocks."""
    path = zigzag_path(n, zigzag_scheme_of_block(block_index))
    return (inverse_permutation(path) if released else path).unsqueeze(0)


def cross_scan_orders(n: int, released: bool) -> torch.Tensor:
    """VMamba four-way cross scan (4, n²): row and column snakes from two opposite corners."""
    paths = [zigzag_path(n, scheme) for scheme in CROSS_SCAN_SCHEMES]
    if released:
        paths = [inverse_permutation(path) for path in paths]
    return torch.stack(paths)


def bidirectional_orders(n: int) -> torch.Tensor:
    """ViM (2, n²): raster order forward and backward (path and released order coincide)."""
    forward = torch.arange(n * n, device=_CPU)
    return torch.stack([forward, forward.flip(0)])


def atrous_orders(n: int) -> torch.Tensor:
    """EfficientVMamba atrous scan (4, n²/4): the four stride-2 sub-grids, each scanned on its own.

    As released: (even rows, even cols) row by row; (odd rows, even cols) column by column;
    (even rows, odd cols) row by row; (odd rows, odd cols) column by column. Needs an even n (the released
    code fails for odd grids, e.g. patch 4 on a 28×28 latent).
    """
    if n % 2:
        raise ValueError(f"the atrous scan needs an even token grid, got {n}×{n}")
    cells = torch.arange(n * n, device=_CPU).reshape(n, n)
    sub_grids = [
        cells[0::2, 0::2],
        cells[1::2, 0::2].T,  # transposed: read column by column
        cells[0::2, 1::2],
        cells[1::2, 1::2].T,
    ]
    return torch.stack([grid.flatten() for grid in sub_grids])
