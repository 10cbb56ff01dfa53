"""Every Triton kernel of the project compiles to a Hopper (sm_90) binary, on a machine without a GPU.

The kernel tests run in Triton's CPU interpreter, which executes the kernels as numpy code: it accepts
constructs the compiler rejects (and the other way round), so without this test a kernel could pass every
CPU test and fail to build on the first GPU. The kernels, their production tiles for DiffMa-B/2's mixer
and the compile call are benchmarks/triton_registers.py's, which also reports registers and spills.
"""

import importlib.util
import os
from pathlib import Path

import pytest

pytest.importorskip("triton")

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def load_benchmark():
    spec = importlib.util.spec_from_file_location("triton_registers", BENCHMARKS / "triton_registers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


registers = load_benchmark()
KERNELS = registers.kernels()


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    # Compiled binaries go to a fresh directory: a cached binary would skip the compiler under test.
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("Triton's interpreter is on in this process; it compiles nothing")


@pytest.mark.parametrize("name", list(KERNELS))
def test_kernel_compiles_for_hopper(name):
    kernel, constexprs, num_warps = KERNELS[name]
    assert set(constexprs) == {p.name for p in kernel.params if p.is_constexpr}, "constexprs out of date"
    compiled = registers.compile_for_hopper(kernel, constexprs, num_warps)
    assert compiled.asm["cubin"], f"{name}: no binary"
    assert f".entry {kernel.__name__}" in compiled.asm["ptx"]


def test_register_report_reads_ptxas(capsys):
    # The smallest kernel through the whole report: ptxas ran and its numbers were parsed (a thread has at
    # most 255 registers on every NVIDIA GPU since Kepler).
    assert registers.main(["--kernels", "order conv forward"]) == 0
    row = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| order conv forward")]
    assert len(row) == 1
    warps, used, stores, loads = (int(cell) for cell in row[0].strip("| ").split(" | ")[1:])
    assert warps == 4 and 16 <= used <= 255 and stores >= 0 and loads >= 0
