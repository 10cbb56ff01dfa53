"""Registers and spills of every Triton kernel of the project, compiled for a Hopper GPU on any machine.

Usage (no GPU needed; the ptxas bundled with triton does the register allocation):

    python3 benchmarks/triton_registers.py                     # the production tiles
    python3 benchmarks/triton_registers.py --tile num_warps=8,chunk=2,subchunks=4 --kernels merge

A scan program keeps its N states per channel in registers (h, the adjoint dh, dA, A, the chunk's states in
the backward), so registers decide two things a profiler would otherwise have to show: how many programs an
SM holds at once (65 536 registers per SM: 2 programs of 4 warps at 195 registers per thread) and whether
ptxas spills to local memory (every spilled value is a round trip through L1/L2 on each use).
`triton.compile` with an explicit target lowers a kernel through Triton's IR, LLVM and PTX without touching
a device; `ptxas -v` then reports registers, stack and spills per thread.
tests/models/test_triton_compile.py compiles the same table (every kernel must build for sm_90).
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
from diffma_cli.models.ops.selective_scan_triton import DEFAULT_CHUNK, DEFAULT_CHUNK_BACKWARD, default_config

HOPPER = GPUTarget("cuda", 90, 32)
#: Pointer arguments that carry the activations' dtype (bf16 in mixed-precision training); the others
#: (A, D, biases, checkpoints, float32 partial sums) are float32, as the wrappers allocate them.
ACTIVATIONS = {"u_ptr", "delta_ptr", "B_ptr", "C_ptr", "z_ptr", "x_ptr", "out_ptr", "dout_ptr", "du_ptr",
               "ddelta_ptr", "dx_ptr"}
#: DiffMa-B/2's mixer: Di = 1024 channels, N = 16 states, convolution width 4.
DIM, STATE, WIDTH = 1024, 16, 4


def kernels(tile: dict | None = None) -> dict:
    """name -> (kernel, constexprs, num_warps) with the production tiles for DiffMa-B/2's mixer; `tile`
    overrides the scan kernels' tile (`default_config` keys: block_d, num_warps, chunk, subchunks)."""
    train = {**default_config(DIM, DEFAULT_CHUNK_BACKWARD), **(tile or {})}
    infer = {**default_config(DIM, DEFAULT_CHUNK), **(tile or {})}
    states = {"STATE": STATE, "STATE_BLOCK": triton.next_power_of_2(STATE)}
    flags = {"HAS_D": True, "HAS_Z": True, "HAS_BIAS": True, "SOFTPLUS": True}
    groups = max(1, train["block_d"] // 32)
    conv_d = mixer_triton._conv_block_d(DIM)
    conv = {"WIDTH": WIDTH, "BLOCK_D": conv_d}
    table = {
        "scan forward": (selective_scan_triton._scan_forward_kernel,
                         {**states, **flags, "BLOCK_D": infer["block_d"], "CHUNK": infer["chunk"],
                          "CHECKPOINT": False}, infer["num_warps"]),
        "scan forward, training": (selective_scan_triton._scan_forward_kernel,
                                   {**states, **flags, "BLOCK_D": train["block_d"],
                                    "CHUNK": train["chunk"] * train["subchunks"], "CHECKPOINT": True},
                                   train["num_warps"]),
        "scan backward": (selective_scan_triton._scan_backward_kernel,
                          {**states, **flags, "BLOCK_D": train["block_d"], "CHUNK": train["chunk"],
                           "SUBCHUNKS": train["subchunks"], "GROUPS": groups}, train["num_warps"]),
        "order conv forward": (mixer_triton._conv_forward_kernel,
                               {**conv, "BLOCK_L": mixer_triton.CONV_BLOCK_L}, 4),
        "order conv backward": (mixer_triton._conv_backward_kernel,
                                {**conv, "BLOCK_L": mixer_triton.CONV_BLOCK_L}, 4),
        "order conv input gradient": (mixer_triton._conv_input_grad_kernel,
                                      {**conv, "BLOCK_T": mixer_triton.CONV_BLOCK_T}, 4),
    }
    for grid in ("serial", "split"):
        for checkpoint in (False, True):
            table[f"merge scan, {grid}{', training' if checkpoint else ''}"] = (
                mixer_triton._scan_merge_kernel,
                {**states, "BLOCK_D": train["block_d"], "CHUNK": train["chunk"] * train["subchunks"],
                 "CHECKPOINT": checkpoint, "SPLIT": grid == "split"}, train["num_warps"])
        table[f"merge scan backward, {grid}"] = (
            mixer_triton._scan_merge_backward_kernel,
            {**states, "BLOCK_D": train["block_d"], "CHUNK": train["chunk"], "SUBCHUNKS": train["subchunks"],
             "GROUPS": groups, "SPLIT": grid == "split"}, train["num_warps"])
    return table


def signature(kernel, constexprs: dict) -> dict:
    """Argument types as a launch binds them: pointers by name, every other runtime argument an int32
    (the sizes and strides of DiffMa's tensors fit)."""
    types = {}
    for name in kernel.arg_names:
        if name in constexprs:
            types[name] = "constexpr"
        elif name.endswith("_ptr"):
            types[name] = "*bf16" if name in ACTIVATIONS else "*fp32"
        else:
            types[name] = "i32"
    return types


def compile_for_hopper(kernel, constexprs: dict, num_warps: int):
    return triton.compile(ASTSource(kernel, signature(kernel, constexprs), constexprs), target=HOPPER,
                          options={"num_warps": num_warps})


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
    parser.add_argument("--tile", default="",
                        help="scan tile overrides, e.g. num_warps=8,chunk=2,subchunks=4")
    parser.add_argument("--kernels", default="", help="only kernels whose name contains this text")
    args = parser.parse_args(argv)
    tile = {key: int(value) for key, value in (item.split("=") for item in args.tile.split(",") if item)}
    print(f"sm_{HOPPER.arch}, Di {DIM}, N {STATE}; scan tile "
          f"{ {**default_config(DIM, DEFAULT_CHUNK_BACKWARD), **tile} } (training)")
    print("| kernel | warps | registers / thread | spill stores (B) | spill loads (B) |")
    print("|---|---|---|---|---|")
    for name, (kernel, constexprs, num_warps) in kernels(tile).items():
        if args.kernels not in name:
            continue
        usage = ptxas_usage(compile_for_hopper(kernel, constexprs, num_warps).asm["ptx"])
        print(f"| {name} | {num_warps} | {usage['registers']} | {usage['spill_stores']} | "
              f"{usage['spill_loads']} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
