"""On CUDA: the mamba-ssm fast path computes the same DiffMa-B/2 as our PyTorch path (values, gradients)."""

import importlib.util
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu


def _agreement_module():
    path = Path(__file__).parents[2] / "benchmarks" / "gpu_agreement.py"
    spec = importlib.util.spec_from_file_location("gpu_agreement", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_agreement"] = module
    spec.loader.exec_module(module)
    return module


def test_diffma_b2_fast_path_agrees_with_torch_path():
    from diffma_cli.models.ops.selective_scan import mamba_ssm_scan_fn

    if mamba_ssm_scan_fn() is None:
        pytest.skip("mamba-ssm is not importable here")
    rows = {row["comparison"]: row for row in _agreement_module().agreement()}
    fp32 = rows["mamba_ssm vs torch scan, fp32"]
    assert fp32["output"] < 1e-4 and fp32["grads"] < 1e-3
    bf16 = rows["mamba_ssm vs torch scan, bf16"]
    assert bf16["output"] < 3e-2 and bf16["grads"] < 5e-2
    assert rows["fast path bf16 vs torch fp32"]["output"] < 3e-2


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_causal_conv1d_kernel_agrees_with_the_torch_convolution(dtype):
    """The kernel as the mixer calls it (bf16 input with float32 weights under autocast), and a whole small
    DiffMa with either convolution: values and gradients (relative errors as in gpu_agreement.py)."""
    import torch

    from diffma_cli.models import create_model
    from diffma_cli.models.ops.causal_conv import causal_conv1d_kernel, causal_conv_silu, conv_backend

    if causal_conv1d_kernel() is None:
        pytest.skip("causal-conv1d is not importable here")
    agreement = _agreement_module()
    torch.manual_seed(0)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == "bf16")
    output_bound, grad_bound = {"fp32": (1e-5, 1e-4), "bf16": (3e-2, 5e-2)}[dtype]

    # Under autocast the mixer hands the kernel in_proj's bf16 output: a custom autograd function is not cast.
    x_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    x = torch.randn(6, 64, 196, device="cuda", dtype=x_dtype, requires_grad=True)
    weight = torch.randn(64, 1, 4, device="cuda", requires_grad=True)
    bias = torch.randn(64, device="cuda", requires_grad=True)
    results = {}
    for backend in ("torch", "causal_conv1d"):
        with autocast:
            out = causal_conv_silu(x, weight, bias, backend=backend)
        grads = torch.autograd.grad(out.float().square().sum(), (x, weight, bias))
        results[backend] = (out.detach(), grads)
    assert agreement.relative_error(results["causal_conv1d"][0], results["torch"][0]) < output_bound
    for a, b in zip(results["causal_conv1d"][1], results["torch"][1], strict=True):
        assert agreement.relative_error(a, b) < grad_bound

    model = create_model("DiffMa-S/2", input_size=16, depth=2).cuda()
    agreement.randomise(model)  # the zero-initialised layers would make the output compare nothing
    hidden = model.config["hidden_size"]
    inputs = (torch.randn(2, 4, 16, 16, device="cuda"), torch.tensor([10, 500], device="cuda"),
              torch.randn(2, 512, device="cuda"), torch.randn(2, 64, hidden, device="cuda"),
              torch.rand(2, 64, 1, device="cuda"))
    outputs = {}
    for backend in ("torch", "causal_conv1d"):
        model.zero_grad(set_to_none=True)
        with conv_backend(backend), autocast:
            out = model(*inputs)
        out.float().square().mean().backward()
        grads = torch.cat([p.grad.flatten().float() for p in model.parameters() if p.grad is not None])
        outputs[backend] = (out.detach(), grads)
    assert agreement.relative_error(outputs["causal_conv1d"][0], outputs["torch"][0]) < output_bound
    assert agreement.relative_error(outputs["causal_conv1d"][1], outputs["torch"][1]) < grad_bound
