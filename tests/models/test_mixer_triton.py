"""The fused mixer kernels (`ops/mixer_triton.py`, mixer backend "fused_triton") against the unfused mixer in
float64, and the mixer backend choice.

The kernels run in Triton's CPU interpreter in one worker subprocess (this file run with --worker), as in
test_selective_scan_triton.py. The worker runs with deterministic algorithms on, under which PyTorch fills
every `torch.empty` with NaN: an output element a kernel fails to write shows up as a NaN.
"""

import sys

import pytest
import torch
from test_selective_scan_triton import _receive, _send, interpreter_worker

from diffma_cli.errors import EnvironmentProblem
from diffma_cli.models import mamba
from diffma_cli.models.mamba import MultiOrderMamba, merge_orders, mixer_backend, read_orders
from diffma_cli.models.ops.causal_conv import causal_conv_silu
from diffma_cli.models.ops.selective_scan import selective_scan_ref
from diffma_cli.models.scan_orders import diffma_block_orders

#: Bound on ‖fused − float64 reference‖ / ‖reference‖, outputs and gradients. float32: the kernels agree to
#: ~7e-7. bfloat16 weights and activations: rounding (relative step 2^-8) dominates; the fused path lands at
#: 0.4-2.4e-2 on these shapes, as the unfused mixer on the Triton scan does (0.4-2.3e-2).
RTOL = {torch.float32: 1e-4, torch.bfloat16: 5e-2}


def _worker() -> None:
    """Answer each request with `fused_gradients`, `conv_gradients` or `scan_gradients` of it, or an error
    text. request["grid"] (default "auto") sets kernel B's grid, `mixer_triton.SPLIT_ORDERS`."""
    from diffma_cli.models.ops import mixer_triton

    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    while (request := _receive(sys.stdin.buffer)) is not None:
        try:
            mixer_triton.SPLIT_ORDERS = request.get("grid", "auto")
            if "conv" in request:
                answer = conv_gradients(request)
            elif "scan" in request:
                answer = scan_gradients(request)
            else:
                answer = fused_gradients(request)
        except Exception as error:  # returned to the test, which fails with it
            answer = f"{type(error).__name__}: {error}"
        _send(sys.stdout.buffer, answer)


def fused_gradients(request):
    """The mixer (request["mixer"]: arguments, request["state"]: weights) on request["x"] with the fused
    backend: output, the merged output before out_proj, and gradients of <out, request["grad_out"]> w.r.t.
    x and every parameter."""
    mixer = MultiOrderMamba(**request["mixer"])
    mixer.load_state_dict(request["state"])
    mixer.to(request["x"].dtype)
    mixer._scan = None  # the unfused path must not run
    x = request["x"].clone().requires_grad_(True)
    with mixer_backend("fused_triton"):
        out = mixer(x)
        with torch.no_grad():
            merged = mixer._fused_scan(x)
    out.backward(request["grad_out"])
    grads = {"x": x.grad, **{name: p.grad for name, p in mixer.named_parameters()}}
    return {"out": out.detach(), "merged": merged.detach(), "grads": grads}


def conv_gradients(request):
    """`order_conv_silu` on request["x"] (N, T, Di) read in request["orders"]: output and gradients."""
    from diffma_cli.models.ops.mixer_triton import order_conv_silu

    orders = request["orders"]
    restore = MultiOrderMamba(1, orders).restore
    leaves = [t.clone().requires_grad_(True) for t in (request["x"], request["weight"], request["bias"])]
    out = order_conv_silu(*leaves, orders, restore)
    out.backward(request["grad_out"])
    return {"out": out.detach(), "grads": [leaf.grad for leaf in leaves]}


