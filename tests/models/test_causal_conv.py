"""ops.causal_conv: the torch backend is the convolution as defined (a hand-written sum, float64, with
gradients), "auto" takes causal-conv1d's kernel only for CUDA tensors when it imports, and a forced kernel
that cannot run says why. On CUDA with causal-conv1d installed, the kernel is compared with the torch
backend in tests/gpu."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from diffma_cli.errors import EnvironmentProblem
from diffma_cli.models.ops import causal_conv
from diffma_cli.models.ops.causal_conv import causal_conv_silu, conv_backend, resolve_conv_backend
from diffma_cli.models.ops.dispatch import OptionalImport


def by_definition(x, weight, bias):
    """SiLU(b_d + sum_i w_{d,i} x_{d, t-K+1+i}), positions before the start reading zero, one t at a time."""
    kernel, length = weight.shape[-1], x.shape[-1]
    out = torch.empty_like(x)
    for t in range(length):
        total = bias[None, :].expand(x.shape[0], -1).clone()
        for i in range(kernel):
            source = t - kernel + 1 + i
            if source >= 0:
                total = total + weight[:, 0, i] * x[:, :, source]
        out[:, :, t] = F.silu(total)
    return out


def test_torch_backend_is_the_convolution_by_definition_with_gradients():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 7, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(5, 1, 4, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(5, dtype=torch.float64, requires_grad=True)
    got = causal_conv_silu(x, weight, bias, backend="torch")
    expected = by_definition(x, weight, bias)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    grad = torch.randn_like(got)
    for a, b in zip(torch.autograd.grad(got, (x, weight, bias), grad),
                    torch.autograd.grad(expected, (x, weight, bias), grad), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_auto_picks_the_kernel_for_cuda_tensors_when_it_imports(monkeypatch):
    cpu = torch.zeros(1, 2, 3)
    cuda = SimpleNamespace(is_cuda=True)  # all resolve_conv_backend reads of x; no GPU here
    installed = OptionalImport(lambda: lambda *args, **kwargs: None)
    missing = OptionalImport(lambda: __import__("causal_conv1d_not_installed"))
    monkeypatch.setattr(causal_conv, "causal_conv1d_kernel", installed)
    assert resolve_conv_backend(None, cuda) == "causal_conv1d"
    assert resolve_conv_backend("torch", cuda) == "torch"
    assert resolve_conv_backend(None, cpu) == "torch"  # the kernel runs on CUDA tensors only
    monkeypatch.setattr(causal_conv, "CAUSAL_CONV1D_IN_AUTO", False)
    assert resolve_conv_backend(None, cuda) == "torch"
    monkeypatch.setattr(causal_conv, "CAUSAL_CONV1D_IN_AUTO", True)
    monkeypatch.setattr(causal_conv, "causal_conv1d_kernel", missing)
    assert resolve_conv_backend(None, cuda) == "torch"  # not installed: no error, PyTorch's convolution
    with pytest.raises(ValueError, match="unknown convolution backend 'cudnn'"):
        resolve_conv_backend("cudnn", cpu)


def test_a_forced_kernel_that_cannot_run_is_an_environment_problem(monkeypatch):
    x = torch.zeros(1, 2, 3)
    def not_installed():
        import causal_conv1d_not_installed  # noqa: F401

    monkeypatch.setattr(causal_conv, "causal_conv1d_kernel", OptionalImport(not_installed))
    with pytest.raises(EnvironmentProblem, match="cannot be imported .*'causal_conv1d_not_installed'"):
        causal_conv_silu(x, torch.zeros(2, 1, 4), None, backend="causal_conv1d")
    kernel = OptionalImport(lambda: lambda *args, **kwargs: pytest.fail("must not be called on a CPU"))
    monkeypatch.setattr(causal_conv, "causal_conv1d_kernel", kernel)
    with conv_backend("causal_conv1d"), pytest.raises(EnvironmentProblem, match="needs CUDA tensors"):
        causal_conv_silu(x, torch.zeros(2, 1, 4), None)
    assert resolve_conv_backend(None, x) == "torch"  # the context manager restored "auto"
