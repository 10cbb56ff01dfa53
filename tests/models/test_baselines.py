"""Comparison backbones: released parameter counts, forward shapes, scan orders, released tensors."""

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from diffma_cli.errors import InputError
from diffma_cli.models import baseline_orders as orders
from diffma_cli.models.baselines import BASELINE_FACTORIES

RELEASED = Path(__file__).parents[1] / "data" / "released"

#: Parameter counts of the released code (`model.py`, counted by instantiating its classes, pos_embed
#: included); the DiT-B/2 and *-BL/2 values are also in REFERENCE.md §1.
RELEASED_COUNTS = {
    "DiT-S/2": 26_765_856, "DiT-S/4": 26_764_416, "DiT-S/7": 26_950_536,
    "DiT-B/2": 51_962_400, "DiT-B/4": 51_960_960, "DiT-B/7": 52_147_080,
    "DiT-L/2": 102_355_488, "DiT-L/4": 102_354_048, "DiT-L/7": 102_540_168,
    "DiT-XL/2": 177_945_120, "DiT-XL/4": 177_943_680, "DiT-XL/7": 178_129_800,
    "DiT-SB/2": 45_663_264,
}


def _count_on_meta(name: str) -> int:
    with torch.device("meta"):
        model = BASELINE_FACTORIES[name]()
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(RELEASED_COUNTS))
def test_parameter_count_equals_released(name):
    assert _count_on_meta(name) == RELEASED_COUNTS[name]


def test_every_released_name_is_registered():
    assert set(RELEASED_COUNTS) <= set(BASELINE_FACTORIES)


# --- scan orders -----------------------------------------------------------------------------------


def _is_permutation(order: torch.Tensor, length: int) -> bool:
    return sorted(order.tolist()) == list(range(length))


def _neighbour_fraction(path: torch.Tensor, n: int) -> float:
    rows, cols = path // n, path % n
    steps = (rows.diff().abs() + cols.diff().abs())
    return (steps == 1).float().mean().item()


@pytest.mark.parametrize("n", [4, 7, 14])
@pytest.mark.parametrize("scheme", range(1, 9))
def test_zigzag_path_is_a_continuous_snake(n, scheme):
    path = orders.zigzag_path(n, scheme)
    assert _is_permutation(path, n * n)
    assert _neighbour_fraction(path, n) == 1.0
    # A snake: n straight runs of n cells, all along rows or all along columns.
    rows, cols = path.view(n, n) // n, path.view(n, n) % n
    along_rows = bool((rows == rows[:, :1]).all())
    along_cols = bool((cols == cols[:, :1]).all())
    assert along_rows != along_cols
    assert along_cols == orders.ZIGZAG_SCHEMES[scheme][0]


def test_zigzag_schemes_start_in_their_corners():
    n = 5
    first_two = {s: [divmod(int(c), n) for c in orders.zigzag_path(n, s)[:2]] for s in range(1, 9)}
    assert first_two == {
        1: [(0, 0), (0, 1)], 2: [(0, 0), (1, 0)], 3: [(0, 4), (0, 3)], 4: [(0, 4), (1, 4)],
        5: [(4, 0), (4, 1)], 6: [(4, 0), (3, 0)], 7: [(4, 4), (4, 3)], 8: [(4, 4), (3, 4)],
    }


def test_released_zigzag_order_is_the_inverse_of_the_path():
    # Hand-checked 3×3 case of the released list for scheme 2 (column snake): the visit number of each
    # cell in raster order, i.e. tools.zig(3, 2)[0].
    assert orders.zigzag_orders(3, 2, released=True)[0].tolist() == [0, 5, 6, 1, 4, 7, 2, 3, 8]
    assert orders.zigzag_orders(3, 2, released=False)[0].tolist() == [0, 3, 6, 7, 4, 1, 2, 5, 8]
    for n in (6, 7):
        for block in range(8):
            path = orders.zigzag_orders(n, block, released=False)[0]
            gather = orders.zigzag_orders(n, block, released=True)[0]
            assert torch.equal(path[gather], torch.arange(n * n))


def test_zigzag_scheme_cycles_with_block_index():
    assert [orders.zigzag_scheme_of_block(i) for i in range(10)] == [8, 1, 2, 3, 4, 5, 6, 7, 8, 1]


