"""Benchmark `diffma synth` and `diffma prepare` on synthetic brain cases (SynthRAD-sized, 1 mm grid).

Each command runs as its own process (as a user runs it); wall time is measured around it, CPU time is the
user + system time of all its processes (independent of what else runs on a shared machine), and peak memory
is the largest resident set of any process of the run (getrusage of the children: the main process or one
worker, not their sum). Prints one Markdown table row per run, for docs/benchmarks.md.

    python benchmarks/prepare.py --cases 20 --workers 1 2
    python benchmarks/prepare.py --read-only DATA      # only the PreparedSlices read rate of a prepared DATA

The read rate is slices per second through `PreparedSlices` (one process, one torch thread, files in the page
cache): one by one in order, and in shuffled batches of 32 through a DataLoader without workers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# One wrapper process per measured command, so that ru_maxrss of its children belongs to that command alone.
_MEASURE = """
import resource, subprocess, sys, time
start = time.perf_counter()
code = subprocess.call(sys.argv[1:], stdout=subprocess.DEVNULL)
wall = time.perf_counter() - start
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(code, wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss)
"""


def measure(command: list[str]) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds, peak RSS in MiB) of one command; stops the benchmark if it fails."""
    out = subprocess.run([sys.executable, "-c", _MEASURE, *command], capture_output=True, encoding="utf-8",
                         check=True)
    code, wall, cpu, rss_kib = out.stdout.split()
    if int(code) != 0:
        raise SystemExit(f"failed ({code}): {' '.join(command)}")
    return float(wall), float(cpu), int(rss_kib) / 1024


def read_rate(data: Path) -> None:
    """Print the PreparedSlices read rate of the train split of `data` (see the module docstring)."""
    import torch
    from torch.utils.data import DataLoader

    from diffma_cli.data.dataset import PreparedSlices

    torch.set_num_threads(1)
    dataset = PreparedSlices(data, "train")
    for item in range(len(dataset)):  # warm the page cache
        dataset[item]
    start = time.perf_counter()
    for item in range(len(dataset)):
        dataset[item]
    in_order = len(dataset) / (time.perf_counter() - start)
    start = time.perf_counter()
    for _ in DataLoader(dataset, batch_size=32, shuffle=True, num_workers=0):
        pass
    shuffled = len(dataset) / (time.perf_counter() - start)
    print(f"# PreparedSlices read rate ({len(dataset)} train slices): {in_order:.0f} slices/s in order, "
          f"{shuffled:.0f} slices/s in shuffled batches of 32")


def folder_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scratch", type=Path, default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--read-only", type=Path, default=None, metavar="DATA",
                        help="only measure the read rate of this prepared data folder")
    args = parser.parse_args()
    if args.read_only:
        read_rate(args.read_only)
        return
    scratch = Path(args.scratch or tempfile.mkdtemp(prefix="diffma-bench-"))
    scratch.mkdir(parents=True, exist_ok=True)
    diffma = [sys.executable, "-m", "diffma_cli"]
    print(f"# {os.cpu_count()} CPUs, load average before: {os.getloadavg()[0]:.1f}")
    print("| step | cases | workers | wall s | CPU s | CPU s/case | peak RSS MiB | output MiB |")
    print("|---|---|---|---|---|---|---|---|")
    try:
        source = scratch / "synth"
        for workers in args.workers:
            shutil.rmtree(source, ignore_errors=True)
            wall, cpu, rss = measure([*diffma, "synth", str(source), "--anatomy", "brain", "--cases",
                                 str(args.cases), "--seed", str(args.seed), "--workers", str(workers)])
            print(f"| synth | {args.cases} | {workers} | {wall:.1f} | {cpu:.1f} | {cpu / args.cases:.2f} "
                  f"| {rss:.0f} | {folder_mib(source):.0f} |", flush=True)
        for workers in args.workers:
            data = scratch / f"data-{workers}"
            shutil.rmtree(data, ignore_errors=True)
            wall, cpu, rss = measure([*diffma, "prepare", str(source / "Task1"), "-o", str(data), "--anatomy",
                                 "brain", "--workers", str(workers)])
            manifest = json.loads((data / "manifest.json").read_text(encoding="utf-8"))
            slices = sum(manifest["slice_counts"].values())
            print(f"| prepare ({slices} slices) | {args.cases} | {workers} | {wall:.1f} | {cpu:.1f} | "
                  f"{cpu / args.cases:.2f} | {rss:.0f} | {folder_mib(data):.0f} |", flush=True)
        read_rate(data)
    finally:
        if args.scratch is None:
            shutil.rmtree(scratch, ignore_errors=True)
    print(f"# load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
