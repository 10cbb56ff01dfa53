"""Every Triton kernel of the project compiles to a Hopper (sm_90) binary, on a machine without a GPU.

The kernel tests run in Triton's CPU interpreter, which executes the kernels as numpy code: it accepts
constructs the compiler rejects (and the other way round), so without this test a kernel could pass every
CPU test and fail to build on the first GPU. `triton.compile` with an explicit target lowers a kernel
through Triton's IR, LLVM, PTX and the bundled ptxas without touching a device. Shapes and tiles are those
DiffMa-B/2 launches with (Di 1024, N 16, conv width 4) and the production tile defaults.
"""

import os

import pytest

triton = pytest.importorskip("triton")
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from diffma_cli.models.ops import mixer_triton, selective_scan_triton  # noqa: E402
from diffma_cli.models.ops.selective_scan_triton import (  # noqa: E402
    DEFAULT_CHUNK,
    DEFAULT_CHUNK_BACKWARD,
    default_config,
)

HOPPER = GPUTarget("cuda", 90, 32)
#: Pointer arguments that carry the activations' dtype (bf16 in mixed-precision training); the others
#: (A, D, biases, checkpoints, float32 partial sums) are float32, as the wrappers allocate them.
ACTIVATIONS = {"u_ptr", "delta_ptr", "B_ptr", "C_ptr", "z_ptr", "x_ptr", "out_ptr", "dout_ptr", "du_ptr",
               "ddelta_ptr", "dx_ptr"}
TILE = default_config(1024, DEFAULT_CHUNK_BACKWARD)
FORWARD_TILE = default_config(1024, DEFAULT_CHUNK)
STATE = {"STATE": 16, "STATE_BLOCK": 16}
FLAGS = {"HAS_D": True, "HAS_Z": True, "HAS_BIAS": True, "SOFTPLUS": True}
CONV = {"WIDTH": 4, "BLOCK_D": mixer_triton._conv_block_d(1024), "BLOCK_L": mixer_triton.CONV_BLOCK_L}
GROUPS = TILE["block_d"] // 32

KERNELS = {
    "scan forward": (selective_scan_triton._scan_forward_kernel,
                     {**STATE, **FLAGS, "BLOCK_D": FORWARD_TILE["block_d"], "CHUNK": FORWARD_TILE["chunk"],
                      "CHECKPOINT": False}),
    "scan forward, training": (selective_scan_triton._scan_forward_kernel,
                               {**STATE, **FLAGS, "BLOCK_D": TILE["block_d"],
                                "CHUNK": TILE["chunk"] * TILE["subchunks"], "CHECKPOINT": True}),
    "scan backward": (selective_scan_triton._scan_backward_kernel,
                      {**STATE, **FLAGS, "BLOCK_D": TILE["block_d"], "CHUNK": TILE["chunk"],
                       "SUBCHUNKS": TILE["subchunks"], "GROUPS": GROUPS}),
    "order conv forward": (mixer_triton._conv_forward_kernel, CONV),
    "order conv backward": (mixer_triton._conv_backward_kernel, CONV),
    "order conv input gradient": (
        mixer_triton._conv_input_grad_kernel,
        {"WIDTH": 4, "BLOCK_D": CONV["BLOCK_D"], "BLOCK_T": mixer_triton.CONV_BLOCK_T}),
    **{f"order scan merge, {grid}{', training' if checkpoint else ''}": (
        mixer_triton._scan_merge_kernel,
        {**STATE, "BLOCK_D": TILE["block_d"], "CHUNK": TILE["chunk"] * TILE["subchunks"],
         "CHECKPOINT": checkpoint, "SPLIT": grid == "split"})
       for grid in ("serial", "split") for checkpoint in (False, True)},
    **{f"order scan merge backward, {grid}": (
        mixer_triton._scan_merge_backward_kernel,
        {**STATE, "BLOCK_D": TILE["block_d"], "CHUNK": TILE["chunk"], "SUBCHUNKS": TILE["subchunks"],
         "GROUPS": GROUPS, "SPLIT": grid == "split"})
       for grid in ("serial", "split")},
}


def signature(kernel, constexprs: dict) -> dict:
    """Argument types as a launch would bind them: pointers by name, every other runtime argument an
    int32 (sizes and strides of DiffMa's tensors fit)."""
    types = {}
    for name in kernel.arg_names:
        if name in constexprs:
            types[name] = "constexpr"
        elif name.endswith("_ptr"):
            types[name] = "*bf16" if name in ACTIVATIONS else "*fp32"
        else:
            types[name] = "i32"
    return types


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    # Compiled binaries go to a fresh directory: a cached binary would skip the compiler under test.
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("Triton's interpreter is on in this process; it compiles nothing")


@pytest.mark.parametrize("name", list(KERNELS))
def test_kernel_compiles_for_hopper(name):
    kernel, constexprs = KERNELS[name]
    assert set(constexprs) == {p.name for p in kernel.params if p.is_constexpr}, "constexprs out of date"
    num_warps = TILE["num_warps"] if "BLOCK_D" in constexprs else 4
    compiled = triton.compile(ASTSource(kernel, signature(kernel, constexprs), constexprs), target=HOPPER,
                              options={"num_warps": num_warps})
    assert compiled.asm["cubin"], f"{name}: no binary"
    assert f".entry {kernel.__name__}" in compiled.asm["ptx"]
