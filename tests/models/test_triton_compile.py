"""Every Triton kernel of the project compiles to a Hopper (sm_90) binary, on a machine without a GPU.

The kernel tests run in Triton's CPU interpreter, which executes the kernels as numpy code: it accepts
constructs the compiler rejects (and the other way round), so without this test a kernel could pass every
CPU test and fail to build on the first GPU. Each kernel is compiled as a DiffMa-B/2 training step
launches it: benchmarks/triton_registers.py records the launches of the real wrappers on CPU tensors and
specialises their arguments as Triton's JIT does (the same script reports registers and spills).
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


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    # Compiled binaries go to a fresh directory: a cached binary would skip the compiler under test.
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("Triton's interpreter is on in this process; it compiles nothing")


@pytest.fixture(scope="module", params=["serial", "split"])
def launches(request):
    """Every kernel's launch in a DiffMa-B/2 training step (batch 2), recorded on the CPU, per grid."""
    return registers.launches(grid=request.param, batch=2)


def test_a_training_step_launches_every_kernel(launches):
    assert set(launches) == set(registers.KERNEL_NAMES)


@pytest.mark.parametrize("name", list(registers.KERNEL_NAMES))
def test_kernel_compiles_for_hopper_as_launched(launches, name):
    kernel, args, kwargs = launches[name]
    # The wrapper passes every argument the kernel declares, no more (a launch would fail otherwise).
    passed = set(kernel.arg_names[:len(args)]) | {key for key in kwargs if key in kernel.arg_names}
    assert passed == set(kernel.arg_names) and len(args) <= len(kernel.arg_names)
    source, num_warps = registers.specialised_source(kernel, args, kwargs)
    compiled = registers.compile_for_hopper(source, num_warps)
    assert compiled.asm["cubin"], f"{name}: no binary"
    assert f".entry {kernel.__name__}" in compiled.asm["ptx"]


def test_register_report_reads_ptxas(capsys):
    # The whole report: ptxas ran for every kernel and its numbers were parsed (a thread has at most 255
    # registers on every NVIDIA GPU since Kepler).
    assert registers.main(["--batch", "2"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines()
            if line.startswith("| ") and not line.startswith("| kernel")]
    assert len(rows) == len(registers.KERNEL_NAMES)
    for row in rows:
        warps, used, stores, loads = (int(cell) for cell in row.strip("| ").split(" | ")[1:])
        assert warps in (1, 2, 4, 8) and 16 <= used <= 255 and stores >= 0 and loads >= 0


def test_tile_overrides_parse_and_refuse_in_one_line(capsys):
    assert registers.tile_overrides("num_warps=8,chunk=2,subchunks=4") == {"num_warps": 8, "chunk": 2,
                                                                          "subchunks": 4}
    assert registers.tile_overrides("") == {}
    for bad in ("chunk", "chunks=2", "chunk=-1", "chunk=0", "chunk=two"):
        with pytest.raises(SystemExit) as exit_info:
            registers.main(["--tile", bad])
        assert exit_info.value.code == 2
        assert "expected block_d, chunk, num_warps or subchunks" in capsys.readouterr().err