def scan_gradients(request):
    """`order_scan_merge` on request["scan"] (its arguments) as the mixer passes them: z a strided view of
    the z half of an (N, T, 2Di) tensor, B, C views of one (N·K, L, 2N) tensor. Output and the gradients of
    <out, request["grad_out"]> w.r.t. u, delta, A, B, C, D, z, delta_bias."""
    from diffma_cli.models.ops.mixer_triton import order_scan_merge

    inputs = request["scan"]
    leaves = {name: inputs[name].clone().requires_grad_(True) for name in SCAN_ARGUMENTS}
    z = torch.cat([torch.zeros_like(leaves["z"]), leaves["z"]], dim=-1)[..., leaves["z"].shape[-1]:]
    B, C = torch.cat([leaves["B"], leaves["C"]], dim=-1).chunk(2, dim=-1)
    args = {**leaves, "B": B, "C": C, "z": z}
    out = order_scan_merge(*(args[name] for name in SCAN_ARGUMENTS), inputs["orders"])
    out.backward(request["grad_out"])
    return {"out": out.detach(), "grads": {name: leaf.grad for name, leaf in leaves.items()}}


#: `order_scan_merge`'s differentiable arguments, in its order.
SCAN_ARGUMENTS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


@pytest.fixture(scope="module")
def interpreted():
    """ask(request) -> the worker's answer, computed in Triton's interpreter."""
    with interpreter_worker(__file__) as raw:
        def ask(request):
            answer = raw(request)
            assert isinstance(answer, dict), answer  # else the worker's error text
            return answer

        yield ask


def relative_error(out, expected):
    return ((out.double() - expected).norm() / expected.norm()).item()


def assert_close(out, expected, name, dtype=torch.float32):
    assert out.shape == expected.shape and out.dtype == dtype, name
    assert torch.isfinite(out).all(), f"{name}: not every element was written"
    error = relative_error(out, expected)
    assert error < RTOL[dtype], f"{name}: relative error {error:.3g}"


def random_mixer(config, seed, dtype=torch.float32):
    """A mixer with every parameter moved away from its zero/one initialisation; the same for the same seed
    whatever ran before (the module's own initialisation draws from the global generator)."""
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        mixer = MultiOrderMamba(**config)
    with torch.no_grad():
        for parameter in mixer.parameters():
            parameter.add_(0.2 * torch.randn(parameter.shape, generator=g))
    return mixer.to(dtype), g


def float64_reference(config, state, x, grad_out):
    """The unfused mixer in float64 on the given weights: output, its K orders' scan outputs merged before
    out_proj, and gradients of <out, grad_out> w.r.t. x and every parameter."""
    reference = MultiOrderMamba(**config).double()
    reference.load_state_dict(state)
    x = x.double().requires_grad_(True)
    with mixer_backend("unfused"):
        out = reference(x)
    with torch.no_grad():
        y = reference.scan_orders(x).transpose(2, 3)  # (N, K, L, Di)
        merged = merge_orders(y, reference.orders, reference.restore, reference.skips_tokens)
    out.backward(grad_out.double())
    grads = {"x": x.grad, **{name: p.grad for name, p in reference.named_parameters()}}
    return out.detach(), merged, grads


ORDERS = {
    # DiffMa's three orders of a 4 x 4 grid: raster, forward spiral, reverse spiral
    "diffma": (diffma_block_orders(4, 0), 8, 4),
    # 3 random permutations of 12 tokens; Di = 20, not a power of two; N = 3, padded
    "random": (torch.stack([torch.randperm(12, generator=torch.Generator().manual_seed(seed))
                            for seed in range(3)]), 10, 3),
}


@pytest.mark.parametrize("grid", ["serial", "split"])
@pytest.mark.parametrize("case, dtype", [("diffma", torch.float32), ("random", torch.float32),
                                         ("diffma", torch.bfloat16)], ids=["diffma", "random", "diffma-bf16"])
def test_fused_mixer_matches_the_float64_unfused_mixer(interpreted, case, dtype, grid):
    # The reference runs on the same (for bfloat16: rounded) weights and inputs, in float64.
    orders, d_model, d_state = ORDERS[case]
    config = {"d_model": d_model, "orders": orders, "d_state": d_state}
    mixer, g = random_mixer(config, seed=len(case), dtype=dtype)
    x = torch.randn(2, orders.shape[1], d_model, generator=g).to(dtype)
    grad_out = torch.randn(2, orders.shape[1], d_model, generator=g).to(dtype)
    answer = interpreted({"mixer": config, "state": mixer.state_dict(), "x": x, "grad_out": grad_out,
                          "grid": grid})
    expected_out, expected_merged, expected_grads = float64_reference(config, mixer.state_dict(), x, grad_out)
    assert_close(answer["out"], expected_out, "out", dtype)
    assert_close(answer["merged"], expected_merged, "merged before out_proj", dtype)
    assert set(answer["grads"]) == set(expected_grads)
    for name, grad in answer["grads"].items():
        assert_close(grad, expected_grads[name], f"d{name}", dtype)


