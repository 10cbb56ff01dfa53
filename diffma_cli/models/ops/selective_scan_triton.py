"""Triton selective-scan kernels (forward, backward) for short sequences (DiffMa's L = 196 ... 1024).

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
step, 168 registers at the default tile; see docs/architecture.md "Triton scan kernel"). The backward
(`_SelectiveScanFunction`) recomputes each chunk's states from checkpoints the training forward stores.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from diffma_cli.models.ops.scan_inputs import TRITON_DTYPES, check_shapes, needs_grad

#: log2(e): the kernel evaluates exp(delta·A) as exp2(delta·A·log2 e), one special-function op.
LOG2_E: tl.constexpr = tl.constexpr(1.4426950408889634)
LN_2: tl.constexpr = tl.constexpr(0.6931471805599453)  # 1 / log2(e)
#: Default tile: 32 lanes x 4 warps = 128 channels per program, 8 steps per chunk. Compiled for sm_90 with
#: N = 16: chunk 4 -> 128 registers, 8 -> 168, 16 -> 255 and spills (the unrolled chunk keeps its tiles and
#: its steps' B, C in registers). benchmarks/scan_kernels_gpu.py times the alternatives.
DEFAULT_NUM_WARPS = 4
DEFAULT_CHUNK = 8
#: Chunk of the backward kernel: it keeps a chunk's states, inputs and partial gradients in registers, so it
#: needs a shorter chunk than the forward (sm_90, N = 16: 255 registers and ~600 bytes of spills at 4).
DEFAULT_CHUNK_BACKWARD = 4
#: Backward chunks per checkpoint: the forward of a training call stores the state every
#: DEFAULT_CHUNK_BACKWARD x DEFAULT_SUBCHUNKS = 8 steps (float32 (batch, L/8, N, Di)), and the backward
#: re-advances from it to the later chunk of each pair (half the checkpoint memory of 1, ~1/8 more work).
DEFAULT_SUBCHUNKS = 2


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
def _pick(tile3, pick):
    """Row `pick` (a one-hot over the in-thread first axis) of tile3, keeping the axis: a register read once
    unrolled with a constant pick (-0.0 is the exact identity of +, so the compiler folds the sum)."""
    return tl.sum(tl.where(pick, tile3, -0.0), axis=0, keep_dims=True)


@triton.jit
def _group_sums(x, GROUPS: tl.constexpr):
    """(1, N, BLOCK_D) -> (N, GROUPS): sums over each group of BLOCK_D / GROUPS consecutive channels. With
    one group per warp these are lane reductions only (no shared memory, no barrier); the caller adds the
    groups."""
    return tl.sum(tl.reshape(x, (x.shape[1], GROUPS, x.shape[2] // GROUPS)), axis=2)


@triton.jit
def _adjoint_step(step: tl.constexpr, steps, pick, t_ok, A, B_t, C_t, delta3, du3, u3, dy3, h_all, h_start,
                  dh, dA, ddelta3, dbu3, dB_ptr, dC_ptr, dBC_at, GROUPS: tl.constexpr):
    """Step `step` of a chunk, walked backwards, of the adjoint recurrence dh <- exp(delta·A)·dh + dy·C.

    B_t, C_t: float32 (1, N, 1); the chunk's tiles as (CHUNK, 1 | N, BLOCK_D); h_start the state before the
    chunk. Stores this step's dB, dC partial sums (per channel group) at dBC_at and returns the carried
    (dh, dA, ddelta3, dbu3), where ddelta3 is dL/d delta (after softplus) and dbu3 = Σ_N dh·B per step."""
    delta_t = _pick(delta3, pick)
    dy_t = _pick(dy3, pick)
    h_t = _pick(h_all, pick)
    if step == 0:
        h_prev = h_start
    else:
        h_prev = _pick(h_all, (steps == step - 1)[:, None, None])
    dh = tl.fma(dy_t, C_t, dh)
    tl.store(dC_ptr + dBC_at, _group_sums(dy_t * h_t, GROUPS), mask=t_ok[:, None])
    tl.store(dB_ptr + dBC_at, _group_sums(dh * _pick(du3, pick), GROUPS), mask=t_ok[:, None])
    decay = tl.exp2(delta_t * A)
    dlog_decay = dh * h_prev * decay  # dL/d(delta_t·A)
    dA += dlog_decay * delta_t
    dbu = tl.sum(dh * B_t, axis=1, keep_dims=True)  # (1, 1, BLOCK_D)
    ddelta_t = tl.sum(dlog_decay * A, axis=1, keep_dims=True) * LN_2 + dbu * _pick(u3, pick)
    ddelta3 = tl.where(pick, ddelta_t, ddelta3)
    dbu3 = tl.where(pick, dbu, dbu3)
    return dh * decay, dA, ddelta3, dbu3


@triton.jit
def _state_before_chunk(checkpoint_at, start, u_base, delta_base, B_base, stride_u_l, stride_delta_l,
                        stride_B_l, steps, channel_ok, state_ok, state_channel_ok, A, bias, length,
                        SEGMENT: tl.constexpr, CHUNK: tl.constexpr, HAS_BIAS: tl.constexpr,
                        SOFTPLUS: tl.constexpr):
    """The state h before the chunk at step `start`, (1, N, BLOCK_D) float32: its segment's checkpoint
    (checkpoint_at: the segment's first state, as (1, N, BLOCK_D) pointers), advanced through the segment's
    earlier chunks (all complete: they precede this one). u, delta are read at u_base/delta_base + step ·
    stride (token-major tiles), B at B_base + step · stride_B_l (N values a step, any float dtype)."""
    h = tl.load(checkpoint_at, mask=state_channel_ok, other=0.0)
    for prior in range((start // SEGMENT) * SEGMENT, start, CHUNK):
        t_prior = (prior + steps)[:, None]
        prior_ok = (t_prior < length) & channel_ok[None, :]
        u_prior = tl.load(u_base + t_prior * stride_u_l, mask=prior_ok, other=0.0).to(tl.float32)
        delta_prior = tl.load(delta_base + t_prior * stride_delta_l, mask=prior_ok, other=0.0)
        delta_prior = delta_prior.to(tl.float32)
        if HAS_BIAS:
            delta_prior = delta_prior + bias[None, :]
        if SOFTPLUS:
            delta_prior = _softplus(delta_prior)
        delta_prior3 = delta_prior[:, None, :]
        du_prior3 = (delta_prior * u_prior)[:, None, :]
        for step in tl.static_range(CHUNK):
            pick = (steps == step)[:, None, None]
            B_t = tl.load(B_base + (prior + step) * stride_B_l, mask=state_ok, other=0.0)
            h = tl.fma(tl.exp2(_pick(delta_prior3, pick) * A), h, _pick(du_prior3, pick) *
                       B_t.to(tl.float32)[None, :, None])
    return h


@triton.jit
def _scan_forward_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, out_ptr, checkpoint_ptr,
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
    CHECKPOINT: tl.constexpr,
):
    """One program: sequence program_id(0), channels [program_id(1)·BLOCK_D, +BLOCK_D), all L steps.

    With CHECKPOINT, the state before each chunk is also written to checkpoint_ptr, float32
    (batch, chunks, N, Di), for the backward kernel.

    Tiles: steps x channels (CHUNK, BLOCK_D) for u/delta/z/out, used as (CHUNK, 1, BLOCK_D); the state h
    is (1, STATE_BLOCK, BLOCK_D); B_t, C_t are (STATE_BLOCK,) vectors read per step (the same for every
    channel), from float32 (batch, L, N) copies. Padded states (>= STATE) read A = B = C = 0, so they stay
    0 and add nothing to y; padded channels (>= dim) and steps (>= length, only at the end of the last chunk)
    compute values that are never stored.
    """
    seq = tl.program_id(0).to(tl.int64)
    channels = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    states = tl.arange(0, STATE_BLOCK)
    steps = tl.arange(0, CHUNK)
    channel_ok = channels < dim
    state_ok = states < STATE
    checkpoint_offsets = (states[:, None] * dim + channels[None, :])[None, :, :]  # (1, STATE_BLOCK, BLOCK_D)
    checkpoint_ok = (state_ok[:, None] & channel_ok[None, :])[None, :, :]
    checkpoint_base = checkpoint_ptr + seq * tl.cdiv(length, CHUNK) * STATE * dim

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
        if CHECKPOINT:
            checkpoint_at = checkpoint_base + (start // CHUNK) * STATE * dim
            tl.store(checkpoint_at + checkpoint_offsets, h, mask=checkpoint_ok)
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
            # Step `step` of the chunk; B_t, C_t are the same for every channel.
            pick = (steps == step)[:, None, None]
            delta_t = _pick(delta3, pick)  # (1, 1, BLOCK_D)
            du_t = _pick(du3, pick)
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


@triton.jit
def _scan_backward_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, dout_ptr, checkpoint_ptr,
    du_ptr, ddelta_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr,
    dim, length,
    stride_u_b, stride_u_d, stride_u_l,
    stride_delta_b, stride_delta_d, stride_delta_l,
    stride_A_d, stride_A_n,
    stride_z_b, stride_z_d, stride_z_l,
    stride_dout_b, stride_dout_d, stride_dout_l,
    STATE: tl.constexpr, STATE_BLOCK: tl.constexpr, BLOCK_D: tl.constexpr, CHUNK: tl.constexpr,
    SUBCHUNKS: tl.constexpr, GROUPS: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
):
    """Gradients of one (sequence, channel block), walking the chunks from last to first.

    The checkpoints are the states before every SUBCHUNKS·CHUNK steps (the forward ran with that chunk).
    Per chunk: reload the tiles; from the checkpoint, advance the state through the earlier chunks of its
    segment (states only), then recompute the chunk's states (kept in registers as a (CHUNK, N, BLOCK_D)
    tile); then run the adjoint recurrence backwards through the chunk's steps:
        dh_t = exp(delta_{t+1}·A)·dh_{t+1} + dy_t·C_t
        dC_t += Σ_d dy_t·h_t        dB_t += Σ_d dh_t·delta_t·u_t        dA += Σ_t dh_t·h_{t-1}·a_t·delta_t
        d delta_t = Σ_N dh_t·(h_{t-1}·a_t·A + B_t·u_t)            du_t = Σ_N dh_t·B_t·delta_t + D·dy'_t
    B, C are float32 (batch, L, N) as in the forward. Outputs: du, d delta, dz (batch, Di, L) contiguous in
    their inputs' dtypes; float32 partial sums, reduced by the caller: dA (batch, Di, N), dB, dC
    (batch, channel groups of 32, L, N), dD, d delta_bias (batch, Di).
    """
    seq = tl.program_id(0).to(tl.int64)
    block = tl.program_id(1)
    channels = block * BLOCK_D + tl.arange(0, BLOCK_D)
    states = tl.arange(0, STATE_BLOCK)
    steps = tl.arange(0, CHUNK)
    channel_ok = channels < dim
    state_ok = states < STATE
    state_channel_ok = (state_ok[:, None] & channel_ok[None, :])[None, :, :]
    checkpoint_offsets = (states[:, None] * dim + channels[None, :])[None, :, :]  # (1, STATE_BLOCK, BLOCK_D)
    chunks = tl.cdiv(length, CHUNK)
    SEGMENT = CHUNK * SUBCHUNKS  # steps per checkpoint (a constexpr product)
    checkpoint_base = checkpoint_ptr + seq * tl.cdiv(length, SEGMENT) * STATE * dim

    a_offsets = states[:, None] * stride_A_n + channels[None, :] * stride_A_d
    A = tl.load(A_ptr + a_offsets, mask=state_ok[:, None] & channel_ok[None, :], other=0.0).to(tl.float32)
    A = (A * LOG2_E)[None, :, :]  # (1, STATE_BLOCK, BLOCK_D), A·log2 e for exp2 (one copy: registers)
    if HAS_D:
        D = tl.load(D_ptr + channels, mask=channel_ok, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + channels, mask=channel_ok, other=0.0).to(tl.float32)

    u_base = u_ptr + seq * stride_u_b + channels[None, :] * stride_u_d
    delta_base = delta_ptr + seq * stride_delta_b + channels[None, :] * stride_delta_d
    z_base = z_ptr + seq * stride_z_b + channels[None, :] * stride_z_d
    dout_base = dout_ptr + seq * stride_dout_b + channels[None, :] * stride_dout_d
    grad_offsets = seq * dim * length + channels[None, :] * length  # du, d delta, dz: contiguous
    B_base = B_ptr + seq * length * STATE + states
    C_base = C_ptr + seq * length * STATE + states
    # dB, dC partials per group of BLOCK_D / GROUPS channels (a warp): summed over lanes only, no barrier.
    groups = tl.arange(0, GROUPS)
    dBC_base = (((seq * tl.num_programs(1) + block) * GROUPS + groups[None, :]) * length * STATE
                + states[:, None])  # (STATE_BLOCK, GROUPS)

    dh = tl.zeros([1, STATE_BLOCK, BLOCK_D], dtype=tl.float32)  # dL/dh_t, carried backwards
    dA = tl.zeros([1, STATE_BLOCK, BLOCK_D], dtype=tl.float32)
    dD = tl.zeros([BLOCK_D], dtype=tl.float32)
    dbias = tl.zeros([BLOCK_D], dtype=tl.float32)
    for back in range(0, chunks):
        start = (chunks - 1 - back) * CHUNK
        t = start + steps
        tile_ok = (t < length)[:, None] & channel_ok[None, :]  # (CHUNK, BLOCK_D)
        u = tl.load(u_base + t[:, None] * stride_u_l, mask=tile_ok, other=0.0).to(tl.float32)
        delta_in = tl.load(delta_base + t[:, None] * stride_delta_l, mask=tile_ok, other=0.0).to(tl.float32)
        if HAS_BIAS:
            delta_in = delta_in + bias[None, :]
        delta = delta_in
        if SOFTPLUS:
            delta = _softplus(delta_in)
        dout = tl.load(dout_base + t[:, None] * stride_dout_l, mask=tile_ok, other=0.0).to(tl.float32)
        delta3 = delta[:, None, :]  # (CHUNK, 1, BLOCK_D)
        du3 = (delta * u)[:, None, :]
        u3 = u[:, None, :]

        h_start = _state_before_chunk(
            checkpoint_base + (start // SEGMENT) * STATE * dim + checkpoint_offsets, start, u_base,
            delta_base, B_base, stride_u_l, stride_delta_l, STATE, steps, channel_ok, state_ok,
            state_channel_ok, A, bias if HAS_BIAS else 0.0, length, SEGMENT, CHUNK, HAS_BIAS, SOFTPLUS)

        # Recompute the chunk's states h_t (CHUNK, N, BLOCK_D) and, for dz, its read-out y_t.
        h = h_start
        h_all = tl.zeros([CHUNK, STATE_BLOCK, BLOCK_D], dtype=tl.float32)
        y3 = tl.zeros([CHUNK, 1, BLOCK_D], dtype=tl.float32)
        for step in tl.static_range(CHUNK):
            pick = (steps == step)[:, None, None]
            t_ok = state_ok & (start + step < length)
            B_t = tl.load(B_base + (start + step) * STATE, mask=t_ok, other=0.0)[None, :, None]
            h = tl.fma(tl.exp2(_pick(delta3, pick) * A), h, _pick(du3, pick) * B_t)
            h_all = tl.where(pick, h, h_all)
            if HAS_Z:
                C_t = tl.load(C_base + (start + step) * STATE, mask=t_ok, other=0.0)[None, :, None]
                y3 = tl.where(pick, tl.sum(h * C_t, axis=1, keep_dims=True), y3)

        # Output gate and skip: out = (y + D·u)·silu(z); dy' = dL/d(y + D·u).
        dy = dout
        if HAS_Z:
            z = tl.load(z_base + t[:, None] * stride_z_l, mask=tile_ok, other=0.0).to(tl.float32)
            gate = tl.sigmoid(z)
            pre = tl.sum(y3, axis=1)
            if HAS_D:
                pre = pre + u * D[None, :]
            dz = dout * pre * gate * (1.0 + z * (1.0 - gate))
            tl.store(dz_ptr + grad_offsets + t[:, None], dz.to(dz_ptr.dtype.element_ty), mask=tile_ok)
            dy = dout * z * gate
        du = tl.zeros([CHUNK, BLOCK_D], dtype=tl.float32)
        if HAS_D:
            du = dy * D[None, :]
            dD += tl.sum(dy * u, axis=0)
        dy3 = dy[:, None, :]

        # Adjoint steps, last to first.
        ddelta3 = tl.zeros([CHUNK, 1, BLOCK_D], dtype=tl.float32)
        dbu3 = tl.zeros([CHUNK, 1, BLOCK_D], dtype=tl.float32)  # Σ_N dh_t·B_t
        for back_step in tl.static_range(CHUNK):
            step = CHUNK - 1 - back_step
            pick = (steps == step)[:, None, None]
            t_ok = state_ok & (start + step < length)
            B_t = tl.load(B_base + (start + step) * STATE, mask=t_ok, other=0.0)[None, :, None]
            C_t = tl.load(C_base + (start + step) * STATE, mask=t_ok, other=0.0)[None, :, None]
            dh, dA, ddelta3, dbu3 = _adjoint_step(step, steps, pick, t_ok, A, B_t, C_t, delta3, du3, u3, dy3,
                                                  h_all, h_start, dh, dA, ddelta3, dbu3, dB_ptr, dC_ptr,
                                                  dBC_base + (start + step) * STATE, GROUPS)

        ddelta = tl.sum(ddelta3, axis=1)  # (CHUNK, BLOCK_D), dL/d delta after softplus
        du += tl.sum(dbu3, axis=1) * delta
        if SOFTPLUS:
            ddelta = ddelta * tl.sigmoid(delta_in)
        ddelta = tl.where(tile_ok, ddelta, 0.0)
        if HAS_BIAS:
            dbias += tl.sum(ddelta, axis=0)
        tl.store(du_ptr + grad_offsets + t[:, None], du.to(du_ptr.dtype.element_ty), mask=tile_ok)
        tl.store(ddelta_ptr + grad_offsets + t[:, None], ddelta.to(ddelta_ptr.dtype.element_ty), mask=tile_ok)

    tl.store(dA_ptr + seq * dim * STATE + (channels[None, :] * STATE + states[:, None])[None, :, :], dA,
             mask=state_channel_ok)
    if HAS_D:
        tl.store(dD_ptr + seq * dim + channels, dD, mask=channel_ok)
    if HAS_BIAS:
        tl.store(dbias_ptr + seq * dim + channels, dbias, mask=channel_ok)


def default_config(dim: int, chunk: int = DEFAULT_CHUNK) -> dict:
    """Tile sizes: one channel per thread, as many warps as fill 128 channels (fewer for narrow models)."""
    num_warps = DEFAULT_NUM_WARPS
    while num_warps > 1 and 32 * num_warps > triton.next_power_of_2(dim):
        num_warps //= 2
    return {"block_d": 32 * num_warps, "chunk": chunk, "num_warps": num_warps, "subchunks": DEFAULT_SUBCHUNKS}


def _tile(dim: int, tile: dict | None, chunk: int) -> dict:
    return {**default_config(dim, chunk), **{k: v for k, v in (tile or {}).items() if v}}


def _check_inputs(u, delta, A, B, C, z) -> None:
    check_shapes(u, delta, A, B, C)
    for name, t in (("u", u), ("delta", delta), ("z", z)):
        if t is not None and t.dtype not in TRITON_DTYPES:
            raise ValueError(f"triton selective scan: {name} has dtype {t.dtype}; supported: "
                             f"{', '.join(str(d) for d in TRITON_DTYPES)}")


def _token_major(t: torch.Tensor) -> torch.Tensor:
    """B or C (batch, N, L) -> float32 (batch, L, N), contiguous: each step then reads its N values as a few
    wide loads with no conversion (they are 1/Di of the data, so this copy is cheap)."""
    return t.transpose(1, 2).to(torch.float32).contiguous()  # .to alone keeps a float32 view's strides


def _optional(t, fallback):
    """A placeholder pointer for an absent optional tensor: never read (the kernels' constexpr flags)."""
    return t if t is not None else fallback


def _launch_forward(u, delta, A, B_tm, C_tm, D, z, delta_bias, delta_softplus, tile, checkpoint):
    """Run the forward kernel; B_tm, C_tm from `_token_major`. Returns out and the checkpoints (or None)."""
    batch, dim, length = u.shape
    state = A.shape[1]
    out = torch.empty_like(u, memory_format=torch.contiguous_format)
    chunks = triton.cdiv(length, tile["chunk"])
    checkpoints = u.new_empty((batch, chunks, state, dim), dtype=torch.float32) if checkpoint else None
    if out.numel() == 0:
        return out, checkpoints
    zz = _optional(z, u)
    _scan_forward_kernel[(batch, triton.cdiv(dim, tile["block_d"]))](
        u, delta, A, B_tm, C_tm, _optional(D, u), zz, _optional(delta_bias, u), out,
        _optional(checkpoints, u), dim, length,
        *u.stride(), *delta.stride(), *A.stride(),
        B_tm.stride(0), B_tm.stride(2), B_tm.stride(1), C_tm.stride(0), C_tm.stride(2), C_tm.stride(1),
        *zz.stride(), *out.stride(),
        STATE=state, STATE_BLOCK=triton.next_power_of_2(state), BLOCK_D=tile["block_d"], CHUNK=tile["chunk"],
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
        SOFTPLUS=bool(delta_softplus), CHECKPOINT=checkpoint, num_warps=tile["num_warps"],
    )
    return out, checkpoints


class _SelectiveScanFunction(torch.autograd.Function):
    """Forward kernel with checkpoints (the state before every chunk x subchunks steps, float32 (batch,
    segments, N, Di)), backward kernel from them; its cross-sequence and cross-block sums finish here."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, tile):
        B_tm, C_tm = _token_major(B), _token_major(C)
        segment = {**tile, "chunk": tile["chunk"] * tile["subchunks"]}  # forward chunk = checkpoint interval
        out, checkpoints = _launch_forward(u, delta, A, B_tm, C_tm, D, z, delta_bias, delta_softplus, segment,
                                           checkpoint=True)
        ctx.save_for_backward(u, delta, A, B_tm, C_tm, D, z, delta_bias, checkpoints)
        ctx.options = (bool(delta_softplus), tile, B.dtype, C.dtype)
        return out

    @staticmethod
    def backward(ctx, dout):
        u, delta, A, B_tm, C_tm, D, z, delta_bias, checkpoints = ctx.saved_tensors
        softplus, tile, B_dtype, C_dtype = ctx.options
        batch, dim, length = u.shape
        state = A.shape[1]
        blocks = triton.cdiv(dim, tile["block_d"])
        groups = max(1, tile["block_d"] // 32)  # dB, dC partials per warp-sized channel group
        contiguous = torch.contiguous_format
        du = torch.empty_like(u, memory_format=contiguous)
        ddelta = torch.empty_like(delta, memory_format=contiguous)
        dz = torch.empty_like(z, memory_format=contiguous) if z is not None else None
        f32 = {"dtype": torch.float32, "device": u.device}
        dA = torch.zeros(batch, dim, state, **f32)  # zeros: also right when L = 0 launches nothing
        dB = torch.empty(batch, blocks * groups, length, state, **f32)
        dC = torch.empty_like(dB)
        dD = torch.zeros(batch, dim, **f32) if D is not None else None
        dbias = torch.zeros(batch, dim, **f32) if delta_bias is not None else None
        zz = _optional(z, u)
        if u.numel() == 0:
            return _reduce_gradients(du, ddelta, dA, dB, dC, dD, dz, dbias, ctx, B_dtype, C_dtype)
        _scan_backward_kernel[(batch, blocks)](
            u, delta, A, B_tm, C_tm, _optional(D, u), zz, _optional(delta_bias, u), dout, checkpoints,
            du, ddelta, _optional(dz, du), dA, dB, dC, _optional(dD, dA), _optional(dbias, dA),
            dim, length,
            *u.stride(), *delta.stride(), *A.stride(), *zz.stride(), *dout.stride(),
            STATE=state, STATE_BLOCK=triton.next_power_of_2(state), BLOCK_D=tile["block_d"],
            CHUNK=tile["chunk"], SUBCHUNKS=tile["subchunks"], GROUPS=groups, HAS_D=D is not None,
            HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=softplus,
            num_warps=tile["num_warps"],
        )
        return _reduce_gradients(du, ddelta, dA, dB, dC, dD, dz, dbias, ctx, B_dtype, C_dtype)


def _reduce_gradients(du, ddelta, dA, dB, dC, dD, dz, dbias, ctx, B_dtype, C_dtype):
    """Finish the backward kernel's partial sums (over sequences; over channel groups for dB, dC) and cast
    each gradient to its input's dtype; in the order of `_SelectiveScanFunction.forward`'s arguments."""
    A, D, delta_bias = ctx.saved_tensors[2], ctx.saved_tensors[5], ctx.saved_tensors[7]
    dB = dB.sum(1).transpose(1, 2).to(B_dtype)  # (batch, N, L)
    dC = dC.sum(1).transpose(1, 2).to(C_dtype)
    dA = dA.sum(0).to(A.dtype)
    dD = dD.sum(0).to(D.dtype) if D is not None else None
    dbias = dbias.sum(0).to(delta_bias.dtype) if delta_bias is not None else None
    return du, ddelta, dA, dB, dC, dD, dz, dbias, None, None


# Kept out of torch.compile graphs (a graph break, as mamba-ssm's CUDA op is): the kernels launch as they
# do eagerly, whatever dynamo's support for user-defined Triton kernels in this torch version.
@torch.compiler.disable
def selective_scan_triton(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, tile: dict | None = None
):
    """The selective scan on the Triton kernels: out (batch, Di, L) in u's dtype, differentiable.

    Shapes as `selective_scan_ref` (u, delta, z (batch, Di, L); A (Di, N); B, C (batch, N, L); D,
    delta_bias (Di,)); any strides. When autograd records the call, the forward kernel also writes its
    checkpoints and the backward kernel runs on backward (chunk DEFAULT_CHUNK_BACKWARD); else the forward
    kernel runs alone (chunk DEFAULT_CHUNK). `tile` overrides `default_config`: "block_d" (channels per
    program, 32 x num_warps for one channel a thread), "chunk" (steps, a power of two), "num_warps",
    "subchunks" (backward chunks per checkpoint, a power of two; the forward then runs chunk x subchunks).
    """
    _check_inputs(u, delta, A, B, C, z)
    tensors = (u, delta, A, B, C, D, z, delta_bias)
    if needs_grad(*tensors):
        return _SelectiveScanFunction.apply(*tensors, delta_softplus, _tile(u.shape[1], tile,
                                                                           DEFAULT_CHUNK_BACKWARD))
    out, _ = _launch_forward(u, delta, A, _token_major(B), _token_major(C), D, z, delta_bias, delta_softplus,
                             _tile(u.shape[1], tile, DEFAULT_CHUNK), checkpoint=False)
    return out
