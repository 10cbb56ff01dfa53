"""Selective scan on a CPU: our blocked PyTorch scan against the plain step loop (the reference).

Usage:
    python benchmarks/selective_scan_cpu.py                 # the default shapes, 2 threads
    python benchmarks/selective_scan_cpu.py --threads 8 --repeat 7
    python benchmarks/selective_scan_cpu.py --shape 3 1024 196 16

Shapes are (sequences, Di, L, N): a DiffMa mixer at batch b scans 3·b sequences (three orders) of
Di = 1024 channels (width 512) and L = T tokens (196 for patch 2, 49 for patch 4) with N = 16 states.
Timing: median of --repeat runs after one warm-up, in wall time, or with `--clock cpu` in CPU time of this
process (all its threads), which other processes on a shared machine disturb much less. "fwd" is a forward
pass without autograd, "fwd+bwd" a forward and a backward pass of the output's sum. Inputs: float32,
random, with the mixer's options (D, z, delta_bias, softplus). Prints a Markdown table, the CPU named first.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from diffma_cli.models.ops.selective_scan import selective_scan_blocked, selective_scan_ref

DEFAULT_SHAPES = [(3, 64, 196, 16), (3, 1024, 49, 16), (3, 1024, 196, 16), (12, 1024, 196, 16)]


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def make_inputs(batch: int, dim: int, length: int, state: int, grad: bool) -> dict:
    g = torch.Generator().manual_seed(0)
    tensors = {
        "u": torch.randn(batch, dim, length, generator=g),
        "delta": 0.5 * torch.randn(batch, dim, length, generator=g),
        "A": -torch.arange(1, state + 1, dtype=torch.float32).repeat(dim, 1),
        "B": torch.randn(batch, state, length, generator=g),
        "C": torch.randn(batch, state, length, generator=g),
        "D": torch.ones(dim),
        "z": torch.randn(batch, dim, length, generator=g),
        "delta_bias": torch.full((dim,), -2.0),
    }
    for value in tensors.values():
        value.requires_grad_(grad)
    return {**tensors, "delta_softplus": True}


def time_once(fn, inputs: dict, grad: bool, clock) -> float:
    start = clock()
    if grad:
        out = fn(**inputs)
        out.sum().backward()
    else:
        with torch.no_grad():
            fn(**inputs)
    return clock() - start


def median_ms(fn, inputs: dict, grad: bool, repeat: int, clock) -> float:
    time_once(fn, inputs, grad, clock)  # warm-up
    return 1000 * statistics.median(time_once(fn, inputs, grad, clock) for _ in range(repeat))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    parser.add_argument("--shape", type=int, nargs=4, action="append", metavar=("SEQ", "DI", "L", "N"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    print(f"CPU: {cpu_name()}, {args.threads} threads, {args.clock} time, torch {torch.__version__}\n")
    print("| sequences × Di × L × N | mode | step loop (ms) | blocked (ms) | speed-up |")
    print("|---|---|---|---|---|")
    for shape in args.shape or DEFAULT_SHAPES:
        for grad in (False, True):
            inputs = make_inputs(*shape, grad=grad)
            loop = median_ms(selective_scan_ref, inputs, grad, args.repeat, clock)
            blocked = median_ms(selective_scan_blocked, inputs, grad, args.repeat, clock)
            mode = "fwd+bwd" if grad else "fwd"
            cells = [" × ".join(map(str, shape)), mode, f"{loop:.1f}", f"{blocked:.1f}",
                     f"{loop / blocked:.2f}×"]
            print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
