"""DiffMa backbone and its Mamba mixer against tensors from the released code, plus properties of ours."""

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from diffma_cli.models import create_model
from diffma_cli.models.mamba import MultiOrderMamba
from diffma_cli.models.ops.selective_scan import scan_backend
from diffma_cli.models.scan_orders import inverse_permutation

RELEASED = Path(__file__).parents[1] / "data" / "released"
REL_TOL = 1e-5  # acceptance: relative error in float32 on CPU


def load_reference(case: str):
    with safe_open(RELEASED / f"diffma_{case}.safetensors", "pt") as f:
        tensors = {key: f.get_tensor(key) for key in f.keys()}
        config = json.loads(f.metadata()["config"])
    state = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    inputs = {k.removeprefix("input."): v for k, v in tensors.items() if k.startswith("input.")}
    return config, state, inputs, tensors["output"]


def our_model(config: dict, **extra):
    keys = ("input_size", "patch_size", "hidden_size", "depth")
    return create_model(f"DiffMa-S/{config['patch_size']}", **{k: config[k] for k in keys}, **extra)


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out - ref).norm() / ref.norm()).item()


@pytest.mark.parametrize("case", ["p2", "p4", "p7"])
def test_released_forward_is_reproduced(case):
    config, state, inputs, expected = load_reference(case)
    model = our_model(config, scan="released").eval()
    # our fixed sin-cos table equals the released one before anything is loaded
    torch.testing.assert_close(model.pos_embed, state["pos_embed"], rtol=0, atol=1e-6)
    model.load_state_dict(state, strict=True)  # identical names and shapes
    with torch.no_grad():
        out = model(**inputs)
    assert out.shape == expected.shape
    assert relative_error(out, expected) <= REL_TOL


def test_released_forward_with_the_reference_scan_backend():
    config, state, inputs, expected = load_reference("p7")
    model = our_model(config).eval()
    model.load_state_dict(state)
    with torch.no_grad(), scan_backend("reference"):
        out = model(**inputs)
    assert relative_error(out, expected) <= REL_TOL


def test_spiral_mode_has_released_state_dict_but_other_orders():
    config, state, inputs, expected = load_reference("p4")
    model = our_model(config, scan="spiral").eval()
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        out = model(**inputs)
    assert relative_error(out, expected) > 1e-3  # a different scan path gives a different function


def test_soft_mask_off_equals_a_mask_of_ones():
    config, state, inputs, _ = load_reference("p7")
    plain = our_model(config, soft_mask=False).eval()
    masked = our_model(config).eval()
    plain.load_state_dict(state)
    masked.load_state_dict(state)
    with torch.no_grad():
        ignored = plain(**inputs)
        ones = masked(**{**inputs, "w": torch.ones_like(inputs["w"])})
        used = masked(**inputs)
    torch.testing.assert_close(ignored, ones)
    assert not torch.allclose(ignored, used)


def test_gradients_reach_every_trainable_parameter():
    model = create_model("DiffMa-S/7", hidden_size=16, depth=3)
    with torch.no_grad():  # leave the zero init (zero gates would block gradients to the blocks)
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.1 * torch.randn_like(param))
    x = torch.randn(2, 4, 28, 28)
    out = model(x, torch.tensor([1.0, 2.0]), torch.randn(2, 16), torch.randn(2, 16, 16), torch.rand(2, 16, 1))
    (out * torch.randn_like(out)).sum().backward()
    dead = [name for name, p in model.named_parameters() if p.requires_grad and not p.grad.abs().sum() > 0]
    assert dead == []
    assert not model.pos_embed.requires_grad and model.pos_embed.grad is None


def test_index_buffers_stay_out_of_the_state_dict_and_move_with_the_model():
    model = create_model("DiffMa-S/7", hidden_size=16, depth=2)
    assert not [key for key in model.state_dict() if "orders" in key or "restore" in key]
    mixer = model.blocks[1].mamba1
    assert mixer.orders.shape == (3, 16)
    model.to(torch.float64)
    assert mixer.orders.dtype == torch.long  # index buffers keep their dtype


