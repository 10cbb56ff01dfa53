"""Selective-scan kernels on one GPU: our Triton kernel against mamba-ssm's and our PyTorch scan.

Usage (on the GPU machine, after `source benchmarks/device_env.sh`):

    python3 benchmarks/scan_kernels_gpu.py                   # the DiffMa-B/2 shapes, prints one table
    python3 benchmarks/scan_kernels_gpu.py --shapes 96x1024x196x16 --dtypes bf16 --json scan.json

Shapes are batch x Di x L x N as DiffMa-B/2's mixer calls the scan (3 scan orders stacked on the batch:
96 = batch 32 training, 192 = batch 64 forward, 24 x 1024 steps = batch 8 at 512²). Inputs are drawn once
per shape like the mixer's (u, delta, z, B, C in the activation dtype; A = -(1..N) jittered, D, delta_bias
in float32; delta_softplus on). "fwd" is a no-grad call; "fwd+bwd" a call and a backward of a random
cotangent into all inputs (backends without a backward show "n/a"). Timing: CUDA events around each call
after warm-up, median of --repeat. "max rel err" is max |out - ref| / max |ref| against `selective_scan_ref`
on the same inputs cast to float32 (bf16 outputs carry bf16 rounding, ~4e-3). Then, for the first shape
and dtype, the Triton kernel's tile options (--sweep), so its defaults can be chosen from measurements.
Every failure is caught and shown in its row: the script always prints its table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import traceback

import torch

from diffma_cli.errors import EnvironmentProblem
from diffma_cli.models.ops import selective_scan as ops

SHAPES = "96x1024x196x16,192x1024x196x16,24x1024x1024x16"
BACKENDS = ("triton", "mamba_ssm", "torch")
#: Triton tile options tried by --sweep: (chunk, num_warps); block_d = 32 x num_warps (one channel a thread).
SWEEP = [(4, 4), (8, 4), (16, 4), (8, 2), (8, 8), (4, 2), (16, 2)]
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
    for _ in range(warmup):
        call()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        call()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
        if len(times) == 2 and min(times) > SLOW_MS:
            break
    return statistics.median(times)


def float32_reference(args):
    with torch.no_grad():
        return ops.selective_scan_ref(**{k: v.float() if torch.is_tensor(v) else v for k, v in args.items()})


def relative_error(out, ref) -> float:
    return ((out.float() - ref).abs().max() / ref.abs().max()).item()


def forward_row(args, ref, backend, warmup, repeat, **tile):
    def call():
        with torch.no_grad():
            if tile:
                return ops.triton_scan_fn()(**args, tile=tile)
            return ops.selective_scan(**args, backend=backend)

    out = call()
    return {"fwd_ms": time_ms(call, warmup, repeat), "max_rel_err": relative_error(out, ref)}


def backward_ms(args, backend, warmup, repeat):
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in args.items() if torch.is_tensor(v)}
    grad_out = torch.randn_like(args["u"])

    def call():
        out = ops.selective_scan(**leaves, delta_softplus=True, backend=backend)
        out.backward(grad_out)

    try:
        call()
    except EnvironmentProblem as error:
        if "no backward" in str(error):
            return None
        raise
    return time_ms(call, warmup, repeat)


def run_backend(args, ref, backend, warmup, repeat, with_backward):
    row = {"backend": backend}
    try:
        row.update(forward_row(args, ref, backend, warmup, repeat))
        if with_backward:
            row["fwdbwd_ms"] = backward_ms(args, backend, warmup, repeat)
    except Exception as error:  # shown in the table; the benchmark goes on
        row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:120]}"
        traceback.print_exc(file=sys.stderr)
    torch.cuda.empty_cache()
    return row


def cell(value, digits=3):
    if value is None:
        return "n/a"
    return f"{value:.{digits}f}" if value >= 0.01 else f"{value:.2e}"


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

    rows = []
    for shape_text in opts.shapes.split(","):
        shape = tuple(int(x) for x in shape_text.split("x"))
        for dtype_name in opts.dtypes.split(","):
            args = make_inputs(*shape, dtypes[dtype_name])
            ref = float32_reference(args)
            for backend in opts.backends.split(","):
                row = run_backend(args, ref, backend, opts.warmup, opts.repeat, not opts.no_backward)
                row.update(shape=shape_text, dtype=dtype_name)
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
            del ref, args
            torch.cuda.empty_cache()

    sweep = []
    if not opts.no_sweep and ops.triton_scan_fn() is not None:
        shape_text, dtype_name = opts.shapes.split(",")[0], opts.dtypes.split(",")[-1]
        shape = tuple(int(x) for x in shape_text.split("x"))
        args = make_inputs(*shape, dtypes[dtype_name])
        ref = float32_reference(args)
        for chunk, warps in SWEEP:
            tile = {"chunk": chunk, "num_warps": warps, "block_d": 32 * warps}
            entry = {"shape": shape_text, "dtype": dtype_name, **tile}
            try:
                entry.update(forward_row(args, ref, "triton", opts.warmup, opts.repeat, **tile))
            except Exception as error:
                entry["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:120]}"
            sweep.append(entry)
            print(json.dumps(entry), file=sys.stderr, flush=True)

    print(f"\n| shape (batch x Di x L x N) | dtype | backend | fwd ms | fwd+bwd ms | max rel err | "
          f"card: {card} |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        note = row.get("error", "")
        print(f"| {row['shape']} | {row['dtype']} | {row['backend']} | {cell(row.get('fwd_ms'))} | "
              f"{cell(row.get('fwdbwd_ms'))} | {cell(row.get('max_rel_err'))} | {note} |")
    if sweep:
        print(f"\nTriton tile sweep ({sweep[0]['shape']}, {sweep[0]['dtype']}, forward):\n")
        print("| chunk | num_warps | block_d | fwd ms | max rel err | note |")
        print("|---|---|---|---|---|---|")
        for entry in sweep:
            print(f"| {entry['chunk']} | {entry['num_warps']} | {entry['block_d']} | "
                  f"{cell(entry.get('fwd_ms'))} | {cell(entry.get('max_rel_err'))} | "
                  f"{entry.get('error', '')} |")
    if opts.json:
        with open(opts.json, "w") as handle:
            json.dump({"card": card, "rows": rows, "sweep": sweep}, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
