"""benchmarks/step_flops.py: the counted matrix-product work against hand-computed shapes."""

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "step_flops.py"


@pytest.fixture(scope="module")
def step_flops():
    spec = importlib.util.spec_from_file_location("step_flops", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fused_saving_is_the_extra_out_proj_work(step_flops):
    """DiffMa-B/2 at 64² (8 × 8 latent, 16 tokens): the fused column saves exactly (K − 1) out_proj products
    of 2·T·Di·D per mixer, forward and backward (x 3), with 8 blocks of 2 mixers, K = 3 orders, D = 512,
    Di = 1 024; and backward costs twice the forward, up to the few products whose input needs no grad."""
    row = step_flops.training_flops("DiffMa-B/2", 64)
    tokens, width, inner, orders, mixers = 16, 512, 1024, 3, 16
    assert row["tokens"] == tokens
    saved = mixers * (orders - 1) * 3 * 2 * tokens * inner * width
    assert (row["train"] - row["fused_train"]) * 1e9 == pytest.approx(saved, rel=1e-12)
    assert row["train"] / row["forward"] == pytest.approx(3.0, abs=0.02)


def test_attention_is_counted_for_dit(step_flops):
    """DiT-B/2's attention (QKᵀ and AV: 4·T²·D per block, forward) is in the count: over three sizes the
    forward is a + b·T + c·T² (per-token layers, conditioning MLPs, attention) with c = 4·D·depth."""
    from diffma_cli.models import create_model

    config = create_model("DiT-B/2", input_size=8).config
    width, depth = config["hidden_size"], config["depth"]
    tokens = {64: 16, 128: 64, 192: 144}
    forward = {tokens[res]: step_flops.training_flops("DiT-B/2", res)["forward"] * 1e9 for res in tokens}
    (t1, f1), (t2, f2), (t3, f3) = sorted(forward.items())
    quadratic = ((f3 - f2) / (t3 - t2) - (f2 - f1) / (t2 - t1)) / (t3 - t1)
    assert quadratic == pytest.approx(4 * width * depth, rel=1e-9)