def test_order_conv_handles_tokens_read_by_several_orders_or_none(interpreted):
    # 7 tokens, 2 orders of 5: tokens 0, 2, 3, 4 are read by both, 5 by none; the input gradient of a token
    # sums over the orders that read it.
    g = torch.Generator().manual_seed(11)
    orders = torch.tensor([[0, 1, 2, 3, 4], [4, 6, 2, 0, 3]])
    x, weight, bias = (torch.randn(shape, generator=g) for shape in ((2, 7, 6), (6, 1, 4), (6,)))
    grad_out = torch.randn(4, 5, 6, generator=g)
    answer = interpreted({"conv": True, "orders": orders, "x": x, "weight": weight, "bias": bias,
                          "grad_out": grad_out})
    leaves = [t.double().requires_grad_(True) for t in (x, weight, bias)]
    mixer = MultiOrderMamba(1, orders)
    gathered = read_orders(leaves[0], mixer.orders, mixer.restore, mixer.skips_tokens)  # (N, K, L, Di)
    expected = causal_conv_silu(gathered.flatten(0, 1).transpose(1, 2), leaves[1], leaves[2], backend="torch")
    expected = expected.transpose(1, 2)  # (N·K, L, Di)
    expected.backward(grad_out.double())
    assert_close(answer["out"], expected.detach(), "out")
    for name, grad, leaf in zip(("x", "weight", "bias"), answer["grads"], leaves, strict=True):
        assert_close(grad, leaf.grad, f"d{name}")


@pytest.mark.parametrize("grid", ["serial", "split"])
@pytest.mark.parametrize("orders_count", [1, 3])
def test_order_scan_merge_gradients_match_float64_autograd(interpreted, orders_count, grid):
    # Kernel B alone against float64 autograd of `selective_scan_ref` per order, summed at the tokens.
    # T = L = 13 (not a multiple of the 4-step chunk or the 8-step checkpoint interval), Di = 40 (one
    # 64-channel block, partly padded, two warp groups of dB, dC partial sums), N = 3 (padded to 4).
    g = torch.Generator().manual_seed(20 + orders_count)
    batch, length, dim, state = 2, 13, 40, 3
    orders = torch.stack([torch.randperm(length, generator=g) for _ in range(orders_count)])
    rows = batch * orders_count

    def rand(*shape, scale=1.0):
        return torch.randn(*shape, generator=g) * scale

    inputs = {
        "u": rand(rows, length, dim), "delta": rand(rows, length, dim, scale=0.5),
        "A": -torch.arange(1, state + 1.0).repeat(dim, 1) * (1 + 0.1 * rand(dim, state)),
        "B": rand(rows, length, state), "C": rand(rows, length, state), "D": rand(dim),
        "z": rand(batch, length, dim), "delta_bias": rand(dim, scale=0.5),
    }
    grad_out = rand(batch, length, dim)
    answer = interpreted({"scan": {**inputs, "orders": orders}, "grad_out": grad_out, "grid": grid})

    leaves = {name: t.double().requires_grad_(True) for name, t in inputs.items()}
    expected = torch.zeros(batch, length, dim, dtype=torch.float64)

    def read(name, k):  # rows of order k, (N, L, C) -> channel-first (N, C, L)
        return leaves[name].view(batch, orders_count, length, -1)[:, k].transpose(1, 2)

    for k in range(orders_count):
        y = selective_scan_ref(read("u", k), read("delta", k), leaves["A"], read("B", k), read("C", k),
                               leaves["D"], leaves["z"][:, orders[k]].transpose(1, 2), leaves["delta_bias"],
                               delta_softplus=True)
        expected = expected.index_add(1, orders[k], y.transpose(1, 2))
    expected.backward(grad_out.double())
    assert_close(answer["out"], expected.detach(), "out")
    assert set(answer["grads"]) == set(SCAN_ARGUMENTS)
    for name, grad in answer["grads"].items():
        assert_close(grad, leaves[name].grad, f"d{name}")


