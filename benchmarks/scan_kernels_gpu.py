"""Selective-scan kernels on one GPU: our Triton kernel against mamba-ssm's and our PyTorch scan.

Usage (on a GPU machine; benchmarks/gpu/README.md sets up one without a package registry):

    python3 benchmarks/scan_kernels_gpu.py                   # the DiffMa-B/2 shapes, prints one table
    python3 benchmarks/scan_kernels_gpu.py --shapes 96x1024x196x16 --dtypes bf16 --json scan.json

Shapes are batch x Di x L x N as DiffMa-B/2's mixer calls the scan (3 scan orders stacked on the batch:
96 = batch 32 training, 192 = batch 64 forward, 24 x 1024 steps = batch 8 at 512²). Inputs are drawn once
per shape like the mixer's (u, delta, z, B, C in the activation dtype; A = -(1..N) jittered, D, delta_bias
in float32; delta_softplus on). "fwd" is a no-grad call; "fwd+bwd" a call plus the gradients of a random
cotangent into all eight inputs. Timing: CUDA events around each call after warm-up, median of --repeat.
"out rel err" is max |out - ref| / max |ref| against `selective_scan_ref` (autograd) on the same inputs cast
to float32; "grad rel err" the worst such error over the eight gradients (bf16 values carry bf16 rounding,
~4e-3). "fwd+bwd peak MiB": memory one fwd+bwd call allocates at its peak (the Triton backward's chunk
checkpoints included). Then, for the first shape and the last dtype, the Triton kernels' tile options
(forward and fwd+bwd; --no-sweep skips), so their defaults can be chosen from measurements.
Every failure is caught and shown in its row (traceback on stderr): the script always prints its tables.
Expect a few minutes, most of it Triton compiling each tile once.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import traceback
from pathlib import Path

import torch

from diffma_cli.models.ops import selective_scan as ops

sys.path.insert(0, str(Path(__file__).parent))
from backbone import time_steps  # noqa: E402  (the timing loop of benchmarks/backbone.py)

SHAPES = "96x1024x196x16,192x1024x196x16,24x1024x1024x16"
BACKENDS = ("triton", "mamba_ssm", "torch")
#: Triton tiles tried by the sweep: (chunk, num_warps, subchunks); block_d = 32 x num_warps (a channel a
#: thread); subchunks: backward chunks per checkpoint (fwd+bwd only; its forward runs chunk x subchunks).
SWEEP_FORWARD = [(4, 4, 1), (8, 4, 1), (16, 4, 1), (8, 2, 1), (8, 1, 1), (8, 8, 1), (4, 2, 1)]
SWEEP_BACKWARD = [(4, 4, 2), (4, 4, 1), (4, 2, 2), (4, 1, 2), (2, 4, 4), (8, 4, 1), (4, 4, 4)]
#: A call slower than this (ms) is timed with fewer repeats (the PyTorch scan at 1024 steps).
SLOW_MS = 50.0
#: Where inputs live (a smoke test of this script on a CPU sets "cpu" together with TRITON_INTERPRET=1).
DEVICE = "cuda"


def make_inputs(batch, dim, length, state, dtype, seed=0):
    g = torch.Generator(device=DEVICE).manual_seed(seed)

    def randn(*shape, dtype=dtype, scale=1.0):
        return (torch.randn(*shape, device=DEVICE, generator=g) * scale).to(dtype)

    a = torch.arange(1, state + 1, device=DEVICE, dtype=torch.float32).repeat(dim, 1)
    return {
        "u": randn(batch, dim, length), "delta": randn(batch, dim, length, scale=0.5),
        "A": -a * (1 + 0.1 * randn(dim, state, dtype=torch.float32)),
        "B": randn(batch, state, length), "C": randn(batch, state, length),
        "D": randn(dim, dtype=torch.float32), "z": randn(batch, dim, length),
        "delta_bias": randn(dim, dtype=torch.float32, scale=0.5), "delta_softplus": True,
    }


def time_ms(call, warmup: int, repeat: int) -> float:
    """Median CUDA-event milliseconds of `call` (backbone.py's timing loop), fewer repeats above SLOW_MS."""
    return statistics.median(time_steps(call, warmup, repeat, give_up_ms=SLOW_MS))


def float32_reference(args, grad_out):
    """`selective_scan_ref` on float32 copies: output and the gradients of <out, grad_out> (autograd)."""
    leaves = {k: v.detach().float().requires_grad_(True) for k, v in args.items() if torch.is_tensor(v)}
    out = ops.selective_scan_ref(**leaves, delta_softplus=args["delta_softplus"])
    grads = torch.autograd.grad(out, list(leaves.values()), grad_out.float())
    return out.detach(), dict(zip(leaves, grads, strict=True))


def relative_error(out, ref) -> float:
    return ((out.float() - ref).abs().max() / ref.abs().max()).item()


def scan(args, backend, tile):
    if tile:
        return ops.triton_scan_fn()(**args, tile=tile)
    return ops.selective_scan(**args, backend=backend)


def forward_row(args, ref, backend, warmup, repeat, tile=None):
    def call():
        with torch.no_grad():
            return scan(args, backend, tile)

    out = call()
    return {"fwd_ms": time_ms(call, warmup, repeat), "max_rel_err": relative_error(out, ref[0])}


def backward_row(args, grad_out, ref, backend, warmup, repeat, tile=None):
    """fwd+bwd time, the worst relative error over all input gradients, and the peak memory of one call
    above what was allocated before it (MiB)."""
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in args.items() if torch.is_tensor(v)}

    def call():
        out = scan({**args, **leaves}, backend, tile)
        return torch.autograd.grad(out, list(leaves.values()), grad_out)

    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    grads = call()
    peak = (torch.cuda.max_memory_allocated() - before) / 2**20
    error = max(relative_error(g, ref[1][name]) for name, g in zip(leaves, grads, strict=True))
    return {"fwdbwd_ms": time_ms(call, warmup, repeat), "grad_rel_err": error, "fwdbwd_peak_mib": peak}


