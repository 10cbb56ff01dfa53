"""A Triton selective-scan forward kernel for short sequences (DiffMa's L = 196 ... 1024 tokens).

Same semantics as `selective_scan_ref` (see `selective_scan.py`); computes in float32 whatever the input
dtype and returns u's dtype, like mamba-ssm. Importing this module imports triton, so only
`selective_scan.py` imports it, lazily, on CUDA.

Why not mamba-ssm's kernel: it parallelises each channel's scan along L (built for long sequences) and
costs 0.77 ms per DiffMa-B/2 mixer call (96 x 1024 x 196, N = 16) on an H100, where the exponentials need
< 0.1 ms and the bytes 0.05 ms. Here one program owns one sequence and BLOCK_D channels, one channel per
thread, and keeps each channel's state h (N floats) in that thread's registers. It walks L in chunks of
CHUNK steps: a chunk's u, delta, z are read as (CHUNK, BLOCK_D) tiles (coalesced: consecutive steps of a
channel are adjacent), softplus and delta·u are formed for the whole tile, then the chunk's steps run one
after another, unrolled, each h <- exp(delta_t·A)·h + delta_t·u_t·B_t and y_t = Σ_N h·C_t, and the chunk's
outputs are written as one tile. The per-step work is written on 3-d (steps, states, channels) tensors
because Triton's default layout for those gives lanes and warps to the channels (last axis) and leaves
steps and states inside each thread, so picking a step and summing over states need no cross-lane traffic
(checked in the compiled code for sm_90: no shuffles, ~5 FP32 instructions and one exp2 per state and
step, 168 registers at the default tile; see docs/architecture.md "Triton scan kernel").
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from diffma_cli.models.ops.selective_scan import TRITON_DTYPES, _check_shapes

#: log2(e): the kernel evaluates exp(delta·A) as exp2(delta·A·log2 e), one special-function op.
LOG2_E: tl.constexpr = tl.constexpr(1.4426950408889634)
#: Default tile: 32 lanes x 4 warps = 128 channels per program, 8 steps per chunk. Compiled for sm_90 with
#: N = 16: chunk 4 -> 128 registers, 8 -> 168, 16 -> 255 and spills (the unrolled chunk keeps its tiles and
#: its steps' B, C in registers). benchmarks/scan_kernels_gpu.py times the alternatives.
DEFAULT_NUM_WARPS = 4
DEFAULT_CHUNK = 8


@triton.jit
def _softplus(x):
    """log(1 + e^x) without overflow or cancellation: max(x, 0) + log1p(e^-|x|).

    log1p(e) is evaluated as log(w)·e/(w - 1) with w = 1 + e (exact where w rounds to 1: then it is e);
    Triton has no portable log1p. Equals PyTorch's softplus (threshold 20) to float32 rounding.
    """
    e = tl.exp(-tl.abs(x))
    w = 1.0 + e
    log1p_e = tl.where(w == 1.0, e, tl.log(w) * (e / (w - 1.0)))
    return tl.maximum(x, 0.0) + log1p_e


@triton.jit
def _scan_forward_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, out_ptr,
    dim, length,
    stride_u_b, stride_u_d, stride_u_l,
    stride_delta_b, stride_delta_d, stride_delta_l,
    stride_A_d, stride_A_n,
    stride_B_b, stride_B_n, stride_B_l,
    stride_C_b, stride_C_n, stride_C_l,
    stride_z_b, stride_z_d, stride_z_l,
    stride_out_b, stride_out_d, stride_out_l,
    STATE: tl.constexpr, STATE_BLOCK: tl.constexpr, BLOCK_D: tl.constexpr, CHUNK: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
):
    """One program: sequence program_id(0), channels [program_id(1)·BLOCK_D, +BLOCK_D), all L steps.

    Tiles: steps x channels (CHUNK, BLOCK_D) for u/delta/z/out, used as (CHUNK, 1, BLOCK_D); the state h
    is (1, STATE_BLOCK, BLOCK_D); B_t, C_t are (STATE_BLOCK,) vectors read per step (the same for every
    channel), from float32 (batch, L, N) copies. Padded states (>= STATE) read A = B = C = 0, so they stay
    0 and add nothing to y; padded channels (>= dim) and steps (>= length, only at the end of the last chunk)
    compute values that are never stored.
    """
    seq = tl.program_id(0)
    channels = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    states = tl.arange(0, STATE_BLOCK)
    steps = tl.arange(0, CHUNK)
    channel_ok = channels < dim
    state_ok = states < STATE

    # A (Di, N) -> (1, N, BLOCK_D), pre-scaled by log2(e) for exp2.
    a_offsets = states[:, None] * stride_A_n + channels[None, :] * stride_A_d
    A = tl.load(A_ptr + a_offsets, mask=state_ok[:, None] & channel_ok[None, :], other=0.0).to(tl.float32)
    A = (A * LOG2_E)[None, :, :]  # (1, STATE_BLOCK, BLOCK_D)
    if HAS_D:
        D = tl.load(D_ptr + channels, mask=channel_ok, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + channels, mask=channel_ok, other=0.0).to(tl.float32)

    u_base = u_ptr + seq * stride_u_b + channels[None, :] * stride_u_d
    delta_base = delta_ptr + seq * stride_delta_b + channels[None, :] * stride_delta_d
    z_base = z_ptr + seq * stride_z_b + channels[None, :] * stride_z_d
    out_base = out_ptr + seq * stride_out_b + channels[None, :] * stride_out_d
    B_base = B_ptr + seq * stride_B_b + states * stride_B_n
    C_base = C_ptr + seq * stride_C_b + states * stride_C_n

    h = tl.zeros([1, STATE_BLOCK, BLOCK_D], dtype=tl.float32)  # state after the previous step
    for start in range(0, length, CHUNK):
        t = start + steps
        tile_ok = (t < length)[:, None] & channel_ok[None, :]  # (CHUNK, BLOCK_D)
        u = tl.load(u_base + t[:, None] * stride_u_l, mask=tile_ok, other=0.0).to(tl.float32)
        delta = tl.load(delta_base + t[:, None] * stride_delta_l, mask=tile_ok, other=0.0).to(tl.float32)
        if HAS_BIAS:
            delta = delta + bias[None, :]
        if SOFTPLUS:
            delta = _softplus(delta)
        # Per-step work runs on 3-d tensors (steps, states, channels): Triton's default layout for them puts
        # lanes and warps on the channels (the last axis) and keeps steps and states inside each thread.
        delta3 = delta[:, None, :]  # (CHUNK, 1, BLOCK_D)
        du3 = (delta * u)[:, None, :]
        y3 = tl.zeros([CHUNK, 1, BLOCK_D], dtype=tl.float32)
        for step in tl.static_range(CHUNK):
            # Picking step `step` of a tile as a masked sum over the (in-thread) steps folds to a register
            # read once unrolled (-0.0 is the exact identity of +); B_t, C_t are the same for every channel.
            pick = (steps == step)[:, None, None]
            delta_t = tl.sum(tl.where(pick, delta3, -0.0), axis=0, keep_dims=True)  # (1, 1, BLOCK_D)
            du_t = tl.sum(tl.where(pick, du3, -0.0), axis=0, keep_dims=True)
            t_ok = state_ok & (start + step < length)
            B_t = tl.load(B_base + (start + step) * stride_B_l, mask=t_ok, other=0.0).to(tl.float32)
            C_t = tl.load(C_base + (start + step) * stride_C_l, mask=t_ok, other=0.0).to(tl.float32)
            h = tl.fma(tl.exp2(delta_t * A), h, du_t * B_t[None, :, None])  # (1, STATE_BLOCK, BLOCK_D)
            y3 = tl.where(pick, tl.sum(h * C_t[None, :, None], axis=1, keep_dims=True), y3)
        y = tl.sum(y3, axis=1)  # (CHUNK, BLOCK_D)

        if HAS_D:
            y = y + u * D[None, :]
        if HAS_Z:
            z = tl.load(z_base + t[:, None] * stride_z_l, mask=tile_ok, other=0.0).to(tl.float32)
            y = y * (z * tl.sigmoid(z))
        tl.store(out_base + t[:, None] * stride_out_l, y.to(out_ptr.dtype.element_ty), mask=tile_ok)


def default_config(dim: int) -> dict:
    """Tile sizes: one channel per thread, as many warps as fill 128 channels (fewer for narrow models)."""
    num_warps = DEFAULT_NUM_WARPS
    while num_warps > 1 and 32 * num_warps > triton.next_power_of_2(dim):
        num_warps //= 2
    return {"block_d": 32 * num_warps, "chunk": DEFAULT_CHUNK, "num_warps": num_warps}


def selective_scan_forward(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
    block_d: int | None = None, chunk: int | None = None, num_warps: int | None = None,
):
    """The selective scan on the Triton kernel: out (batch, Di, L) in u's dtype; no autograd.

    Shapes as `selective_scan_ref` (u, delta, z (batch, Di, L); A (Di, N); B, C (batch, N, L); D,
    delta_bias (Di,)); any strides. `block_d` (channels per program, a power of two), `chunk` (steps per
    chunk, a power of two) and `num_warps` override `default_config` (benchmarks try several).
    """
    _check_shapes(u, delta, A, B, C)
    batch, dim, length = u.shape
    state = A.shape[1]
    for name, t in (("u", u), ("delta", delta), ("z", z)):
        if t is not None and t.dtype not in TRITON_DTYPES:
            raise ValueError(f"triton selective scan: {name} has dtype {t.dtype}; supported: "
                             f"{', '.join(str(d) for d in TRITON_DTYPES)}")
    config = default_config(dim)
    block_d = block_d or config["block_d"]
    chunk = chunk or config["chunk"]
    num_warps = num_warps or config["num_warps"]
    # B, C as float32 (batch, L, N), N contiguous: each step then reads its N values as a few wide loads with
    # no per-step conversion (they are 1/Di of the data, so this copy is cheap).
    B, C = (t.transpose(1, 2).to(torch.float32, memory_format=torch.contiguous_format) for t in (B, C))
    out = torch.empty_like(u, memory_format=torch.contiguous_format)
    if out.numel() == 0:
        return out
    zz = z if z is not None else u  # placeholders for absent optional tensors: never read (constexpr flags)
    grid = (batch, triton.cdiv(dim, block_d))
    _scan_forward_kernel[grid](
        u, delta, A, B, C, D if D is not None else u, zz, delta_bias if delta_bias is not None else u, out,
        dim, length,
        *u.stride(), *delta.stride(), *A.stride(),
        B.stride(0), B.stride(2), B.stride(1), C.stride(0), C.stride(2), C.stride(1),
        *zz.stride(), *out.stride(),
        STATE=state, STATE_BLOCK=triton.next_power_of_2(state), BLOCK_D=block_d, CHUNK=chunk,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
        SOFTPLUS=bool(delta_softplus), num_warps=num_warps,
    )
    return out
