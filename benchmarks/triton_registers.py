"""Registers and spills of every Triton kernel of the project, compiled for a Hopper GPU on any machine.

Usage (no GPU needed; the ptxas bundled with triton does the register allocation):

    python3 benchmarks/triton_registers.py                     # the production tiles, DiffMa-B/2 at 224²
    python3 benchmarks/triton_registers.py --tile num_warps=8,chunk=2,subchunks=4 --grid serial

Each kernel is compiled as a DiffMa-B/2 training step launches it: the fused mixer's forward and backward
and the Triton scan's are run on CPU tensors of the real shapes with every kernel replaced by a recorder,
and the recorded arguments are specialised as Triton's JIT specialises them (integers equal to 1 become
constants; multiples of 16 and aligned tensors get the divisibility hint), so the binary is the one a GPU
would build. `triton.compile` with an explicit target lowers it through Triton's IR, LLVM and PTX without
a device; `ptxas -v` then reports registers, stack and spills per thread.

A scan program keeps its N states per channel in registers (h, the adjoint dh, dA, A, the chunk's states in
the backward), so registers decide two things a profiler would otherwise have to show: how many programs an
SM holds at once (65 536 registers per SM: two programs of 4 warps at 255 registers per thread) and whether
ptxas spills to local memory (every spilled value is a round trip through L1/L2 on each use).
tests/models/test_triton_compile.py compiles the same launches (every kernel must build for sm_90).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from diffma_cli.models.ops import mixer_triton, selective_scan_triton

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from backbone import tile_overrides  # noqa: E402  (benchmarks/backbone.py's --fused-tile format)

HOPPER = GPUTarget("cuda", 90, 32)
#: DiffMa-B/2's mixer at 224²: d_model 512 (Di = 1024 channels), N = 16 states, 196 tokens in 3 orders.
D_MODEL, SIDE = 512, 14
#: The kernels, by module attribute, in the order a training step launches them.
KERNEL_NAMES = {
    "scan forward": (selective_scan_triton, "_scan_forward_kernel"),
    "scan backward": (selective_scan_triton, "_scan_backward_kernel"),
    "order conv forward": (mixer_triton, "_conv_forward_kernel"),
    "order conv backward": (mixer_triton, "_conv_backward_kernel"),
    "order conv input gradient": (mixer_triton, "_conv_input_grad_kernel"),
    "merge scan forward": (mixer_triton, "_scan_merge_kernel"),
    "merge scan backward": (mixer_triton, "_scan_merge_backward_kernel"),
}


class _Recorder:
    """Stands in for a JITFunction: `kernel[grid](*args, **kwargs)` records the call, launches nothing."""

    def __init__(self, kernel, calls: list):
        self.kernel, self.calls = kernel, calls

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.calls.append((self.kernel, args, kwargs))


def launches(tile: dict | None = None, grid: str = "auto", batch: int = 2) -> dict:
    """name -> (kernel, args, kwargs) of each kernel as a DiffMa-B/2 training step launches it: the fused
    mixer's forward and backward and the unfused mixer's Triton scan, run on CPU tensors of the real shapes
    with every kernel replaced by a recorder (nothing is computed). `tile` overrides the scan kernels'
    tile (`mixer_triton.TILE_OVERRIDE`, the Triton scan's `tile`), `grid` kernel B's grid."""
    import torch

    from diffma_cli.models.mamba import MultiOrderMamba
    from diffma_cli.models.scan_orders import diffma_block_orders

    calls: list = []
    saved = {name: getattr(module, attr) for name, (module, attr) in KERNEL_NAMES.items()}
    saved_grid, saved_tile = mixer_triton.SPLIT_ORDERS, mixer_triton.TILE_OVERRIDE
    try:
        for module, attr in KERNEL_NAMES.values():
            setattr(module, attr, _Recorder(getattr(module, attr), calls))
        mixer_triton.SPLIT_ORDERS, mixer_triton.TILE_OVERRIDE = grid, dict(tile or {})
        mixer = MultiOrderMamba(D_MODEL, diffma_block_orders(SIDE, 0)).to(torch.bfloat16)
        x = torch.zeros(batch, SIDE * SIDE, D_MODEL, dtype=torch.bfloat16, requires_grad=True)
        mixer.out_proj(mixer_triton.fused_mixer_scan(mixer, x)).float().sum().backward()
        rows, dim, length = batch * 3, 2 * D_MODEL, SIDE * SIDE
        u, delta, z = (torch.zeros(rows, dim, length, dtype=torch.bfloat16, requires_grad=True)
                       for _ in "udz")
        B, C = (torch.zeros(rows, 16, length, dtype=torch.bfloat16, requires_grad=True) for _ in "BC")
        A, D, bias = (torch.zeros(shape, requires_grad=True) for shape in ((dim, 16), (dim,), (dim,)))
        selective_scan_triton.selective_scan_triton(u, delta, A, B, C, D, z, bias, delta_softplus=True,
                                                    tile=tile).float().sum().backward()
    finally:
        for name, (module, attr) in KERNEL_NAMES.items():
            setattr(module, attr, saved[name])
        mixer_triton.SPLIT_ORDERS, mixer_triton.TILE_OVERRIDE = saved_grid, saved_tile
    by_kernel = {kernel: name for name, kernel in saved.items()}
    return {by_kernel[kernel]: (kernel, args, kwargs) for kernel, args, kwargs in calls}


def specialised_source(kernel, args: tuple, kwargs: dict):
    """The ASTSource a launch with these arguments compiles, specialised as Triton's JIT specialises them:
    integers equal to 1 become constants, multiples of 16 and 16-byte-aligned tensors get the divisibility
    hint that lets the compiler vectorise. -> (source, num_warps)."""
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import BaseBackend

    constexprs = {name: value for name, value in kwargs.items() if name in kernel.arg_names}
    signature, attrs = {}, {}
    for index, (name, value) in enumerate(zip(kernel.arg_names, args, strict=False)):
        kind, hint = native_specialize_impl(BaseBackend, value, False, True, True)
        if kind == "constexpr":
            constexprs[name] = hint
        else:
            signature[name] = kind
            if hint == "D":
                attrs[(index,)] = [["tt.divisibility", 16]]
    for name in constexprs:
        signature[name] = "constexpr"
    return ASTSource(kernel, signature, constexprs, attrs), kwargs.get("num_warps", 4)


def compile_for_hopper(source, num_warps: int):
    return triton.compile(source, target=HOPPER, options={"num_warps": num_warps})


def ptxas_usage(ptx: str) -> dict:
    """Registers, spill stores and loads (bytes per thread) that triton's bundled ptxas reports."""
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    with tempfile.TemporaryDirectory() as folder:
        source = os.path.join(folder, "kernel.ptx")
        with open(source, "w", encoding="utf-8") as handle:
            handle.write(ptx)
        report = subprocess.run([ptxas, "-v", f"--gpu-name=sm_{HOPPER.arch}a", source, "-o", os.devnull],
                                capture_output=True, text=True, check=True).stderr

    def number(pattern: str) -> int:
        match = re.search(pattern, report)
        return int(match.group(1)) if match else 0

    return {"registers": number(r"Used (\d+) registers"), "spill_stores": number(r"(\d+) bytes spill stores"),
            "spill_loads": number(r"(\d+) bytes spill loads")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tile", type=tile_overrides, default={},
                        help="scan tile overrides, e.g. num_warps=8,chunk=2,subchunks=4")
    parser.add_argument("--grid", choices=["auto", "serial", "split"], default="auto",
                        help="the fused scan kernel's grid (mixer_triton.SPLIT_ORDERS)")
    parser.add_argument("--batch", type=int, default=32, help="batch of the launches (the grid's size)")
    args = parser.parse_args(argv)
    tile = args.tile
    print(f"sm_{HOPPER.arch}; DiffMa-B/2 at 224² (Di {2 * D_MODEL}, N 16, {SIDE * SIDE} tokens), batch "
          f"{args.batch}; scan tile overrides {tile or 'none'}; fused grid {args.grid}")
    print("| kernel | warps | registers / thread | spill stores (B) | spill loads (B) |")
    print("|---|---|---|---|---|")
    for name, (kernel, launch_args, kwargs) in launches(tile, args.grid, args.batch).items():
        source, num_warps = specialised_source(kernel, launch_args, kwargs)
        usage = ptxas_usage(compile_for_hopper(source, num_warps).asm["ptx"])
        print(f"| {name} | {num_warps} | {usage['registers']} | {usage['spill_stores']} | "
              f"{usage['spill_loads']} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
