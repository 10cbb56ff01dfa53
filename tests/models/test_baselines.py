"""Comparison backbones: released parameter counts, forward shapes, scan orders, released tensors."""

import json

import pytest
import torch
from released_baselines import assert_matches_float64_reference, forward_in_float64, load_released_baseline

from diffma_cli.errors import InputError
from diffma_cli.models import baseline_orders as orders
from diffma_cli.models import create_model, model_names
from diffma_cli.models.baselines import BASELINE_FACTORIES

#: Parameter counts of the released code (`model.py`, counted by instantiating its classes on the meta
#: device, pos_embed included); DiT-B/2 and the *-BL/2 values are also in docs/reference.md §3.6. The four
#: Mamba baselines have identical blocks (one mixer), so identical counts.
_MAMBA_COUNTS = {
    "S/2": 14_649_888, "S/4": 14_648_448, "S/7": 14_834_568,
    "B/2": 27_730_464, "B/4": 27_729_024, "B/7": 27_915_144,
    "L/2": 53_891_616, "L/4": 53_890_176, "L/7": 54_076_296,
    "XL/2": 93_133_344, "XL/4": 93_131_904, "XL/7": 93_318_024,
    "BL/2": 44_081_184,
}
RELEASED_COUNTS = {
    "DiT-S/2": 26_765_856, "DiT-S/4": 26_764_416, "DiT-S/7": 26_950_536,
    "DiT-B/2": 51_962_400, "DiT-B/4": 51_960_960, "DiT-B/7": 52_147_080,
    "DiT-L/2": 102_355_488, "DiT-L/4": 102_354_048, "DiT-L/7": 102_540_168,
    "DiT-XL/2": 177_945_120, "DiT-XL/4": 177_943_680, "DiT-XL/7": 178_129_800,
    "DiT-SB/2": 45_663_264,
    **{f"{family}-{size}": count for family in ("ZigMa", "ViM", "VMamba", "EMamba")
       for size, count in _MAMBA_COUNTS.items() if not (family == "EMamba" and size.endswith("/4"))},
}
#: docs/reference.md §3.6 (millions, 3 decimals).
REFERENCE_MILLIONS = {"DiT-B/2": 51.962, "ZigMa-BL/2": 44.081, "ViM-BL/2": 44.081, "VMamba-BL/2": 44.081}


def _count_on_meta(name: str) -> int:
    with torch.device("meta"):
        model = BASELINE_FACTORIES[name]()
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(RELEASED_COUNTS))
def test_parameter_count_equals_released(name):
    assert _count_on_meta(name) == RELEASED_COUNTS[name]


def test_counts_agree_with_the_reference_table():
    for name, millions in REFERENCE_MILLIONS.items():
        assert round(RELEASED_COUNTS[name] / 1e6, 3) == millions


def test_every_released_baseline_is_registered_in_create_model():
    assert set(RELEASED_COUNTS) == set(BASELINE_FACTORIES)
    assert set(BASELINE_FACTORIES) <= set(model_names())


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


@pytest.mark.parametrize(
    "name, overrides",
    [("DiT-S/2", {}), ("ZigMa-S/4", {"scan": "path"}), ("ViM-B/7", {}), ("VMamba-XL/2", {"scan": "path"}),
     ("EMamba-BL/2", {"d_state": 4})],
)
def test_forward_shape_and_config_round_trip(name, overrides):
    tiny = {"input_size": {"2": 8, "4": 16, "7": 14}[name[-1]], "hidden_size": 16, "depth": 3, **overrides}
    model = create_model(name, **tiny)
    config = model.config
    assert json.loads(json.dumps(config)) == config
    assert config["name"] == name and all(config[k] == v for k, v in tiny.items())
    grid = tiny["input_size"] // int(name.split("/")[1])
    out = model(*_inputs(2, tiny["input_size"], grid * grid, 16))
    assert out.shape == (2, 8, tiny["input_size"], tiny["input_size"])
    rebuilt = create_model(**config)
    assert rebuilt.config == config
    rebuilt.load_state_dict(model.state_dict())


def test_scan_path_changes_only_the_orders():
    released = create_model("ZigMa-S/2", input_size=12, hidden_size=16, depth=3)
    path = create_model("ZigMa-S/2", input_size=12, hidden_size=16, depth=3, scan="path")
    path.load_state_dict(released.state_dict())
    # block 2 uses the column snake (scheme 2): its released gather is not the path
    assert not torch.equal(released.blocks[2].mamba.orders, path.blocks[2].mamba.orders)
    assert torch.equal(path.blocks[2].mamba.orders[0], orders.zigzag_path(6, 2))


def _changed_tokens(mixer, x, token):
    """Token indices whose mixer output moves when input token `token` is perturbed."""
    with torch.no_grad():
        before = mixer(x)
        bumped = x.clone()
        bumped[:, token] += 1.0
        moved = (mixer(bumped) - before).abs().amax(dim=(0, 2)) > 1e-6
    return set(torch.nonzero(moved).flatten().tolist())


