"""benchmarks/conv_gpu.py stays right and runnable: its shifted-sum convolution is the mixer's convolution,
and on a CPU (timer stubbed) it prints one row per variant with errors against float64."""

import importlib.util
import sys
from pathlib import Path

import torch

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def load_benchmark():
    sys.path.insert(0, str(BENCHMARKS))  # conv_gpu imports backbone.py's timing loop
    try:
        spec = importlib.util.spec_from_file_location("conv_gpu", BENCHMARKS / "conv_gpu.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module


def test_shifted_sum_is_the_mixers_convolution_with_gradients():
    """Against the mixer's own module (nn.Conv1d padded both sides, cut) in float64; the shifted form
    accumulates in float32 by design (its inputs are bf16 on the GPU), hence float32 tolerances."""
    from diffma_cli.models.mamba import MultiOrderMamba

    bench = load_benchmark()
    conv = MultiOrderMamba(16, orders=[list(range(5))]).conv1d.double()
    x = torch.randn(3, conv.in_channels, 9, dtype=torch.float64, requires_grad=True)
    expected = torch.nn.functional.silu(conv(x)[..., :9])
    got = bench.shifted_silu(x, conv.weight, conv.bias)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    grad = torch.randn_like(expected)
    wanted = torch.autograd.grad(expected, (x, conv.weight, conv.bias), grad)
    found = torch.autograd.grad(got, (x, conv.weight, conv.bias), grad)
    for a, b in zip(found, wanted, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_cpu_run_prints_a_row_per_variant(monkeypatch, capsys):
    bench = load_benchmark()
    monkeypatch.setattr(bench, "DEVICE", "cpu")
    monkeypatch.setattr(bench, "variants", lambda: {"conv1d": bench.conv_silu, "shifted": bench.shifted_silu})
    calls = []

    def fake_timer(step, warmup, repeat, give_up_ms=None):
        step()
        calls.append(repeat)
        return [1.0, 2.0, 3.0]

    monkeypatch.setattr(bench, "time_steps", fake_timer)
    bench.main(["--shapes", "2x8x7", "--repeat", "3"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 2x8x7 |")]
    assert [row.split("|")[2].strip() for row in rows] == ["conv1d", "shifted"]
    for row in rows:
        fwd, fwdbwd, out_err, grad_err = (float(cell) for cell in row.split("|")[3:7])
        assert fwd == fwdbwd == 2.0  # the median of the timer's values
        assert 0 < out_err < 1e-2 and 0 < grad_err < 1e-2  # bf16 rounding against float64, not zero
    assert calls == [3, 3, 3, 3]


def test_default_input_has_the_mixers_layout_and_the_leaves_keep_it(monkeypatch):
    """The mixer convolves the channel half of in_proj's output, a non-contiguous view (unit stride along
    L), slower for PyTorch's convolution than a contiguous tensor: the benchmark must time that layout."""
    bench = load_benchmark()
    monkeypatch.setattr(bench, "DEVICE", "cpu")
    x = bench.make_inputs(2, 8, 7)[0]
    assert x.shape == (2, 8, 7) and x.stride() == (16 * 7, 7, 1) and not x.is_contiguous()
    leaf = bench.leaf_like(x)
    assert leaf.stride() == x.stride() and leaf.requires_grad and leaf.is_leaf
    assert torch.equal(leaf.detach(), x)
    assert bench.make_inputs(2, 8, 7, layout="contiguous")[0].is_contiguous()
