"""The mixer's depthwise causal convolution (+ SiLU) on one GPU: what the mixer runs against the alternatives.

Usage (on the GPU machine):

    python3 benchmarks/conv_gpu.py                      # DiffMa-B/2's shapes, bf16, prints one table
    python3 benchmarks/conv_gpu.py --json conv.json

Does causal-conv1d's fused kernel pay where the mixer calls it? The profile in docs/benchmarks.md puts the
convolution at about 14 ms of a 115 ms DiffMa-B/2 training step; this script measures, per call, at the
shapes the mixer calls it with (3 scan orders stacked on the batch: 96 = batch 32, 192 = batch 64,
24 x 1024 tokens = batch 8 at 512²; Di = 1024, kernel 4):

- `conv1d`: what the mixer runs by default, `silu(conv1d(x, groups=Di, padding=3)[..., :L])` (the torch
  backend of diffma_cli/models/ops/causal_conv.py) under bf16 autocast;
- `conv1d+compile`: the same under `torch.compile`;
- `shifted`: the same convolution as K shifted multiply-adds in float32 (no cuDNN; elementwise work that
  is bound by memory traffic), and `shifted+compile`, where the compiler fuses them into one kernel;
- `causal_conv1d`: causal-conv1d's `causal_conv1d_fn(..., activation="silu")` through the same module's
  causal_conv1d backend, when it imports.

Inputs: x in bf16 (the in_proj output's dtype under autocast), weight and bias in float32 (the module's).
By default x has the mixer's layout, the first half of a (batch, 2·Di, L) tensor along the channels (its
`xz.chunk(2, dim=1)`): unit stride along L but not contiguous, which costs PyTorch's convolution more than
causal-conv1d's kernel; `--layout contiguous` gives a contiguous x (an earlier table of docs/benchmarks.md).
"fwd" is a no-grad call, "fwd+bwd" a call plus the gradients of a random cotangent into x, weight and bias.
CUDA events around each call after warm-up, median of --repeat (benchmarks/backbone.py's loop). Errors:
max |out - ref| / max |ref| against float64 on the same (bf16-rounded) inputs, and the worst of the three
gradients. Failures are caught and shown in their row.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import traceback
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from diffma_cli.models.ops.causal_conv import causal_conv1d_kernel, causal_conv_silu

sys.path.insert(0, str(Path(__file__).parent))
from backbone import time_steps  # noqa: E402  (the timing loop of benchmarks/backbone.py)

SHAPES = "96x1024x196,192x1024x196,24x1024x1024"
KERNEL = 4
#: Where inputs live (a smoke test of this script on a CPU sets "cpu").
DEVICE = "cuda"


def conv_silu(x, weight, bias):
    """What the mixer runs by default: the torch backend of diffma_cli/models/ops/causal_conv.py."""
    return causal_conv_silu(x, weight, bias, backend="torch")


def shifted_silu(x, weight, bias):
    """The same causal convolution as K shifted multiply-adds: out[t] = b + sum_i w[i] x[t - (K-1) + i]."""
    kernel, length = weight.shape[-1], x.shape[-1]
    padded = F.pad(x, (kernel - 1, 0)).float()
    w = weight.squeeze(1).float()[..., None]  # (Di, K, 1)
    out = bias.float()[:, None] + padded[..., :length] * w[:, 0]
    for i in range(1, kernel):
        out = torch.addcmul(out, padded[..., i : i + length], w[:, i])
    return F.silu(out).to(x.dtype)


def variants():
    found = {
        "conv1d": conv_silu,
        "conv1d+compile": torch.compile(conv_silu),
        "shifted": shifted_silu,
        "shifted+compile": torch.compile(shifted_silu),
    }
    if causal_conv1d_kernel() is None:  # not built on this machine: the table has no such row
        print("causal_conv1d does not import: no causal_conv1d row", file=sys.stderr)
    else:  # exactly as the mixer calls it with conv_backend("causal_conv1d")
        found["causal_conv1d"] = partial(causal_conv_silu, backend="causal_conv1d")
    return found


def make_inputs(batch, dim, length, layout="mixer", seed=0):
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    channels = 2 * dim if layout == "mixer" else dim
    x = torch.randn(batch, channels, length, device=DEVICE, generator=g).to(torch.bfloat16)[:, :dim]
    weight = torch.randn(dim, 1, KERNEL, device=DEVICE, generator=g) * 0.5
    bias = torch.randn(dim, device=DEVICE, generator=g) * 0.1
    grad = torch.randn(batch, dim, length, device=DEVICE, generator=g).to(torch.bfloat16)
    return x, weight, bias, grad


def rel_err(value, ref):
    return ((value.double() - ref).abs().max() / ref.abs().max()).item()


def leaf_like(t):
    """A leaf with t's values and strides (`clone` would make a non-dense view contiguous)."""
    leaf = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=t.device)
    return leaf.copy_(t).requires_grad_(True)


