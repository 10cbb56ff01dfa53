"""Triton kernels that fuse a `MultiOrderMamba` mixer's multi-order reads and merge into its conv and scan.

The unfused mixer (`MultiOrderMamba._scan`) gathers in_proj's output xz (N, T, 2Di) into K orders
(N, K, L, 2Di), copies that into the channel-first layout (N·K, 2Di, L), runs the convolution and the scan,
and gathers each token's K outputs back after out_proj: on an H100 those copies cost about a quarter of a
DiffMa training step. Here, for orders that are permutations of all T tokens (L = T, merge "sum"):

- `order_conv_silu` (kernel A) reads the u half of xz token-major through the order indices, applies the
  causal depthwise convolution and SiLU, and writes u (N·K, L, Di) token-major: the layout x_proj (a
  matmul over the last axis) reads without a copy, and in which dt_proj's output delta (N·K, L, Di) and
  x_proj's B, C (views of (N·K, L, R + 2N)) already are.
- `order_scan_merge` (kernel B) runs the selective scan on those token-major tensors (a step's Di channels
  are adjacent, so a chunk's (steps, channels) tiles load as coalesced rows), reads z from the z half of xz
  through the order indices, and writes the gated output already merged: y (N, T, Di) = Σ_k y_k at raster
  positions. out_proj has no bias, so out_proj(Σ_k y_k) = Σ_k out_proj(y_k), the unfused merge. One program
  owns one sample and BLOCK_D channels and walks its K orders one after another, adding each into y (a
  barrier between orders orders the read-back of y), so the sum needs no atomics.

Gradients: kernel A's backward is two Triton kernels without atomics: one recomputes the convolution and
writes dL/d(pre-activation) (float32, (N·K, L, Di)) with per-program partial sums for the weight and bias;
one gathers, for each token and channel, the taps of the K orders that read it (the inverse permutation,
`restore`) into dL/du. Kernel B's backward is one kernel with kernel B's grid and walk: per order, it reads
dL/dy (N, T, Di) at the order's tokens (the output gradient of each order is the merged one read in its
order, since merging is a sum) and z from xz by index, recomputes the states chunk by chunk from the
checkpoints its training forward stored (the state before every 8 steps, float32 (N·K, L/8, N, Di): 150 MiB
per call for DiffMa-B/2 at batch 32, 96 x 1024 x 196 with N = 16, kept until the backward, as the unfused
Triton scan keeps them), runs the adjoint recurrence of `selective_scan_triton`'s backward, and adds dL/dz
into a float32 (N, T, Di) buffer at the tokens: the first order stores, later ones read back and add
(a barrier between orders), so each token's K gradients are summed without atomics, in float32, rounded
once. du, d delta come out token-major (N·K, L, Di); dA, dD, d delta_bias are summed over the orders in
registers, dB, dC over warp-sized channel groups then by the caller. Not fused: the split of xz's gradient
halves (autograd concatenates them), x_proj, dt_proj and out_proj (cuBLAS matmuls).

The conv and scan backend choices (`conv_backend`, `scan_backend`) do not apply on this path. Computation
is in float32 (the K orders are summed in a float32 buffer, rounded once); outputs are in xz's dtype.
Importing this module imports triton: `mamba.py` imports it lazily, only when the "fused_triton" mixer
backend is chosen.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import nn

from diffma_cli.models.ops.scan_inputs import needs_grad
from diffma_cli.models.ops.selective_scan_triton import (
    DEFAULT_CHUNK_BACKWARD,
    LOG2_E,
    _adjoint_step,
    _pick,
    _softplus,
    _state_before_chunk,
    default_config,
)

#: Steps per program of the convolution kernels (rows of their (BLOCK_L, BLOCK_D) tiles).
CONV_BLOCK_L = 32
#: Tokens per program of the convolution's input-gradient kernel.
CONV_BLOCK_T = 32
#: Kernel B's grid. "serial": one program per (sample, channel block) walks the K orders in turn and sums
#: them in place; "split": one program per (sample, channel block, order), each order's output in its own
#: float32 buffer, summed by the caller (K x the programs, one more pass over K (N, T, Di) buffers);
#: "auto": split when the serial grid has fewer than SPLIT_BELOW programs (too few warps to hide the
#: latency of a GPU's ~100 multiprocessors).
SPLIT_ORDERS = "auto"
SPLIT_BELOW = 1024
#: Overrides of kernel B's tile (`default_config` keys: block_d, num_warps, chunk, subchunks), for sweeps.
TILE_OVERRIDE: dict = {}


@triton.jit
def _tap(x_ptr, orders_ptr, sample, order, steps, channels, channel_ok, length,
         stride_x_b, stride_x_t, stride_x_d, SHIFT: tl.constexpr):
    """(BLOCK_L, BLOCK_D) tile of x at the tokens that order `order` reads SHIFT steps before `steps`;
    zeros before the sequence start (the causal padding) and past its end."""
    position = steps - SHIFT
    ok = (position >= 0) & (position < length)
    tokens = tl.load(orders_ptr + order * length + position, mask=ok, other=0).to(tl.int64)
    offsets = sample * stride_x_b + tokens[:, None] * stride_x_t + channels[None, :] * stride_x_d
    return tl.load(x_ptr + offsets, mask=ok[:, None] & channel_ok[None, :], other=0.0).to(tl.float32)


@triton.jit
def _conv_pre(x_ptr, orders_ptr, weight_ptr, bias_ptr, sample, order, steps, channels, channel_ok, length,
              stride_x_b, stride_x_t, stride_x_d, stride_w_d, stride_w_k,
              WIDTH: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr):
    """(BLOCK_L, BLOCK_D) float32 tile of the convolution before SiLU: bias + Σ_i w_i · x at step − i."""
    bias = tl.load(bias_ptr + channels, mask=channel_ok, other=0.0).to(tl.float32)
    pre = tl.zeros([BLOCK_L, BLOCK_D], dtype=tl.float32) + bias[None, :]
    for shift in tl.static_range(WIDTH):
        w = tl.load(weight_ptr + channels * stride_w_d + (WIDTH - 1 - shift) * stride_w_k, mask=channel_ok,
                    other=0.0).to(tl.float32)
        x = _tap(x_ptr, orders_ptr, sample, order, steps, channels, channel_ok, length,
                 stride_x_b, stride_x_t, stride_x_d, shift)
        pre += w[None, :] * x
    return pre


@triton.jit
def _conv_forward_kernel(
    x_ptr, orders_ptr, weight_ptr, bias_ptr, out_ptr,
    orders_count, length, dim,
    stride_x_b, stride_x_t, stride_x_d,
    stride_w_d, stride_w_k,
    WIDTH: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """One program: sequence program_id(0) = n·K + k, steps [program_id(1)·BLOCK_L, +BLOCK_L), channels
    [program_id(2)·BLOCK_D, +BLOCK_D). out (N·K, L, Di) contiguous = SiLU(bias + Σ_i w_i · x at step − i)."""
    seq = tl.program_id(0).to(tl.int64)
    sample, order = seq // orders_count, seq % orders_count
    steps = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
    channels = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    channel_ok = channels < dim
    pre = _conv_pre(x_ptr, orders_ptr, weight_ptr, bias_ptr, sample, order, steps, channels, channel_ok,
                    length, stride_x_b, stride_x_t, stride_x_d, stride_w_d, stride_w_k,
                    WIDTH, BLOCK_L, BLOCK_D)
    out = pre * tl.sigmoid(pre)
    tile_ok = (steps < length)[:, None] & channel_ok[None, :]
    offsets = (seq * length + steps[:, None]) * dim + channels[None, :]
    tl.store(out_ptr + offsets, out.to(out_ptr.dtype.element_ty), mask=tile_ok)


@triton.jit
def _conv_backward_kernel(
    x_ptr, orders_ptr, weight_ptr, bias_ptr, dout_ptr, dpre_ptr, dweight_ptr, dbias_ptr,
    orders_count, length, dim,
    stride_x_b, stride_x_t, stride_x_d,
    stride_w_d, stride_w_k,
    stride_dout_b, stride_dout_l, stride_dout_d,
    WIDTH: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """The forward's tile again, then dpre = dout · SiLU'(pre) (float32 (N·K, L, Di) contiguous) and this
    tile's sums Σ_steps dpre·x for each tap and Σ_steps dpre, float32 (N·K, L blocks, WIDTH | 1, Di)."""
    seq = tl.program_id(0).to(tl.int64)
    sample, order = seq // orders_count, seq % orders_count
    block = seq * tl.num_programs(1) + tl.program_id(1)
    steps = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
    channels = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    channel_ok = channels < dim
    tile_ok = (steps < length)[:, None] & channel_ok[None, :]
    pre = _conv_pre(x_ptr, orders_ptr, weight_ptr, bias_ptr, sample, order, steps, channels, channel_ok,
                    length, stride_x_b, stride_x_t, stride_x_d, stride_w_d, stride_w_k,
                    WIDTH, BLOCK_L, BLOCK_D)
    dout_offsets = seq * stride_dout_b + steps[:, None] * stride_dout_l + channels[None, :] * stride_dout_d
    dout = tl.load(dout_ptr + dout_offsets, mask=tile_ok, other=0.0).to(tl.float32)
    gate = tl.sigmoid(pre)
    dpre = tl.where(tile_ok, dout * gate * (1.0 + pre * (1.0 - gate)), 0.0)
    tl.store(dpre_ptr + (seq * length + steps[:, None]) * dim + channels[None, :], dpre, mask=tile_ok)
    tl.store(dbias_ptr + block * dim + channels, tl.sum(dpre, axis=0), mask=channel_ok)
    # The taps are read again rather than kept from above: a static_range cannot collect them in a list.
    for shift in tl.static_range(WIDTH):
        x = _tap(x_ptr, orders_ptr, sample, order, steps, channels, channel_ok, length,
                 stride_x_b, stride_x_t, stride_x_d, shift)
        tl.store(dweight_ptr + (block * WIDTH + WIDTH - 1 - shift) * dim + channels, tl.sum(dpre * x, axis=0),
                 mask=channel_ok)


