"""On CUDA: the mamba-ssm fast path computes the same DiffMa-B/2 as our PyTorch path (values, gradients)."""

import importlib.util
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu


def _agreement_module():
    path = Path(__file__).parents[2] / "benchmarks" / "gpu_agreement.py"
    spec = importlib.util.spec_from_file_location("gpu_agreement", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_agreement"] = module
    spec.loader.exec_module(module)
    return module


def test_diffma_b2_fast_path_agrees_with_torch_path():
    from diffma_cli.models.ops.selective_scan import mamba_ssm_scan_fn

    if mamba_ssm_scan_fn() is None:
        pytest.skip("mamba-ssm is not importable here")
    rows = {row["comparison"]: row for row in _agreement_module().agreement()}
    fp32 = rows["mamba_ssm vs torch scan, fp32"]
    assert fp32["output"] < 1e-4 and fp32["grads"] < 1e-3
    bf16 = rows["mamba_ssm vs torch scan, bf16"]
    assert bf16["output"] < 3e-2 and bf16["grads"] < 5e-2
    assert rows["fast path bf16 vs torch fp32"]["output"] < 3e-2
