"""What every selective-scan backend checks about its inputs, in one place that imports no backend.

`selective_scan.py` (the dispatcher) and `selective_scan_triton.py` (one backend, imported lazily by the
dispatcher) both need these; keeping them here lets the import edges run one way only.
"""

from __future__ import annotations

import torch

#: Input dtypes the Triton kernel reads (it computes in float32); float64 stays on the other backends.
TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def check_shapes(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor):
    """Raise ValueError unless u, delta (batch, Di, L), A (Di, N) and B, C (batch, N, L) agree."""
    batch, dim, length = u.shape
    state = A.shape[1]
    if delta.shape != u.shape or A.shape != (dim, state):
        raise ValueError(
            f"selective_scan: u {tuple(u.shape)}, delta {tuple(delta.shape)}, A {tuple(A.shape)} do not agree"
        )
    for name, t in (("B", B), ("C", C)):
        if t.shape != (batch, state, length):
            raise ValueError(f"selective_scan: {name} must be (batch, N, L) = {(batch, state, length)}, "
                             f"got {tuple(t.shape)}")


def needs_grad(*tensors: torch.Tensor | None) -> bool:
    """Whether autograd will record a call on these tensors."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