def failure(error) -> str:
    traceback.print_exc(file=sys.stderr)
    return f"{type(error).__name__}: {str(error).splitlines()[0][:120]}"


def run_backend(args, grad_out, ref, backend, warmup, repeat, with_backward):
    row = {"backend": backend}
    try:
        row.update(forward_row(args, ref, backend, warmup, repeat))
        if with_backward:
            row.update(backward_row(args, grad_out, ref, backend, warmup, repeat))
    except Exception as error:  # shown in the table; the benchmark goes on
        row["error"] = failure(error)
    torch.cuda.empty_cache()
    return row


def run_sweep(args, grad_out, ref, opts) -> list[dict]:
    """The Triton kernels with each tile of SWEEP_FORWARD (forward) and SWEEP_BACKWARD (fwd+bwd)."""
    entries = []
    for name, tiles, row in (("fwd", SWEEP_FORWARD, forward_row), ("fwd+bwd", SWEEP_BACKWARD, None)):
        if row is None and opts.no_backward:
            continue
        for chunk, warps, subchunks in tiles:
            tile = {"chunk": chunk, "num_warps": warps, "block_d": 32 * warps, "subchunks": subchunks}
            entry = {"pass": name, **tile}
            try:
                if row is forward_row:
                    entry.update(forward_row(args, ref, "triton", opts.warmup, opts.repeat, tile))
                else:
                    entry.update(backward_row(args, grad_out, ref, "triton", opts.warmup, opts.repeat, tile))
            except Exception as error:
                entry["error"] = failure(error)
            entries.append(entry)
            print(json.dumps(entry), file=sys.stderr, flush=True)
            torch.cuda.empty_cache()
    return entries


def triton_defaults() -> str:
    from diffma_cli.models.ops import selective_scan_triton as kernels

    return (f"forward chunk {kernels.DEFAULT_CHUNK}, fwd+bwd chunk {kernels.DEFAULT_CHUNK_BACKWARD} x "
            f"{kernels.DEFAULT_SUBCHUNKS} subchunks, {kernels.DEFAULT_NUM_WARPS} warps x 32 channels")