def measure(name, fn, x, weight, bias, grad, reference, warmup, repeat):
    autocast = torch.autocast(DEVICE, dtype=torch.bfloat16)
    leaves = [leaf_like(t) for t in (x, weight, bias)]

    def forward():
        with torch.no_grad(), autocast:
            return fn(x, weight, bias)

    def forward_backward():
        for leaf in leaves:
            leaf.grad = None
        with autocast:
            out = fn(*leaves)
        out.backward(grad)

    out = forward()
    forward_backward()
    ref_out, ref_grads = reference
    row = {
        "variant": name,
        "fwd_ms": statistics.median(time_steps(forward, warmup, repeat)),
        "fwdbwd_ms": statistics.median(time_steps(forward_backward, warmup, repeat)),
        "out_rel_err": rel_err(out, ref_out),
        "grad_rel_err": max(rel_err(leaf.grad, r) for leaf, r in zip(leaves, ref_grads, strict=True)),
        "out_dtype": str(out.dtype).replace("torch.", ""),
    }
    return row


def float64_reference(x, weight, bias, grad):
    leaves = [t.detach().double().requires_grad_(True) for t in (x, weight, bias)]
    out = conv_silu(*leaves)
    out.backward(grad.double())
    return out.detach(), [leaf.grad for leaf in leaves]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default=SHAPES, help="batch x Di x L, comma-separated")
    parser.add_argument("--layout", choices=["mixer", "contiguous"], default="mixer",
                        help="x as the mixer's channel half of in_proj's output (a view), or contiguous")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)

    card = torch.cuda.get_device_name() if DEVICE == "cuda" else DEVICE
    print(f"# {card}; torch {torch.__version__}; {datetime.date.today()}; x layout {args.layout}")
    rows = []
    fns = variants()
    for shape in args.shapes.split(","):
        batch, dim, length = (int(v) for v in shape.split("x"))
        x, weight, bias, grad = make_inputs(batch, dim, length, args.layout)
        reference = float64_reference(x, weight, bias, grad)
        for name, fn in fns.items():
            try:
                row = measure(name, fn, x, weight, bias, grad, reference, args.warmup, args.repeat)
            except Exception as error:  # one failing variant must not hide the others
                traceback.print_exc()
                row = {"variant": name, "error": f"{type(error).__name__}: {error}"}
            row["shape"] = shape
            rows.append(row)
            print(json.dumps(row), flush=True)
        del reference
        torch.cuda.empty_cache()

    header = "| batch x Di x L | variant | fwd ms | fwd+bwd ms | out rel err | grad rel err | note |"
    print(f"\n{header}   ({card})")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['shape']} | {r['variant']} | | | | | {r['error'][:80]} |")
        else:
            print(
                f"| {r['shape']} | {r['variant']} | {r['fwd_ms']:.3f} | {r['fwdbwd_ms']:.3f} | "
                f"{r['out_rel_err']:.2e} | {r['grad_rel_err']:.2e} | out {r['out_dtype']} |"
            )
    if args.json:
        summary = {"card": card, "torch": torch.__version__, "layout": args.layout, "rows": rows}
        args.json.write_text(json.dumps(summary, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
