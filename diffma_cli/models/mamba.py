"""The Mamba mixer (Gu & Dao, 2023) reading a token grid in several orders with shared weights.

One mixer = Mamba's selective SSM layer (`in_proj`, causal depthwise `conv1d`, `x_proj`, `dt_proj`,
`A_log`, `D`, `out_proj`; names and shapes as mamba-ssm / the released DiffMa code). What the vision models
add is the multi-order read: the tokens are read in K orders (DiffMa: raster, forward spiral, reverse
spiral), each sequence goes through conv → selective scan → gate with the SAME weights, and each output is
put back at its tokens' positions; the K outputs are summed (DiffMa, VMamba, EMamba) or averaged (ViM).

All K sequences go through the convolution and the scan as ONE call, stacked on the batch dimension
(N·K sequences), instead of K calls. The order indices are non-persistent buffers: they move to the
model's device with it, and the state dict keeps exactly the released keys.

The "fused_triton" mixer backend (`mixer_backend`; opt-in only) reads the orders and merges them inside
Triton kernels instead (`ops/mixer_triton.py`), for mixers whose orders are permutations merged by "sum";
other mixers, and the default "auto", take the path described above.

Notation (paper / mamba-ssm): D model width, Di = expand·D inner width, N = d_state, R = dt_rank,
L tokens per sequence, T tokens of the grid.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from diffma_cli.errors import EnvironmentProblem
from diffma_cli.models.ops.causal_conv import causal_conv_silu
from diffma_cli.models.ops.dispatch import BackendChoice, OptionalImport, require_cuda_kernel
from diffma_cli.models.ops.scan_inputs import TRITON_DTYPES
from diffma_cli.models.ops.selective_scan import _triton_interpreting, selective_scan

#: Mixer defaults of the released code (mamba-ssm's `Mamba` defaults; `block/mamba_block.py`).
D_STATE, D_CONV, EXPAND = 16, 4, 2
#: Range of the initial step size delta (mamba-ssm defaults): softplus(dt bias) ∈ [DT_MIN, DT_MAX].
DT_MIN, DT_MAX, DT_INIT_FLOOR = 1e-3, 1e-1, 1e-4
MERGES = ("sum", "mean")
#: "unfused": read, convolve, scan and merge as separate steps (the scan and conv backends apply);
#: "fused_triton": `ops/mixer_triton.py`, where the mixer qualifies (`MultiOrderMamba.fusable`); "auto":
#: unfused everywhere until the fused kernels are timed on a GPU.
MIXER_BACKENDS = ("auto", "unfused", "fused_triton")

_mixer_choice = BackendChoice("mixer", MIXER_BACKENDS)


def _load_fused_mixer() -> Callable:
    from diffma_cli.models.ops.mixer_triton import fused_mixer_scan

    return fused_mixer_scan


#: `mixer_triton.fused_mixer_scan`, or None when triton cannot be imported: call it.
fused_mixer_scan = OptionalImport(_load_fused_mixer)


def mixer_backend(name: str) -> contextlib.AbstractContextManager[None]:
    """Use mixer backend `name` (one of MIXER_BACKENDS) for every `MultiOrderMamba` call inside the block."""
    return _mixer_choice.force(name)


def default_dt_rank(d_model: int) -> int:
    """mamba-ssm's "auto" rank of the step-size projection: ceil(D / 16) (32 for D = 512)."""
    return math.ceil(d_model / 16)


