"""The selective scan (Mamba's S6 recurrence) behind one function with interchangeable backends.

Semantics are mamba-ssm's `selective_scan_fn` / `selective_scan_ref` (channel-first layout):

    u, delta, z  (batch, Di, L)      A  (Di, N)      B, C  (batch, N, L)      D, delta_bias  (Di,)

    delta <- softplus(delta + delta_bias)            (each step optional)
    h_t    = exp(delta_t · A) ⊙ h_{t−1} + delta_t · B_t · u_t        h (batch, Di, N), h_{−1} = 0
    y_t    = Σ_N h_t · C_t  (+ D · u_t)  (· SiLU(z_t))               -> (batch, Di, L), dtype of u

Backends:
- ``"mamba_ssm"``: mamba-ssm's fused CUDA kernel; imported lazily, CUDA tensors only.
- ``"triton"``: our Triton kernels for short sequences (`selective_scan_triton.py`), forward and
  backward; imported lazily, CUDA tensors (or CPU tensors under TRITON_INTERPRET=1, for tests).
- ``"torch"``: `selective_scan_blocked`, our faster PyTorch implementation (any device).
- ``"reference"``: `selective_scan_ref`, a plain step loop, the readable definition used by tests.
- ``"auto"`` (default): on CUDA, mamba_ssm when it imports, else torch; on other devices torch. With
  TRITON_IN_AUTO on, triton comes first on CUDA (float32/bfloat16/float16 inputs, triton importable, and
  either no gradient needed or TRITON_FOR_TRAINING on).

Force one with the `backend=` argument or, for a whole model, the `scan_backend(name)` context manager.
Computation is in float32 (float64 when u is float64), like mamba-ssm, whatever the input dtype.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable

import torch
import torch.nn.functional as F

from diffma_cli.errors import EnvironmentProblem
from diffma_cli.models.ops.dispatch import BackendChoice, OptionalImport, require_cuda_kernel
from diffma_cli.models.ops.scan_inputs import TRITON_DTYPES, check_shapes, needs_grad

BACKENDS = ("auto", "mamba_ssm", "triton", "torch", "reference")
#: Whether "auto" may pick the Triton kernels at all. Off, from the H100 run of benchmarks/scan_kernels_gpu.py
#: (2026-11-27, docs/benchmarks.md): as accurate as mamba-ssm and 20 % faster forward at 196 tokens, but
#: slower at 1024 tokens and about twice as slow with the backward. Force them with backend="triton" /
#: scan_backend("triton").
TRITON_IN_AUTO = False
#: Whether "auto" also trains with the Triton kernels (else mamba_ssm's backward when a gradient is needed).
TRITON_FOR_TRAINING = True

_choice = BackendChoice("selective-scan", BACKENDS)


def _compute_dtype(u: torch.Tensor) -> torch.dtype:
    return torch.float64 if u.dtype == torch.float64 else torch.float32


def _discretised_inputs(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    delta_bias: torch.Tensor | None,
    delta_softplus: bool,
) -> tuple[torch.Tensor, ...]:
    """Cast to the compute dtype and apply the optional delta bias and softplus."""
    dtype = _compute_dtype(u)
    u, delta, A, B, C = (t.to(dtype) for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    return u, delta, A, B, C


def _finish(y, u, D, z, dtype_in):
    """y (batch, Di, L) in compute dtype -> + D·u, · SiLU(z), cast back to the input dtype."""
    if D is not None:
        y = y + u * D.to(y.dtype)[:, None]
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y.to(dtype_in)


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """The recurrence exactly as written in the module docstring, one time step per iteration."""
    check_shapes(u, delta, A, B, C)
    dtype_in = u.dtype
    u, delta, A, B, C = _discretised_inputs(u, delta, A, B, C, delta_bias, delta_softplus)
    batch, dim, length = u.shape
    h = u.new_zeros(batch, dim, A.shape[1])
    ys = []
    for t in range(length):
        decay = torch.exp(delta[:, :, t, None] * A)  # (batch, Di, N)
        drive = delta[:, :, t, None] * B[:, None, :, t] * u[:, :, t, None]  # (batch, Di, N)
        h = decay * h + drive
        ys.append(torch.einsum("bdn,bn->bd", h, C[:, :, t]))
    return _finish(torch.stack(ys, dim=2), u, D, z, dtype_in)


#: Elements of one (K, batch, Di, N) block that `selective_scan_blocked` aims for: 2^17 float32 = 512 KiB,
#: so a block's decays, drives and states stay in a CPU's L2/L3 cache. Measured (benchmarks/
#: selective_scan_cpu.py, docs/benchmarks.md): 2^16-2^17 was best both for 3·1024·16 and 3·64·16 per step.
BLOCK_ELEMENTS = 2**17
#: Longest block: 16 steps was the best block for small problems; longer blocks got slower again.
MAX_BLOCK_STEPS = 16


def selective_scan_blocked(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, block_steps: int | None = None
):
    """Our PyTorch scan (CPU, or a GPU without mamba-ssm): same result as `selective_scan_ref`.

    The recurrence is sequential in L. On a CPU what costs is the number of operations per step and
    memory traffic, not arithmetic: a parallel (Blelloch / chunked-cumsum) scan makes several passes over
    (batch, Di, L, N) tensors that do not fit in cache, and was 3-10x slower than a step loop here. So this
    keeps the step loop but cuts its work per step to one fused `addcmul` on contiguous memory:
      - inputs are laid out time-major once, so every step reads contiguous slices;
      - time is split into blocks of K steps; per block the decays exp(delta·A) and drives delta·B·u are
        computed for all K steps at once, and so is the read-out Σ_N h·C (one batched matmul);
      - K is chosen so that a block's (K, batch, Di, N) tensors stay near BLOCK_ELEMENTS (cache-sized).
    `block_steps` overrides K (tests, benchmarks). Autograd differentiates it.
    """
    check_shapes(u, delta, A, B, C)
    dtype_in = u.dtype
    u, delta, A, B, C = _discretised_inputs(u, delta, A, B, C, delta_bias, delta_softplus)
    batch, dim, length = u.shape
    state = A.shape[1]
    if block_steps is None:
        fitting = max(1, BLOCK_ELEMENTS // (batch * dim * state))
        block_steps = min(2 ** int(math.log2(fitting)), MAX_BLOCK_STEPS)
    delta_t = delta.permute(2, 0, 1).contiguous()  # (L, batch, Di)
    delta_u_t = (delta * u).permute(2, 0, 1).contiguous()  # (L, batch, Di)
    B_t, C_t = B.permute(2, 0, 1), C.permute(2, 0, 1)  # (L, batch, N)
    h = u.new_zeros(batch, dim, state)
    ys = []
    for start in range(0, length, block_steps):
        stop = min(length, start + block_steps)
        decay = torch.exp(delta_t[start:stop, :, :, None] * A)  # (K, batch, Di, N): exp(delta_t·A)
        drive = delta_u_t[start:stop, :, :, None] * B_t[start:stop, :, None, :]  # delta_t·B_t·u_t
        states = []
        for step in range(stop - start):
            h = torch.addcmul(drive[step], decay[step], h)  # h_t = a_t ⊙ h_{t−1} + b_t
            states.append(h)
        readout = torch.matmul(torch.stack(states), C_t[start:stop, :, :, None])  # (K, batch, Di, 1)
        ys.append(readout.squeeze(-1))
    return _finish(torch.cat(ys).permute(1, 2, 0), u, D, z, dtype_in)  # (batch, Di, L)


def _load_mamba_ssm() -> Callable:
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    return selective_scan_fn


def _load_triton() -> Callable:
    from diffma_cli.models.ops.selective_scan_triton import selective_scan_triton

    return selective_scan_triton


#: mamba-ssm's `selective_scan_fn`, or None when it cannot be imported (no CUDA build, no package): call it.
mamba_ssm_scan_fn = OptionalImport(_load_mamba_ssm)
#: Our Triton scan (`selective_scan_triton`, differentiable), or None when triton cannot be imported.
triton_scan_fn = OptionalImport(_load_triton)


def _triton_interpreting() -> bool:
    """Whether triton kernels run in its CPU interpreter (TRITON_INTERPRET=1, set before importing triton)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def resolve_backend(backend: str | None, u: torch.Tensor, grad: bool = False) -> str:
    """The concrete backend ("mamba_ssm", "triton", "torch" or "reference") a call with tensor u will use;
    `grad`: whether the call needs a backward (see TRITON_FOR_TRAINING)."""
    name = _choice.requested(backend)
    if name == "auto":
        if not u.is_cuda:
            return "torch"
        if (TRITON_IN_AUTO and (TRITON_FOR_TRAINING or not grad) and u.dtype in TRITON_DTYPES
                and triton_scan_fn() is not None):
            return "triton"
        return "mamba_ssm" if mamba_ssm_scan_fn() is not None else "torch"
    if name == "triton":
        if triton_scan_fn() is None:
            raise EnvironmentProblem(f"the triton selective-scan backend was requested but triton cannot be "
                                     f"imported ({triton_scan_fn.error})",
                                     hint="install triton, or use 'auto'; `diffma doctor` shows what imports")
        if not (u.is_cuda or _triton_interpreting()):
            raise EnvironmentProblem("the triton selective-scan backend needs CUDA tensors",
                                     hint="move the model to a GPU or use the 'torch' backend")
        if u.dtype not in TRITON_DTYPES:
            raise EnvironmentProblem(f"the triton selective-scan backend does not take {u.dtype} inputs",
                                     hint="use float32, bfloat16 or float16, or the 'torch' backend")
    if name == "mamba_ssm":
        require_cuda_kernel(mamba_ssm_scan_fn, "the mamba_ssm selective-scan backend", u.is_cuda,
                            "install mamba-ssm built for this torch and CUDA, or use the 'torch' backend; "
                            "`diffma doctor` shows the import error and versions")
    return name


def scan_backend(name: str) -> contextlib.AbstractContextManager[None]:
    """Use backend `name` for every `selective_scan` call without an explicit backend inside the block."""
    return _choice.force(name)


def selective_scan(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, backend: str | None = None
):
    """The selective scan (see module docstring) on the chosen backend; returns (batch, Di, L)."""
    name = resolve_backend(backend, u, grad=needs_grad(u, delta, A, B, C, D, z, delta_bias))
    if name == "mamba_ssm":
        return mamba_ssm_scan_fn()(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    if name == "triton":
        return triton_scan_fn()(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    scan = selective_scan_blocked if name == "torch" else selective_scan_ref
    return scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
