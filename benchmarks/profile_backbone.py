"""Where a backbone training step spends its GPU time (torch.profiler), grouped by kernel.

Usage (GPU machine):  python3 benchmarks/profile_backbone.py [--model DiffMa-B/2] [--batch 32] [--bf16]
Prints the operators with the most CUDA time, the share of the selective-scan kernels, and the GPU-busy
fraction of the step (low = launch/CPU bound).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from backbone import make_inputs  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="DiffMa-B/2")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--rows", type=int, default=20)
    args = parser.parse_args(argv)
    from torch.profiler import ProfilerActivity, profile

    from diffma_cli.models import create_model

    torch.backends.cuda.matmul.allow_tf32 = True
    model = create_model(args.model).cuda().train()
    inputs = make_inputs(model, args.batch, model.config["input_size"], torch.device("cuda"))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=args.bf16):
            out = model(*inputs)
        out.float().square().mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(5):
        step()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start.record()
        for _ in range(3):
            step()
        end.record()
        torch.cuda.synchronize()
    wall_ms = start.elapsed_time(end) / 3
    events = prof.key_averages()
    table = events.table(sort_by="cuda_time_total", row_limit=args.rows, max_name_column_width=60)
    print(table)
    kernel_us = sum(e.self_device_time_total for e in events if e.device_type.name == "CUDA") / 3
    scan_us = sum(e.self_device_time_total for e in events
                  if e.device_type.name == "CUDA" and "selective_scan" in e.key) / 3
    print(f"{args.model} batch {args.batch} {'bf16' if args.bf16 else 'tf32'}: step {wall_ms:.1f} ms, "
          f"GPU kernels {kernel_us / 1e3:.1f} ms ({kernel_us / 1e3 / wall_ms:.0%} busy), "
          f"selective scan {scan_us / 1e3:.1f} ms ({scan_us / max(kernel_us, 1):.0%} of kernel time)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