class MultiOrderMamba(nn.Module):
    """Tokens (N, T, D) -> (N, T, D): Mamba over K orders of the tokens, merged back in raster order.

    orders: (K, L) gather indices into the T tokens (sequence k reads tokens orders[k, 0], orders[k, 1], …).
        Each row lists distinct tokens; rows may be permutations of all T tokens (L = T) or parts of a
        partition (e.g. EfficientVMamba's sub-grids, L = T / K). T is the largest index + 1.
    merge: "sum" or "mean" of the K outputs at each token (over the orders that read it).
    """

    def __init__(
        self,
        d_model: int,
        orders: torch.Tensor | Sequence[Sequence[int]],
        d_state: int = D_STATE,
        d_conv: int = D_CONV,
        expand: int = EXPAND,
        dt_rank: int | None = None,
        merge: str = "sum",
    ):
        super().__init__()
        if merge not in MERGES:
            raise ValueError(f"unknown merge {merge!r}; choose one of {', '.join(MERGES)}")
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = expand * d_model
        self.dt_rank = default_dt_rank(d_model) if dt_rank is None else dt_rank
        self.merge = merge

        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        # Depthwise causal convolution (+ SiLU), run by ops.causal_conv: this module holds its weight and
        # bias under the released names; its own padding (both sides) is what the torch backend reproduces.
        self.conv1d = nn.Conv1d(
            self.d_inner, self.d_inner, d_conv, groups=self.d_inner, padding=d_conv - 1, bias=True
        )
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        # S4D-real initialisation A = −(1 … N) per channel, stored as log for positivity (kept in fp32).
        a_init = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(a_init))
        self.D = nn.Parameter(torch.ones(self.d_inner))  # skip connection of the SSM
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)
        self.reset_dt_parameters()

        # Index data lives on the CPU at build time (also under a `torch.device("meta")` context) and moves
        # with the model; `to_empty()` would wipe these buffers, so load weights with load_state_dict.
        orders = torch.as_tensor(orders, dtype=torch.long, device="cpu")
        if orders.dim() != 2:
            raise ValueError(f"orders must be (K, L) indices, got shape {tuple(orders.shape)}")
        num_tokens = int(orders.max()) + 1
        # restore[k, t] = position of token t in sequence k, or L (a zero pad column) if k skips t.
        restore = torch.full((orders.shape[0], num_tokens), orders.shape[1], dtype=torch.long, device="cpu")
        positions = torch.arange(orders.shape[1], device="cpu").expand_as(orders).contiguous()
        restore.scatter_(1, orders, positions)
        if merge == "mean":
            counts = (restore < orders.shape[1]).sum(dim=0).clamp(min=1)
            self.register_buffer("merge_weight", 1.0 / counts.float(), persistent=False)
        else:
            self.register_buffer("merge_weight", None, persistent=False)
        # Partition orders (e.g. EfficientVMamba's sub-grids) skip tokens; the merge then pads a zero row.
        self.skips_tokens = bool((restore == orders.shape[1]).any())
        self.register_buffer("orders", orders, persistent=False)
        self.register_buffer("restore", restore, persistent=False)

    def reset_dt_parameters(self) -> None:
        """Mamba's step-size initialisation (mamba-ssm `Mamba.__init__`).

        Weight uniform in ±R^−1/2 keeps the variance of dt_proj(dt) independent of R; the bias is the
        inverse softplus of a step size drawn log-uniformly in [DT_MIN, DT_MAX], so that delta =
        softplus(dt_proj(·)) starts in that range. (The released DiffMa overwrites both with its xavier
        init; see docs/architecture.md.)
        """
        bound = self.dt_rank**-0.5
        nn.init.uniform_(self.dt_proj.weight, -bound, bound)
        dt = torch.exp(torch.rand(self.d_inner) * (math.log(DT_MAX) - math.log(DT_MIN)) + math.log(DT_MIN))
        dt = dt.clamp(min=DT_INIT_FLOOR)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus⁻¹(dt)

    @property
    def fusable(self) -> bool:
        """Whether the fused mixer kernels apply: every order a permutation of all T tokens, merged by sum."""
        return self.merge == "sum" and not self.skips_tokens and self.orders.shape[1] == self.restore.shape[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _mixer_choice.requested(None) == "fused_triton" and self.fusable:
            return self.out_proj(self._fused_scan(x))
        batch, num_tokens, _ = x.shape
        k, length = self.orders.shape
        y = self._scan(x)  # (N·K, Di, L)
        # out_proj (no bias) per sequence, read token-major straight from the channel-first scan output; then
        # each token's K outputs are gathered back from their reading positions and summed. Projecting first
        # moves D instead of Di = 2D values per token through the merge.
        y = self.out_proj(y.transpose(1, 2)).view(batch, k, length, self.d_model)  # (N, K, L, D)
        y = merge_orders(y, self.orders, self.restore, self.skips_tokens)  # (N, T, D)
        if self.merge_weight is not None:
            y = y * self.merge_weight.to(y.dtype)[:, None]
        return y

    def scan_orders(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens (N, T, D) -> (N, K, Di, L): each order's gated scan output in its reading order, before
        the merge and `out_proj` (for blocks that merge differently, e.g. the released ViM baseline)."""
        batch = x.shape[0]
        k, length = self.orders.shape
        return self._scan(x).view(batch, k, self.d_inner, length)

    def _fused_scan(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens (N, T, D) -> (N, T, Di): the K orders' gated scan outputs summed at each token, before
        out_proj (which has no bias, so merging first gives the same sum)."""
        if x.shape[1] != self.restore.shape[1]:
            raise ValueError(f"mixer built for {self.restore.shape[1]} tokens, got {x.shape[1]}")
        runs_here = x.is_cuda or _triton_interpreting()
        require_cuda_kernel(fused_mixer_scan, "the fused_triton mixer backend", runs_here,
                            "install triton, or use the 'unfused' mixer backend")
        if x.dtype not in TRITON_DTYPES:
            raise EnvironmentProblem(f"the fused_triton mixer backend does not take {x.dtype} inputs",
                                     hint="use float32, bfloat16 or float16, or the 'unfused' mixer backend")
        return fused_mixer_scan()(self, x)

    def _scan(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens (N, T, D) -> (N·K, Di, L), sequence n·K + k = order k of sample n."""
        batch, num_tokens, _ = x.shape
        if num_tokens != self.restore.shape[1]:
            raise ValueError(f"mixer built for {self.restore.shape[1]} tokens, got {num_tokens}")
        k, length = self.orders.shape
        xz = read_orders(self.in_proj(x), self.orders, self.restore, self.skips_tokens)  # (N, K, L, 2Di)
        # One copy into the channel-first layout (unit stride along L) that the conv and the scan kernel read.
        xz = xz.view(batch * k, length, 2 * self.d_inner).transpose(1, 2).contiguous()  # (N·K, 2Di, L)
        u, z = xz.chunk(2, dim=1)  # (N·K, Di, L) each, views
        u = causal_conv_silu(u, self.conv1d.weight, self.conv1d.bias)  # outputs that saw only the past
        dt, B, C = self.x_proj(u.transpose(1, 2)).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        # W·dtᵀ lands directly in (N·K, Di, L) layout, so the scan needs no copy of delta; bias in the scan.
        delta = torch.matmul(self.dt_proj.weight.to(dt.dtype), dt.transpose(1, 2))
        A = -torch.exp(self.A_log.float())  # (Di, N)
        return selective_scan(
            u, delta, A, B.transpose(1, 2), C.transpose(1, 2), self.D.float(), z=z,
            delta_bias=self.dt_proj.bias.float(), delta_softplus=True,
        )  # (N·K, Di, L)


class _ReadOrders(torch.autograd.Function):
    """x (N, T, C) -> (N, K, L, C) with out[:, k, j] = x[:, orders[k, j]]; its adjoint is `_MergeOrders`.

    PyTorch would back-propagate an indexing by scattering with atomic adds (`index_put_` with
    accumulate); since reading and merging are each other's adjoints, both directions are plain gathers.
    """

    @staticmethod
    def forward(ctx, x, orders, restore, skips_tokens):
        ctx.save_for_backward(orders, restore)
        ctx.skips_tokens = skips_tokens
        k, length = orders.shape
        return x[:, orders.flatten()].view(x.shape[0], k, length, x.shape[2])

    @staticmethod
    def backward(ctx, grad):
        orders, restore = ctx.saved_tensors
        return _merge(grad, restore, ctx.skips_tokens), None, None, None


class _MergeOrders(torch.autograd.Function):
    """y (N, K, L, C) -> (N, T, C) with out[:, t] = Σ_k y[:, k, restore[k, t]] (a zero for tokens that
    order k does not read); its adjoint is `_ReadOrders`."""

    @staticmethod
    def forward(ctx, y, orders, restore, skips_tokens):
        ctx.save_for_backward(orders, restore)
        return _merge(y, restore, skips_tokens)

    @staticmethod
    def backward(ctx, grad):
        orders, restore = ctx.saved_tensors
        k, length = orders.shape
        return grad[:, orders.flatten()].view(grad.shape[0], k, length, grad.shape[2]), None, None, None


def _merge(y: torch.Tensor, restore: torch.Tensor, skips_tokens: bool) -> torch.Tensor:
    if skips_tokens:
        y = F.pad(y, (0, 0, 0, 1))  # a zero row at position L for the tokens an order skips
    order_index = torch.arange(y.shape[1], device=y.device)[:, None]  # (K, 1)
    return y[:, order_index, restore].sum(dim=1)


def read_orders(
    x: torch.Tensor, orders: torch.Tensor, restore: torch.Tensor, skips_tokens: bool
) -> torch.Tensor:
    """Tokens (N, T, C) read in K orders -> (N, K, L, C); see `_ReadOrders`."""
    return _ReadOrders.apply(x, orders, restore, skips_tokens)


def merge_orders(
    y: torch.Tensor, orders: torch.Tensor, restore: torch.Tensor, skips_tokens: bool
) -> torch.Tensor:
    """K sequences (N, K, L, C) back to token positions, summed over orders -> (N, T, C)."""
    return _MergeOrders.apply(y, orders, restore, skips_tokens)