# --- the mixer alone ------------------------------------------------------------------------------


def _mixer_pair(orders_a, orders_b, width=8, **kwargs):
    torch.manual_seed(0)
    a = MultiOrderMamba(width, orders_a, **kwargs)
    b = MultiOrderMamba(width, orders_b, **kwargs)
    b.load_state_dict(a.state_dict())
    return a, b


def test_mixer_reading_a_permutation_equals_permuting_the_tokens():
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(1))
    permuted, raster = _mixer_pair([perm.tolist()], [list(range(9))])
    x = torch.randn(2, 9, 8)
    expected = raster(x[:, perm])[:, inverse_permutation(perm)]
    torch.testing.assert_close(permuted(x), expected, rtol=1e-5, atol=1e-6)


def test_mixer_sums_or_averages_its_orders():
    perm = torch.tensor([2, 0, 3, 1])
    both, single = _mixer_pair([[0, 1, 2, 3], perm.tolist()], [[0, 1, 2, 3]])
    x = torch.randn(1, 4, 8)
    via_perm = single(x[:, perm])[:, inverse_permutation(perm)]
    torch.testing.assert_close(both(x), single(x) + via_perm, rtol=1e-5, atol=1e-6)
    mean, _ = _mixer_pair([[0, 1, 2, 3], perm.tolist()], [[0, 1, 2, 3]], merge="mean")
    mean.load_state_dict(both.state_dict())
    torch.testing.assert_close(mean(x), both(x) / 2, rtol=1e-5, atol=1e-6)


def test_mixer_partition_orders_scan_each_part_on_its_own():
    # Two sub-sequences (EfficientVMamba style): tokens 3,1 and 0,2, each scanned separately.
    parts, single = _mixer_pair([[3, 1], [0, 2]], [[0, 1]])
    x = torch.randn(2, 4, 8)
    out = parts(x)
    torch.testing.assert_close(out[:, [3, 1]], single(x[:, [3, 1]]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out[:, [0, 2]], single(x[:, [0, 2]]), rtol=1e-5, atol=1e-6)


def test_mixer_scans_all_orders_in_one_batched_call(monkeypatch):
    import diffma_cli.models.mamba as mamba_module

    calls = []
    real = mamba_module.selective_scan

    def counting(u, *args, **kwargs):
        calls.append(tuple(u.shape))
        return real(u, *args, **kwargs)

    monkeypatch.setattr(mamba_module, "selective_scan", counting)
    mixer = MultiOrderMamba(8, torch.stack([torch.arange(9), torch.arange(9).flip(0), torch.randperm(9)]))
    mixer(torch.randn(2, 9, 8))
    assert calls == [(2 * 3, 16, 9)]  # one call: batch 2 × 3 orders, Di = 16, L = 9


def test_mixer_dt_initialisation_gives_steps_in_range():
    mixer = MultiOrderMamba(32, [list(range(4))])
    steps = torch.nn.functional.softplus(mixer.dt_proj.bias)
    assert steps.min() >= 1e-3 * 0.999 and steps.max() <= 0.1 * 1.001
    torch.testing.assert_close(mixer.A_log.exp()[0], torch.arange(1, 17, dtype=torch.float32))


@pytest.mark.gpu
@pytest.mark.parametrize("backend, tol", [("torch", 1e-5), ("mamba_ssm", 1e-4)])
def test_released_forward_on_cuda(backend, tol):
    from diffma_cli.models.ops.selective_scan import mamba_ssm_scan_fn

    if backend == "mamba_ssm" and mamba_ssm_scan_fn() is None:
        pytest.skip("mamba-ssm is not importable here")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    config, state, inputs, expected = load_reference("p2")
    model = our_model(config).cuda().eval()
    model.load_state_dict(state)
    with torch.no_grad(), scan_backend(backend):
        out = model(**{k: v.cuda() for k, v in inputs.items()})
    assert relative_error(out.cpu(), expected) <= tol
