"""The selective scan: our fast PyTorch scan against the step-loop reference (values and gradients),
the reference against a hand-computed case, backend dispatch, and (GPU) mamba-ssm's kernel."""

import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from diffma_cli.errors import EnvironmentProblem
from diffma_cli.models.ops import selective_scan as ops

# Tolerances per dtype (values, gradients): the two implementations differ only in summation order.
TOLERANCES = {torch.float32: (1e-5, 1e-4), torch.float64: (1e-12, 1e-10)}
OPTIONS = [
    {},
    {"D": True},
    {"z": True},
    {"delta_bias": True, "delta_softplus": True},
    {"D": True, "z": True, "delta_bias": True, "delta_softplus": True},
]


def make_inputs(batch, dim, length, state, dtype, options, device="cpu", seed=0):
    """Scan inputs; activations in `dtype`, parameters (A, D, delta_bias) in float32 (float64 for float64)."""
    g = torch.Generator().manual_seed(seed)
    param_dtype = torch.float64 if dtype == torch.float64 else torch.float32

    def rand(*shape, scale=1.0, dtype=dtype):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(device, dtype)

    delta = rand(batch, dim, length, scale=0.5)
    # A as Mamba initialises it, -(1 ... N) per channel, jittered by 10 %.
    a_init = torch.arange(1, state + 1, dtype=torch.float64).repeat(dim, 1).to(device)
    args = {
        "u": rand(batch, dim, length),
        "delta": delta if options.get("delta_softplus") else delta.abs(),  # without softplus: delta >= 0
        "A": (-a_init * (1 + 0.1 * rand(dim, state, dtype=torch.float64))).to(param_dtype),
        "B": rand(batch, state, length),
        "C": rand(batch, state, length),
    }
    if options.get("D"):
        args["D"] = rand(dim, dtype=param_dtype)
    if options.get("z"):
        args["z"] = rand(batch, dim, length)
    if options.get("delta_bias"):
        args["delta_bias"] = rand(dim, scale=0.5, dtype=param_dtype)
    for value in args.values():
        value.requires_grad_(True)
    args["delta_softplus"] = options.get("delta_softplus", False)
    return args


def values_and_grads(fn, args, **kwargs):
    out = fn(**args, **kwargs)
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype, device=out.device).reshape(out.shape)
    tensors = {k: v for k, v in args.items() if torch.is_tensor(v)}
    grads = torch.autograd.grad((out * weights).sum(), list(tensors.values()))
    return out, dict(zip(tensors, grads, strict=True))


def test_reference_matches_hand_computed_recurrence():
    # batch 1, Di 1, N 1, L 2: h0 = δ0·B0·u0, h1 = e^{δ1·A}·h0 + δ1·B1·u1, y = C·h + D·u, · SiLU(z)
    u, delta, a, b, c, d, z = [2.0, -1.0], [0.5, 0.25], -2.0, [1.5, 3.0], [0.5, -2.0], 0.3, [1.0, -0.5]
    h0 = delta[0] * b[0] * u[0]
    h1 = math.exp(delta[1] * a) * h0 + delta[1] * b[1] * u[1]
    silu = [zz / (1 + math.exp(-zz)) for zz in z]
    expected = [(c[0] * h0 + d * u[0]) * silu[0], (c[1] * h1 + d * u[1]) * silu[1]]
    out = ops.selective_scan_ref(
        torch.tensor([[u]]), torch.tensor([[delta]]), torch.tensor([[a]]), torch.tensor([[b]]),
        torch.tensor([[c]]), D=torch.tensor([d]), z=torch.tensor([[z]]),
    )
    torch.testing.assert_close(out, torch.tensor([[expected]]))


def test_reference_bias_and_softplus_are_applied_before_the_scan():
    args = make_inputs(2, 3, 5, 4, torch.float64, {"delta_bias": True, "delta_softplus": True})
    with torch.no_grad():
        direct = ops.selective_scan_ref(**args)
        manual = ops.selective_scan_ref(
            args["u"], F.softplus(args["delta"] + args["delta_bias"][:, None]),
            args["A"], args["B"], args["C"],
        )
    torch.testing.assert_close(direct, manual)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "+".join(o) or "plain")
@pytest.mark.parametrize("block_steps", [None, 1, 3])
def test_blocked_matches_reference(dtype, options, block_steps):
    args = make_inputs(2, 6, 11, 4, dtype, options)
    ref_out, ref_grads = values_and_grads(ops.selective_scan_ref, args)
    out, grads = values_and_grads(ops.selective_scan_blocked, args, block_steps=block_steps)
    value_tol, grad_tol = TOLERANCES[dtype]
    assert out.dtype == dtype
    torch.testing.assert_close(out, ref_out, rtol=value_tol, atol=value_tol)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name], rtol=grad_tol, atol=grad_tol, msg=name)


def test_half_precision_inputs_are_computed_in_float32_and_returned_in_their_dtype():
    args = make_inputs(1, 4, 7, 3, torch.float32, {"D": True})
    with torch.no_grad():
        low = {k: (v.bfloat16() if k in ("u", "delta") else v) for k, v in args.items()}
        out = ops.selective_scan_blocked(**low)
        ref = ops.selective_scan_ref(**low)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, ref)


def test_auto_backend_on_cpu_is_torch_and_reference_can_be_forced():
    u = torch.zeros(1, 1, 1)
    assert ops.resolve_backend(None, u) == "torch"
    with ops.scan_backend("reference"):
        assert ops.resolve_backend(None, u) == "reference"
        assert ops.resolve_backend("torch", u) == "torch"  # an explicit argument wins
    assert ops.resolve_backend(None, u) == "torch"


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="reference"):
        ops.resolve_backend("cuda-fast", torch.zeros(1, 1, 1))


def test_mamba_ssm_backend_on_cpu_tensors_is_an_environment_problem():
    with pytest.raises(EnvironmentProblem):
        ops.resolve_backend("mamba_ssm", torch.zeros(1, 1, 1))


def test_importing_models_does_not_import_mamba_ssm():
    code = (
        "import sys, diffma_cli.models, diffma_cli.models.ops.selective_scan; "
        "print('mamba_ssm' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, encoding="utf-8", check=True)
    assert result.stdout.strip() == "False"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mamba_ssm_kernel_matches_our_scan(dtype):
    if ops.mamba_ssm_scan_fn() is None:
        pytest.skip("mamba-ssm is not importable here")
    options = {"D": True, "z": True, "delta_bias": True, "delta_softplus": True}
    args = make_inputs(2, 64, 196, 16, dtype, options, device="cuda")
    ours, our_grads = values_and_grads(ops.selective_scan, args, backend="torch")
    theirs, their_grads = values_and_grads(ops.selective_scan, args, backend="mamba_ssm")
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(theirs, ours, rtol=tol, atol=tol)
    for name, grad in our_grads.items():
        torch.testing.assert_close(their_grads[name], grad, rtol=tol * 10, atol=tol * 10, msg=name)