@triton.jit
def _conv_input_grad_kernel(
    dpre_ptr, restore_ptr, weight_ptr, dx_ptr,
    orders_count, length, num_tokens, dim,
    stride_w_d, stride_w_k,
    WIDTH: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """dx (N, T, Di) contiguous for sample program_id(0), tokens [program_id(1)·BLOCK_T, +BLOCK_T),
    channels [program_id(2)·BLOCK_D, +BLOCK_D): token t, read by order k at step restore[k, t] (= L where
    k skips t), feeds that order's steps restore[k, t] + i through tap w_{WIDTH-1-i}; the program sums
    them over all orders, so no two programs write one element."""
    sample = tl.program_id(0).to(tl.int64)
    tokens = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    channels = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    token_ok = tokens < num_tokens
    channel_ok = channels < dim
    dx = tl.zeros([BLOCK_T, BLOCK_D], dtype=tl.float32)
    for order in range(orders_count):
        position = tl.load(restore_ptr + order * num_tokens + tokens, mask=token_ok, other=length)
        seq_base = dpre_ptr + (sample * orders_count + order) * length * dim + channels[None, :]
        for shift in tl.static_range(WIDTH):
            w = tl.load(weight_ptr + channels * stride_w_d + (WIDTH - 1 - shift) * stride_w_k,
                        mask=channel_ok, other=0.0).to(tl.float32)
            step = position + shift
            ok = (step < length)[:, None] & channel_ok[None, :]
            dx += w[None, :] * tl.load(seq_base + step[:, None].to(tl.int64) * dim, mask=ok, other=0.0)
    offsets = (sample * num_tokens + tokens[:, None]) * dim + channels[None, :]
    tl.store(dx_ptr + offsets, dx.to(dx_ptr.dtype.element_ty), mask=token_ok[:, None] & channel_ok[None, :])


@triton.jit
def _order_range(orders_count, SPLIT: tl.constexpr):
    """The orders one program of kernel B walks: program_id(2)'s alone with SPLIT, else all K."""
    if SPLIT:
        first = tl.program_id(2)
        count = 1
    else:
        first = 0
        count = orders_count
    return first, count


@triton.jit
def _scan_merge_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, orders_ptr, out_ptr, checkpoint_ptr,
    orders_count, length, dim,
    stride_u_b, stride_u_l, stride_u_d,
    stride_delta_b, stride_delta_l, stride_delta_d,
    stride_A_d, stride_A_n,
    stride_B_b, stride_B_l, stride_B_n,
    stride_C_b, stride_C_l, stride_C_n,
    stride_z_b, stride_z_t, stride_z_d,
    STATE: tl.constexpr, STATE_BLOCK: tl.constexpr, BLOCK_D: tl.constexpr, CHUNK: tl.constexpr,
    CHECKPOINT: tl.constexpr, SPLIT: tl.constexpr,
):
    """One program: sample program_id(0), channels [program_id(1)·BLOCK_D, +BLOCK_D), its K orders in turn.

    Per order, the recurrence of `_scan_forward_kernel` (delta + bias, softplus, D skip, SiLU(z) gate) on
    token-major u, delta (N·K, L, Di) and B, C (N·K, L, N); z is read from (N, T, Di) at the tokens the order
    reads, and out (float32 (N, T, Di) contiguous) gets each step's output added at that token. With
    CHECKPOINT, the state before each chunk is also written to checkpoint_ptr, float32
    (N·K, chunks, N, Di), for `_scan_merge_backward_kernel`. With SPLIT, program_id(2) picks one order and
    out is float32 (N·K, T, Di): each order's output at raster positions, summed over K by the caller (3 x
    the programs, for batches too small to fill the card).
    """
    sample = tl.program_id(0).to(tl.int64)
    channels = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    states = tl.arange(0, STATE_BLOCK)
    steps = tl.arange(0, CHUNK)
    channel_ok = channels < dim
    state_ok = states < STATE

    a_offsets = states[:, None] * stride_A_n + channels[None, :] * stride_A_d
    A = tl.load(A_ptr + a_offsets, mask=state_ok[:, None] & channel_ok[None, :], other=0.0).to(tl.float32)
    A = (A * LOG2_E)[None, :, :]  # (1, STATE_BLOCK, BLOCK_D)
    D = tl.load(D_ptr + channels, mask=channel_ok, other=0.0).to(tl.float32)
    bias = tl.load(bias_ptr + channels, mask=channel_ok, other=0.0).to(tl.float32)
    z_base = z_ptr + sample * stride_z_b + channels[None, :] * stride_z_d
    checkpoint_offsets = (states[:, None] * dim + channels[None, :])[None, :, :]  # (1, STATE_BLOCK, BLOCK_D)
    checkpoint_ok = (state_ok[:, None] & channel_ok[None, :])[None, :, :]
    first, count = _order_range(orders_count, SPLIT)

    for order in range(first, first + count):
        seq = sample * orders_count + order
        out_base = out_ptr + (seq if SPLIT else sample) * length * dim + channels[None, :]
        u_base = u_ptr + seq * stride_u_b + channels[None, :] * stride_u_d
        delta_base = delta_ptr + seq * stride_delta_b + channels[None, :] * stride_delta_d
        B_base = B_ptr + seq * stride_B_b + states * stride_B_n
        C_base = C_ptr + seq * stride_C_b + states * stride_C_n
        checkpoint_base = checkpoint_ptr + seq * tl.cdiv(length, CHUNK) * STATE * dim
        h = tl.zeros([1, STATE_BLOCK, BLOCK_D], dtype=tl.float32)
        for start in range(0, length, CHUNK):
            if CHECKPOINT:
                tl.store(checkpoint_base + (start // CHUNK) * STATE * dim + checkpoint_offsets, h,
                         mask=checkpoint_ok)
            t = start + steps
            step_ok = t < length
            tile_ok = step_ok[:, None] & channel_ok[None, :]  # (CHUNK, BLOCK_D)
            u = tl.load(u_base + t[:, None] * stride_u_l, mask=tile_ok, other=0.0).to(tl.float32)
            delta = tl.load(delta_base + t[:, None] * stride_delta_l, mask=tile_ok, other=0.0)
            delta = _softplus(delta.to(tl.float32) + bias[None, :])
            delta3 = delta[:, None, :]  # (CHUNK, 1, BLOCK_D): see selective_scan_triton's docstring
            du3 = (delta * u)[:, None, :]
            y3 = tl.zeros([CHUNK, 1, BLOCK_D], dtype=tl.float32)
            for step in tl.static_range(CHUNK):
                pick = (steps == step)[:, None, None]
                t_ok = state_ok & (start + step < length)
                B_t = tl.load(B_base + (start + step) * stride_B_l, mask=t_ok, other=0.0).to(tl.float32)
                C_t = tl.load(C_base + (start + step) * stride_C_l, mask=t_ok, other=0.0).to(tl.float32)
                h = tl.fma(tl.exp2(_pick(delta3, pick) * A), h, _pick(du3, pick) * B_t[None, :, None])
                y3 = tl.where(pick, tl.sum(h * C_t[None, :, None], axis=1, keep_dims=True), y3)
            y = tl.sum(y3, axis=1) + u * D[None, :]  # (CHUNK, BLOCK_D)

            tokens = tl.load(orders_ptr + order * length + t, mask=step_ok, other=0).to(tl.int64)[:, None]
            z = tl.load(z_base + tokens * stride_z_t, mask=tile_ok, other=0.0).to(tl.float32)
            y = y * (z * tl.sigmoid(z))
            earlier = tl.load(out_base + tokens * dim, mask=tile_ok & (order > first), other=0.0)
            tl.store(out_base + tokens * dim, earlier + y, mask=tile_ok)
        # The next order reads back what this one added, at other steps: possibly another thread's stores.
        tl.debug_barrier()


@triton.jit
def _scan_merge_backward_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, orders_ptr, dout_ptr, checkpoint_ptr,
    du_ptr, ddelta_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr,
    orders_count, length, dim,
    stride_u_b, stride_u_l, stride_u_d,
    stride_delta_b, stride_delta_l, stride_delta_d,
    stride_A_d, stride_A_n,
    stride_B_b, stride_B_l, stride_B_n,
    stride_C_b, stride_C_l, stride_C_n,
    stride_z_b, stride_z_t, stride_z_d,
    stride_dout_b, stride_dout_t, stride_dout_d,
    STATE: tl.constexpr, STATE_BLOCK: tl.constexpr, BLOCK_D: tl.constexpr, CHUNK: tl.constexpr,
    SUBCHUNKS: tl.constexpr, GROUPS: tl.constexpr, SPLIT: tl.constexpr,
):
    """Gradients of one (sample, channel block): its K orders in turn, each walked from last chunk to first.

    Per order, the adjoint recurrence of `_scan_backward_kernel` (states recomputed from the checkpoints that
    `_scan_merge_kernel` wrote every SUBCHUNKS·CHUNK steps) on the token-major inputs. The order's output
    gradient is the merged one read at its tokens, dout (N, T, Di) at orders[k, j]; z is read there too,
    and dz (float32 (N, T, Di) contiguous) gets each step's gradient added at its token: the first order
    stores, the later ones read back and add (a barrier between orders, as in the forward), so every token
    sums its K orders' gradients without atomics. Outputs: du, d delta (N·K, L, Di) contiguous in their
    inputs' dtypes; float32 partial sums, reduced by the caller: dA (N, Di, N), dB, dC (N·K, channel
    groups of BLOCK_D / GROUPS, L, N), dD, d delta_bias (N, Di). With SPLIT (as in the forward),
    program_id(2) picks one order, and dz, dA, dD, d delta_bias get a row per (sample, order): (N·K, ...).
    """
    sample = tl.program_id(0).to(tl.int64)
    block = tl.program_id(1)
    channels = block * BLOCK_D + tl.arange(0, BLOCK_D)
    states = tl.arange(0, STATE_BLOCK)
    steps = tl.arange(0, CHUNK)
    channel_ok = channels < dim
    state_ok = states < STATE
    state_channel_ok = (state_ok[:, None] & channel_ok[None, :])[None, :, :]
    checkpoint_offsets = (states[:, None] * dim + channels[None, :])[None, :, :]  # (1, STATE_BLOCK, BLOCK_D)
    chunks = tl.cdiv(length, CHUNK)
    SEGMENT = CHUNK * SUBCHUNKS  # steps per checkpoint
    segments = tl.cdiv(length, SEGMENT)

    a_offsets = states[:, None] * stride_A_n + channels[None, :] * stride_A_d
    A = tl.load(A_ptr + a_offsets, mask=state_ok[:, None] & channel_ok[None, :], other=0.0).to(tl.float32)
    A = (A * LOG2_E)[None, :, :]  # (1, STATE_BLOCK, BLOCK_D)
    D = tl.load(D_ptr + channels, mask=channel_ok, other=0.0).to(tl.float32)
    bias = tl.load(bias_ptr + channels, mask=channel_ok, other=0.0).to(tl.float32)
    z_base = z_ptr + sample * stride_z_b + channels[None, :] * stride_z_d
    dout_base = dout_ptr + sample * stride_dout_b + channels[None, :] * stride_dout_d
    groups = tl.arange(0, GROUPS)
    first, count = _order_range(orders_count, SPLIT)
    row = sample * orders_count + first if SPLIT else sample  # of dz, dA, dD, d delta_bias
    dz_base = dz_ptr + row * length * dim + channels[None, :]

    dA = tl.zeros([1, STATE_BLOCK, BLOCK_D], dtype=tl.float32)
    dD = tl.zeros([BLOCK_D], dtype=tl.float32)
    dbias = tl.zeros([BLOCK_D], dtype=tl.float32)
    for order in range(first, first + count):
        seq = sample * orders_count + order
        u_base = u_ptr + seq * stride_u_b + channels[None, :] * stride_u_d
        delta_base = delta_ptr + seq * stride_delta_b + channels[None, :] * stride_delta_d
        B_base = B_ptr + seq * stride_B_b + states * stride_B_n
        C_base = C_ptr + seq * stride_C_b + states * stride_C_n
        grad_base = seq * length * dim + channels[None, :]  # du, d delta: (N·K, L, Di) contiguous
        checkpoint_base = checkpoint_ptr + seq * segments * STATE * dim
        # dB, dC partials per group of BLOCK_D / GROUPS channels (a warp): summed over lanes only.
        dBC_base = (((seq * tl.num_programs(1) + block) * GROUPS + groups[None, :]) * length * STATE
                    + states[:, None])  # (STATE_BLOCK, GROUPS)
        dh = tl.zeros([1, STATE_BLOCK, BLOCK_D], dtype=tl.float32)  # dL/dh_t, carried backwards
        for back in range(0, chunks):
            start = (chunks - 1 - back) * CHUNK
            t = start + steps
            step_ok = t < length
            tile_ok = step_ok[:, None] & channel_ok[None, :]  # (CHUNK, BLOCK_D)
            u = tl.load(u_base + t[:, None] * stride_u_l, mask=tile_ok, other=0.0).to(tl.float32)
            delta_in = tl.load(delta_base + t[:, None] * stride_delta_l, mask=tile_ok, other=0.0)
            delta_in = delta_in.to(tl.float32) + bias[None, :]
            delta = _softplus(delta_in)
            tokens = tl.load(orders_ptr + order * length + t, mask=step_ok, other=0).to(tl.int64)[:, None]
            dout = tl.load(dout_base + tokens * stride_dout_t, mask=tile_ok, other=0.0).to(tl.float32)
            delta3 = delta[:, None, :]  # (CHUNK, 1, BLOCK_D)
            du3 = (delta * u)[:, None, :]
            u3 = u[:, None, :]

            h_start = _state_before_chunk(
                checkpoint_base + (start // SEGMENT) * STATE * dim + checkpoint_offsets, start, u_base,
                delta_base, B_base, stride_u_l, stride_delta_l, stride_B_l, steps, channel_ok, state_ok,
                state_channel_ok, A, bias, length, SEGMENT, CHUNK, True, True)

            # Recompute the chunk's states h_t (CHUNK, N, BLOCK_D) and, for dz, its read-out y_t.
            h = h_start
            h_all = tl.zeros([CHUNK, STATE_BLOCK, BLOCK_D], dtype=tl.float32)
            y3 = tl.zeros([CHUNK, 1, BLOCK_D], dtype=tl.float32)
            for step in tl.static_range(CHUNK):
                pick = (steps == step)[:, None, None]
                t_ok = state_ok & (start + step < length)
                B_t = tl.load(B_base + (start + step) * stride_B_l, mask=t_ok, other=0.0).to(tl.float32)
                C_t = tl.load(C_base + (start + step) * stride_C_l, mask=t_ok, other=0.0).to(tl.float32)
                h = tl.fma(tl.exp2(_pick(delta3, pick) * A), h, _pick(du3, pick) * B_t[None, :, None])
                h_all = tl.where(pick, h, h_all)
                y3 = tl.where(pick, tl.sum(h * C_t[None, :, None], axis=1, keep_dims=True), y3)

            # Output gate and skip: out = (y + D·u)·silu(z); dy' = dL/d(y + D·u). dz is added at the tokens.
            z = tl.load(z_base + tokens * stride_z_t, mask=tile_ok, other=0.0).to(tl.float32)
            gate = tl.sigmoid(z)
            pre = tl.sum(y3, axis=1) + u * D[None, :]
            dz = dout * pre * gate * (1.0 + z * (1.0 - gate))
            earlier = tl.load(dz_base + tokens * dim, mask=tile_ok & (order > first), other=0.0)
            tl.store(dz_base + tokens * dim, earlier + dz, mask=tile_ok)
            dy = dout * z * gate
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
                B_t = tl.load(B_base + (start + step) * stride_B_l, mask=t_ok, other=0.0)
                C_t = tl.load(C_base + (start + step) * stride_C_l, mask=t_ok, other=0.0)
                dh, dA, ddelta3, dbu3 = _adjoint_step(
                    step, steps, pick, t_ok, A, B_t.to(tl.float32)[None, :, None],
                    C_t.to(tl.float32)[None, :, None], delta3, du3, u3, dy3, h_all, h_start, dh, dA, ddelta3,
                    dbu3, dB_ptr, dC_ptr, dBC_base + (start + step) * STATE, GROUPS)

            ddelta = tl.sum(ddelta3, axis=1) * tl.sigmoid(delta_in)  # dL/d(delta + bias), through softplus
            ddelta = tl.where(tile_ok, ddelta, 0.0)
            dbias += tl.sum(ddelta, axis=0)
            du += tl.sum(dbu3, axis=1) * delta
            tl.store(du_ptr + grad_base + t[:, None] * dim, du.to(du_ptr.dtype.element_ty), mask=tile_ok)
            tl.store(ddelta_ptr + grad_base + t[:, None] * dim, ddelta.to(ddelta_ptr.dtype.element_ty),
                     mask=tile_ok)
        # The next order reads back dz that this one added, at other steps: possibly another thread's stores.
        tl.debug_barrier()

    tl.store(dA_ptr + row * dim * STATE + (channels[None, :] * STATE + states[:, None])[None, :, :], dA,
             mask=state_channel_ok)
    tl.store(dD_ptr + row * dim + channels, dD, mask=channel_ok)
    tl.store(dbias_ptr + row * dim + channels, dbias, mask=channel_ok)


def _conv_block_d(dim: int) -> int:
    """Channels per program of the convolution kernels: 128 (4 warps' worth of adjacent channels, wide
    coalesced row loads), fewer for narrow models."""
    return min(128, triton.next_power_of_2(dim))


class _OrderConvFunction(torch.autograd.Function):
    """x (N, T, Di) any strides -> SiLU(causal depthwise conv) of its K orders, (N·K, L, Di) contiguous."""

    @staticmethod
    def forward(ctx, x, weight, bias, orders, restore):
        batch, _, dim = x.shape
        k, length = orders.shape
        width = weight.shape[-1]
        block_d = _conv_block_d(dim)
        out = x.new_empty(batch * k, length, dim)
        grid = (batch * k, triton.cdiv(length, CONV_BLOCK_L), triton.cdiv(dim, block_d))
        if out.numel():
            _conv_forward_kernel[grid](
                x, orders, weight, bias, out, k, length, dim, *x.stride(), weight.stride(0), weight.stride(2),
                WIDTH=width, BLOCK_L=CONV_BLOCK_L, BLOCK_D=block_d,
            )
        ctx.save_for_backward(x, weight, bias, orders, restore)
        return out

    @staticmethod
    def backward(ctx, dout):
        x, weight, bias, orders, restore = ctx.saved_tensors
        batch, num_tokens, dim = x.shape
        k, length = orders.shape
        width = weight.shape[-1]
        block_d = _conv_block_d(dim)
        grid = (batch * k, triton.cdiv(length, CONV_BLOCK_L), triton.cdiv(dim, block_d))
        f32 = {"dtype": torch.float32, "device": x.device}
        dpre = torch.empty(batch * k, length, dim, **f32)
        dweight = torch.zeros(batch * k, grid[1], width, dim, **f32)  # zeros: also right when L = 0
        dbias = torch.zeros(batch * k, grid[1], dim, **f32)
        dx = torch.empty(batch, num_tokens, dim, dtype=x.dtype, device=x.device)
        if dpre.numel():
            _conv_backward_kernel[grid](
                x, orders, weight, bias, dout, dpre, dweight, dbias, k, length, dim,
                *x.stride(), weight.stride(0), weight.stride(2), *dout.stride(),
                WIDTH=width, BLOCK_L=CONV_BLOCK_L, BLOCK_D=block_d,
            )
        if dx.numel():
            token_grid = (batch, triton.cdiv(num_tokens, CONV_BLOCK_T), triton.cdiv(dim, block_d))
            _conv_input_grad_kernel[token_grid](
                dpre, restore, weight, dx, k, length, num_tokens, dim, weight.stride(0), weight.stride(2),
                WIDTH=width, BLOCK_T=CONV_BLOCK_T, BLOCK_D=block_d,
            )
        dweight = dweight.sum((0, 1)).t()[:, None, :].to(weight.dtype)  # (Di, 1, WIDTH), as weight
        return dx, dweight, dbias.sum((0, 1)).to(bias.dtype), None, None


def order_conv_silu(x, weight, bias, orders, restore):
    """SiLU of the depthwise causal convolution (weight (Di, 1, W), bias (Di,), as nn.Conv1d holds them) of
    the tokens x (N, T, Di) read in K orders: (N·K, L, Di) contiguous, row n·K + k, step j reading token
    orders[k, j]. restore (K, T): the step at which order k reads token t, L where it skips t (any orders of
    distinct tokens per row work here, not only permutations). Differentiable w.r.t. x, weight, bias."""
    return _OrderConvFunction.apply(x, weight, bias, orders, restore)


def _split_orders(programs: int) -> bool:
    if SPLIT_ORDERS not in ("auto", "serial", "split"):
        raise ValueError(f"SPLIT_ORDERS must be auto, serial or split, not {SPLIT_ORDERS!r}")
    return SPLIT_ORDERS == "split" or (SPLIT_ORDERS == "auto" and programs < SPLIT_BELOW)


class _OrderScanMergeFunction(torch.autograd.Function):
    """Kernel B: forward (with checkpoints when autograd records the call) and fused backward."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, orders, checkpoint):
        batch, num_tokens, dim = z.shape
        k, length = orders.shape
        state = A.shape[1]
        # The backward's tile; the forward runs chunk x subchunks steps per chunk (8 by default, the
        # inference tile's chunk too) and then checkpoints the state before each of its chunks.
        tile = {**default_config(dim, DEFAULT_CHUNK_BACKWARD), **TILE_OVERRIDE}
        blocks = triton.cdiv(dim, tile["block_d"])
        split = _split_orders(batch * blocks)
        chunk = tile["chunk"] * tile["subchunks"]
        checkpoints = None
        if checkpoint:
            checkpoints = torch.empty(batch * k, triton.cdiv(length, chunk), state, dim, dtype=torch.float32,
                                      device=u.device)
        # float32 whatever u's dtype: the K orders' outputs are summed in it, rounded once at the end.
        merged = torch.empty(batch * k if split else batch, num_tokens, dim, dtype=torch.float32,
                             device=u.device)
        if merged.numel():
            _scan_merge_kernel[(batch, blocks, k if split else 1)](
                u, delta, A, B, C, D, z, delta_bias, orders, merged, checkpoints if checkpoint else merged,
                k, length, dim,
                *u.stride(), *delta.stride(), *A.stride(), *B.stride(), *C.stride(), *z.stride(),
                STATE=state, STATE_BLOCK=triton.next_power_of_2(state), BLOCK_D=tile["block_d"],
                CHUNK=chunk, CHECKPOINT=checkpoint, SPLIT=split, num_warps=tile["num_warps"],
            )
        if split:
            merged = merged.view(batch, k, num_tokens, dim).sum(1)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, orders, checkpoints)
        ctx.tile, ctx.split = tile, split
        return merged.to(u.dtype)

    @staticmethod
    def backward(ctx, dmerged):
        u, delta, A, B, C, D, z, delta_bias, orders, checkpoints = ctx.saved_tensors
        tile, split = ctx.tile, ctx.split
        batch, num_tokens, dim = z.shape
        k, length = orders.shape
        state = A.shape[1]
        blocks = triton.cdiv(dim, tile["block_d"])
        groups = max(1, tile["block_d"] // 32)  # dB, dC partials per warp-sized channel group
        f32 = {"dtype": torch.float32, "device": u.device}
        du = torch.empty(batch * k, length, dim, dtype=u.dtype, device=u.device)
        ddelta = torch.empty(batch * k, length, dim, dtype=delta.dtype, device=u.device)
        # float32: each token's K gradients are summed in it, rounded once (no copy when z is float32).
        rows = batch * k if split else batch  # of dz, dA, dD, d delta_bias: per order when split
        dz = torch.empty(rows, num_tokens, dim, **f32)
        dA = torch.zeros(rows, dim, state, **f32)  # zeros: also right when nothing launches
        dB = torch.empty(batch * k, blocks * groups, length, state, **f32)
        dC = torch.empty_like(dB)
        dD = torch.zeros(rows, dim, **f32)
        dbias = torch.zeros(rows, dim, **f32)
        if u.numel():
            _scan_merge_backward_kernel[(batch, blocks, k if split else 1)](
                u, delta, A, B, C, D, z, delta_bias, orders, dmerged, checkpoints,
                du, ddelta, dz, dA, dB, dC, dD, dbias, k, length, dim,
                *u.stride(), *delta.stride(), *A.stride(), *B.stride(), *C.stride(), *z.stride(),
                *dmerged.stride(),
                STATE=state, STATE_BLOCK=triton.next_power_of_2(state), BLOCK_D=tile["block_d"],
                CHUNK=tile["chunk"], SUBCHUNKS=tile["subchunks"], GROUPS=groups, SPLIT=split,
                num_warps=tile["num_warps"],
            )
        if split:
            dz = dz.view(batch, k, num_tokens, dim).sum(1)
        return (du, ddelta, dA.sum(0).to(A.dtype), dB.sum(1).to(B.dtype), dC.sum(1).to(C.dtype),
                dD.sum(0).to(D.dtype), dz.to(z.dtype), dbias.sum(0).to(delta_bias.dtype), None, None)


def order_scan_merge(u, delta, A, B, C, D, z, delta_bias, orders):
    """The selective scan (`selective_scan_ref` with D, z, delta_bias, softplus) of K orders, summed back at
    the tokens: (N, T, Di) in u's dtype, differentiable.

    u, delta (N·K, L, Di) and B, C (N·K, L, N), token-major, any strides (row n·K + k: order k of sample
    n); A (Di, N); D, delta_bias (Di,); z (N, T, Di) in raster order, any strides; orders (K, L) must be
    permutations of the T tokens (L = T).
    """
    if orders.shape[1] != z.shape[1]:
        raise ValueError(f"order_scan_merge needs permutations of all {z.shape[1]} tokens, "
                         f"got orders of length {orders.shape[1]}")
    checkpoint = needs_grad(u, delta, A, B, C, D, z, delta_bias)
    return _OrderScanMergeFunction.apply(u, delta, A, B, C, D, z, delta_bias, orders, checkpoint)


# Kept out of torch.compile graphs, as `selective_scan_triton` is.
@torch.compiler.disable
def fused_mixer_scan(mixer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A `MultiOrderMamba` with permutation orders and merge "sum": tokens (N, T, D) -> (N, T, Di), the
    gated scan outputs of its K orders summed at each token, before out_proj. mixer.out_proj of this
    equals mixer(x) on the unfused path."""
    xz = mixer.in_proj(x)  # (N, T, 2Di)
    u, z = xz.chunk(2, dim=-1)  # views; their gradients concatenate back into xz's
    u = order_conv_silu(u, mixer.conv1d.weight, mixer.conv1d.bias, mixer.orders, mixer.restore)
    dt, B, C = mixer.x_proj(u).split([mixer.dt_rank, mixer.d_state, mixer.d_state], dim=-1)
    delta = F.linear(dt, mixer.dt_proj.weight.to(dt.dtype))  # (N·K, L, Di); the bias is added in the scan
    A = -torch.exp(mixer.A_log.float())
    return order_scan_merge(u, delta, A, B, C, mixer.D.float(), z, mixer.dt_proj.bias.float(), mixer.orders)
