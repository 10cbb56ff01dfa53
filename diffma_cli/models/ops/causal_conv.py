"""The mixer's depthwise causal convolution followed by SiLU, with interchangeable backends.

    x (batch, Di, L), weight (Di, 1, K), bias (Di,)  ->  SiLU(b + sum_i w_i x_{t-K+1+i})  (batch, Di, L)

(positions before the sequence start read zeros), i.e. Mamba's `conv1d` padded by K-1 and cut to L.

Backends:
- ``"torch"``: PyTorch's grouped `conv1d` (any device: the CPU path, and CUDA without causal-conv1d).
- ``"causal_conv1d"``: causal-conv1d's fused CUDA kernel (`causal_conv1d_fn`, activation "silu");
  imported lazily, CUDA tensors only.
- ``"auto"`` (default): causal_conv1d on CUDA tensors when it imports (CAUSAL_CONV1D_IN_AUTO), else torch.

Force one with `backend=` or, for a whole model, the `conv_backend(name)` context manager.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import torch.nn.functional as F

from diffma_cli.models.ops.dispatch import BackendChoice, OptionalImport, require_cuda_kernel

BACKENDS = ("auto", "torch", "causal_conv1d")
#: Whether "auto" picks causal-conv1d's kernel on CUDA when it imports. Measured on one H100 inside
#: DiffMa-B/2 (docs/benchmarks.md): +17 % training and +20 % forward throughput at 512², 3 GiB less memory,
#: a smaller gain at 224²; the kernel agrees with PyTorch's convolution (tests/gpu/test_fast_path.py).
CAUSAL_CONV1D_IN_AUTO = True

_choice = BackendChoice("convolution", BACKENDS)


def _load_kernel() -> Callable:
    from causal_conv1d import causal_conv1d_fn

    return causal_conv1d_fn


#: causal-conv1d's `causal_conv1d_fn`, or None when it cannot be imported: call it.
causal_conv1d_kernel = OptionalImport(_load_kernel)


def resolve_conv_backend(backend: str | None, x: torch.Tensor) -> str:
    """The concrete backend ("torch" or "causal_conv1d") a call with input x will use."""
    name = _choice.requested(backend)
    if name == "auto":
        use_kernel = CAUSAL_CONV1D_IN_AUTO and x.is_cuda and causal_conv1d_kernel() is not None
        return "causal_conv1d" if use_kernel else "torch"
    if name == "causal_conv1d":
        require_cuda_kernel(causal_conv1d_kernel, "the causal_conv1d convolution backend", x.is_cuda,
                            "install causal-conv1d built for this torch and CUDA, or use the 'torch' backend")
    return name


def conv_backend(name: str) -> contextlib.AbstractContextManager[None]:
    """Use backend `name` for every `causal_conv_silu` call without an explicit backend inside the block."""
    return _choice.force(name)


def causal_conv_silu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                     backend: str | None = None) -> torch.Tensor:
    """SiLU of the depthwise causal convolution (module docstring) on the chosen backend."""
    if resolve_conv_backend(backend, x) == "causal_conv1d":
        # The kernel reads the weight as (Di, K) and, under autocast, bf16 x with float32 weights as
        # mamba-ssm's own Mamba layer calls it.
        return causal_conv1d_kernel()(x, weight.squeeze(1), bias, activation="silu")
    length = x.shape[-1]
    return F.silu(F.conv1d(x, weight, bias, padding=weight.shape[-1] - 1, groups=x.shape[1])[..., :length])