@pytest.mark.parametrize("scan", ["released", "path"])
def test_zigma_mixer_is_causal_along_its_order(scan):
    model = create_model("ZigMa-S/2", input_size=12, hidden_size=16, depth=3, scan=scan)
    mixer = model.blocks[2].mamba  # scheme 2, where the released gather and the path differ
    order = mixer.orders[0]
    x = torch.randn(1, 36, 16, generator=torch.Generator().manual_seed(1))
    step = 20
    changed = _changed_tokens(mixer, x, int(order[step]))
    # only the perturbed token and the ones read after it (the influence decays along the scan)
    assert changed <= set(order[step:].tolist())
    assert set(order[step:step + 3].tolist()) <= changed


def test_emamba_mixer_mixes_only_within_a_sub_grid():
    model = create_model("EMamba-S/2", input_size=12, hidden_size=16, depth=1)
    x = torch.randn(1, 36, 16, generator=torch.Generator().manual_seed(2))
    n = 6
    for token in (0, 7, 13, 35):
        changed = _changed_tokens(model.blocks[0].mamba, x, token)
        parity = (token // n % 2, token % n % 2)
        assert token in changed
        assert all((t // n % 2, t % n % 2) == parity for t in changed)


def test_vim_path_mixer_commutes_with_reversing_the_tokens():
    # (F(x) + R F(R x)) / 2 with R the token reversal: mixing reversed tokens = reversing the mixed tokens
    model = create_model("ViM-S/2", input_size=8, hidden_size=16, depth=1, scan="path")
    mixer = model.blocks[0].mamba
    x = torch.randn(2, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(mixer(x.flip(1)), mixer(x).flip(1))


def test_emamba_refuses_odd_token_grid():
    with pytest.raises(InputError, match="even token grid"):
        create_model("EMamba-S/2", input_size=14)


@pytest.mark.parametrize("name", ["DiT-S/2", "ViM-S/2"])
def test_bad_sizes_are_refused(name):
    with pytest.raises(InputError, match="at least 1"):
        create_model(name, depth=0, hidden_size=16)
    with pytest.raises(InputError, match="multiple of 4"):
        create_model(name, depth=1, hidden_size=30)
    with pytest.raises(InputError, match="multiple"):
        create_model(name, patch_size=3)


def test_dit_width_must_split_into_heads():
    with pytest.raises(InputError, match="num_heads"):
        create_model("DiT-S/2", hidden_size=20)


def test_unknown_scan_is_refused():
    with pytest.raises(InputError, match="unknown scan"):
        create_model("VMamba-S/2", scan="spiral")


def test_unknown_override_is_refused_with_valid_keys():
    with pytest.raises(InputError, match="valid overrides"):
        BASELINE_FACTORIES["DiT-B/2"](heads=4)


#: reference file -> a registered name of that family (size and patch come from the file's config).
REFERENCE_NAMES = {"dit": "DiT-B/2", "zigma": "ZigMa-BL/2", "vim": "ViM-S/4", "vmamba": "VMamba-B/2",
                   "emamba": "EMamba-BL/2"}


@pytest.mark.parametrize("family", sorted(REFERENCE_NAMES))
def test_matches_released_code(family):
    config, state, inputs, expected = load_released_baseline(family)
    overrides = {k: config[k] for k in ("input_size", "patch_size", "hidden_size", "depth")}
    model = create_model(REFERENCE_NAMES[family], **overrides).eval()
    # strict: every released key, with its shape, and nothing else
    model.load_state_dict(state, strict=True)
    assert_matches_float64_reference(forward_in_float64(model, inputs), expected)



# --- CUDA (run on the GPU machine: `pytest -m gpu tests/models/test_baselines.py`) ------------------


@pytest.fixture
def exact_cuda_float32():
    """No TF32 in matrix products or convolutions, so float32 on the GPU is comparable to the CPU."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["torch", "mamba_ssm"])
@pytest.mark.parametrize("family", sorted(REFERENCE_NAMES))
def test_matches_released_code_on_cuda(family, backend, exact_cuda_float32):
    from diffma_cli.models.ops.selective_scan import mamba_ssm_scan_fn, scan_backend

    if backend == "mamba_ssm" and mamba_ssm_scan_fn() is None:
        pytest.skip("mamba-ssm is not importable here")
    config, state, inputs, expected = load_released_baseline(family)
    overrides = {k: config[k] for k in ("input_size", "patch_size", "hidden_size", "depth")}
    model = create_model(REFERENCE_NAMES[family], **overrides).eval()
    model.load_state_dict(state, strict=True)
    model.cuda()
    with torch.no_grad(), scan_backend(backend):
        out = model(*[tensor.cuda() for tensor in inputs]).cpu()
    torch.testing.assert_close(out, expected.float(), rtol=1e-4, atol=1e-4 * expected.abs().max().item())


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["DiT-S/2", "ZigMa-S/2", "ViM-S/2", "VMamba-S/2", "EMamba-S/2"])
def test_bf16_autocast_training_step_on_cuda(name):
    model = create_model(name, input_size=16, hidden_size=64, depth=3).cuda()
    with torch.no_grad():  # no zero-initialised layer left, so gradients reach every parameter
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.normal_(std=0.05)
    inputs = [tensor.cuda() for tensor in _inputs(2, 16, 64, 64)]
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(*inputs).float().square().mean()
    loss.backward()
    assert torch.isfinite(loss)
    for key, parameter in model.named_parameters():
        if parameter.requires_grad:
            assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), key