def cell(value, digits=3):
    if value is None:
        return "n/a"
    if digits == 0 or value >= 0.01:
        return f"{value:.{digits}f}"
    return f"{value:.2e}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default=SHAPES, help="comma-separated BATCHxDIxLxN")
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--no-backward", action="store_true", help="time forward calls only")
    parser.add_argument("--no-sweep", action="store_true", help="skip the Triton tile sweep")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--json", help="write all rows to this file")
    opts = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks/scan_kernels_gpu.py needs a CUDA GPU", file=sys.stderr)
        return 2
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    card = torch.cuda.get_device_name()
    try:
        import triton

        triton_version = triton.__version__
    except ImportError as error:
        triton_version = f"unavailable ({error})"
    print(f"# {card}; torch {torch.__version__}; triton {triton_version}; "
          f"{datetime.date.today().isoformat()}", flush=True)

    rows, sweep = [], []
    for shape_text in opts.shapes.split(","):
        shape = tuple(int(x) for x in shape_text.split("x"))
        for dtype_name in opts.dtypes.split(","):
            args = make_inputs(*shape, dtypes[dtype_name])
            grad_out = torch.randn(shape[:3], device=DEVICE, generator=torch.Generator(DEVICE).manual_seed(1))
            grad_out = grad_out.to(dtypes[dtype_name])
            try:
                ref = float32_reference(args, grad_out)
            except Exception as error:
                print(f"reference failed for {shape_text} {dtype_name}: {failure(error)}", flush=True)
                continue
            for backend in opts.backends.split(","):
                row = run_backend(args, grad_out, ref, backend, opts.warmup, opts.repeat,
                                  with_backward=not opts.no_backward)
                row.update(shape=shape_text, dtype=dtype_name)
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
            sweeping = (not opts.no_sweep and ops.triton_scan_fn() is not None and not sweep
                        and dtype_name == opts.dtypes.split(",")[-1])
            if sweeping:  # first shape, last dtype (bf16 by default: what autocast training passes)
                sweep = run_sweep(args, grad_out, ref, opts)
                for entry in sweep:
                    entry.update(shape=shape_text, dtype=dtype_name)
            del ref, args, grad_out
            torch.cuda.empty_cache()

    print(f"\n| shape (batch x Di x L x N) | dtype | backend | fwd ms | fwd+bwd ms | out rel err | "
          f"grad rel err | fwd+bwd peak MiB | card: {card} |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['shape']} | {row['dtype']} | {row['backend']} | {cell(row.get('fwd_ms'))} | "
              f"{cell(row.get('fwdbwd_ms'))} | {cell(row.get('max_rel_err'))} | "
              f"{cell(row.get('grad_rel_err'))} | {cell(row.get('fwdbwd_peak_mib'), 0)} | "
              f"{row.get('error', '')} |")
    if sweep:
        print(f"\nTriton tile sweep ({sweep[0]['shape']}, {sweep[0]['dtype']}); "
              f"defaults: {triton_defaults()}\n")
        print("| pass | chunk | num_warps | block_d | subchunks | ms | rel err | peak MiB | note |")
        print("|---|---|---|---|---|---|---|---|---|")
        for entry in sweep:
            ms = entry.get("fwd_ms", entry.get("fwdbwd_ms"))
            err = entry.get("max_rel_err", entry.get("grad_rel_err"))
            subchunks = entry["subchunks"] if entry["pass"] == "fwd+bwd" else "-"
            print(f"| {entry['pass']} | {entry['chunk']} | {entry['num_warps']} | {entry['block_d']} | "
                  f"{subchunks} | {cell(ms)} | {cell(err)} | {cell(entry.get('fwdbwd_peak_mib'), 0)} | "
                  f"{entry.get('error', '')} |")
    if opts.json:
        with open(opts.json, "w", encoding="utf-8") as handle:
            json.dump({"card": card, "rows": rows, "sweep": sweep}, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