@pytest.mark.parametrize("n", [7, 14])
def test_cross_scan_covers_four_directions(n):
    paths = orders.cross_scan_orders(n, released=False)
    assert paths.shape == (4, n * n)
    starts = []
    for path in paths:
        assert _is_permutation(path, n * n)
        assert _neighbour_fraction(path, n) == 1.0
        (r0, c0), (r1, c1) = divmod(int(path[0]), n), divmod(int(path[1]), n)
        starts.append(((r0, c0), (r1 - r0, c1 - c0)))
    # Row and column snakes from the top-left and from the bottom-right corner.
    last = n - 1
    assert starts == [((0, 0), (0, 1)), ((0, 0), (1, 0)), ((last, last), (0, -1)), ((last, last), (-1, 0))]
    released = orders.cross_scan_orders(n, released=True)
    for path, gather in zip(paths, released, strict=True):
        assert torch.equal(gather, orders.inverse_permutation(path))


def test_bidirectional_is_raster_forward_and_backward():
    both = orders.bidirectional_orders(3)
    assert both.tolist() == [list(range(9)), list(range(8, -1, -1))]


@pytest.mark.parametrize("n", [4, 6, 14])
def test_atrous_sub_grids_cover_every_token_once(n):
    parts = orders.atrous_orders(n)
    assert parts.shape == (4, n * n // 4)
    assert _is_permutation(parts.flatten(), n * n)
    for part, (row_parity, col_parity, column_major) in zip(
        parts, [(0, 0, False), (1, 0, True), (0, 1, False), (1, 1, True)], strict=True
    ):
        rows, cols = part // n, part % n
        parity = {(int(r) % 2, int(c) % 2) for r, c in zip(rows, cols, strict=True)}
        assert parity == {(row_parity, col_parity)}
        # Consecutive tokens are two cells apart (dilated neighbours) inside a row or a column run.
        major, minor = (cols, rows) if column_major else (rows, cols)
        runs = minor.view(n // 2, n // 2)
        assert bool((runs.diff(dim=1) == 2).all())
        assert bool((major.view(n // 2, n // 2).diff(dim=0) == 2).all())


def test_atrous_refuses_odd_grid():
    with pytest.raises(ValueError, match="even"):
        orders.atrous_orders(7)


# --- models ----------------------------------------------------------------------------------------


def _inputs(n: int, size: int, tokens: int, width: int):
    gen = torch.Generator().manual_seed(0)
    return (torch.randn(n, 4, size, size, generator=gen), torch.tensor([1.0, 500.0])[:n],
            torch.randn(n, width, generator=gen), torch.randn(n, tokens, width, generator=gen),
            torch.rand(n, tokens, 1, generator=gen))


@pytest.mark.parametrize("name", ["DiT-S/2"])
def test_forward_shape_and_config_round_trip(name):
    factories = BASELINE_FACTORIES
    small = dict(input_size=8, hidden_size=16, depth=3)
    model = factories[name](**small)
    assert json.loads(json.dumps(model.config)) == model.config
    assert model.config["name"] == name and model.config["depth"] == 3
    out = model(*_inputs(2, 8, 16, 16))
    assert out.shape == (2, 8, 8, 8)
    rebuilt = factories[model.config["name"]](**{k: v for k, v in model.config.items() if k != "name"})
    assert rebuilt.config == model.config


def test_unknown_override_is_refused_with_valid_keys():
    with pytest.raises(InputError, match="valid overrides"):
        BASELINE_FACTORIES["DiT-B/2"](heads=4)


def _load_reference(family: str):
    path = RELEASED / f"baselines_{family}.safetensors"
    with safe_open(str(path), "pt") as f:
        config = json.loads(f.metadata()["config"])
    tensors = load_file(str(path))
    state = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    inputs = [tensors[f"input.{k}"] for k in ("x", "t", "y", "y2", "w")]
    return config, state, inputs, tensors["output"]


#: reference file -> a registered name of that family (size and patch come from the file's config).
REFERENCE_NAMES = {"dit": "DiT-B/2"}


@pytest.mark.parametrize("family", sorted(REFERENCE_NAMES))
def test_matches_released_code(family):
    config, state, inputs, expected = _load_reference(family)
    overrides = {k: config[k] for k in ("input_size", "patch_size", "hidden_size", "depth")}
    model = BASELINE_FACTORIES[REFERENCE_NAMES[family]](**overrides).eval()
    # strict: every released key, with its shape, and nothing else
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        out = model(*inputs)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())