def test_merging_before_out_proj_equals_merging_after():
    # out_proj has no bias, so it commutes with the sum over orders
    g = torch.Generator().manual_seed(12)
    mixer = MultiOrderMamba(8, diffma_block_orders(4, 1)).double()
    y = torch.randn(2, 3, 16, 16, generator=g, dtype=torch.float64)  # (N, K, L, Di)
    args = (mixer.orders, mixer.restore, mixer.skips_tokens)
    torch.testing.assert_close(mixer.out_proj(merge_orders(y, *args)), merge_orders(mixer.out_proj(y), *args))


# --- the backend choice (no kernel runs) ------------------------------------------------------------------

def test_default_mixer_backend_is_the_unfused_path(monkeypatch):
    def refuse(*_):
        raise AssertionError("the fused mixer ran")

    monkeypatch.setattr(mamba, "fused_mixer_scan", refuse)
    mixer = MultiOrderMamba(8, diffma_block_orders(4, 0))
    assert mixer.fusable
    assert mamba._mixer_choice.requested(None) == "auto"
    x = torch.randn(2, 16, 8)
    out = mixer(x)
    with mixer_backend("unfused"):
        torch.testing.assert_close(mixer(x), out, rtol=0, atol=0)


@pytest.mark.parametrize("orders, merge", [([[0, 1], [2, 3]], "sum"), ([[0, 1, 2, 3], [3, 2, 1, 0]], "mean")],
                         ids=["partition", "mean"])
def test_fused_backend_falls_back_where_the_mixer_does_not_qualify(monkeypatch, orders, merge):
    def refuse(*_):
        raise AssertionError("the fused mixer ran")

    monkeypatch.setattr(mamba, "fused_mixer_scan", refuse)
    mixer = MultiOrderMamba(4, orders, merge=merge)
    assert not mixer.fusable
    x = torch.randn(1, 4, 4)
    with mixer_backend("fused_triton"):
        out = mixer(x)
    torch.testing.assert_close(out, mixer(x), rtol=0, atol=0)


def test_fused_backend_needs_cuda_tensors(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    if mamba.fused_mixer_scan() is None:
        pytest.skip("triton not installed")
    mixer = MultiOrderMamba(4, [[0, 1, 2, 3], [3, 2, 1, 0]])
    with mixer_backend("fused_triton"), pytest.raises(EnvironmentProblem, match="CUDA"):
        mixer(torch.randn(1, 4, 4))


def test_unknown_mixer_backend_is_refused():
    with pytest.raises(ValueError, match="unknown mixer backend"), mixer_backend("fused"):
        pass


# --- GPU ----------------------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("grid", ["serial", "split"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_fused_mixer_matches_the_float64_unfused_mixer_on_cuda(monkeypatch, dtype, grid):
    # DiffMa-B/2's mixer at 224² (14 x 14 tokens, D 512, N 16): the compiled kernels, forward and backward.
    from diffma_cli.models.ops import mixer_triton

    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(mixer_triton, "SPLIT_ORDERS", grid)
    orders = diffma_block_orders(14, 0)
    config = {"d_model": 512, "orders": orders}
    mixer, g = random_mixer(config, seed=13, dtype=dtype)
    x = torch.randn(4, 196, 512, generator=g).to(dtype)
    grad_out = torch.randn(4, 196, 512, generator=g).to(dtype)
    expected_out, _, expected_grads = float64_reference(config, mixer.state_dict(), x, grad_out)  # on the CPU
    mixer, x = mixer.cuda(), x.cuda().requires_grad_(True)
    with mixer_backend("fused_triton"):
        out = mixer(x)
    out.backward(grad_out.cuda())
    assert_close(out.detach().cpu(), expected_out, "out", dtype)
    assert_close(x.grad.cpu(), expected_grads["x"], "dx", dtype)
    for name, parameter in mixer.named_parameters():
        assert_close(parameter.grad.cpu(), expected_grads[name], f"d{name}", dtype)


if __name__ == "__main__" and sys.argv[1:] == ["--worker"]:
    _worker()
