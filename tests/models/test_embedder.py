"""CT Vision Embedder against the released code with the released brain checkpoint; InfoNCE by hand."""

import math
from pathlib import Path

import torch
from safetensors.torch import load_file

from diffma_cli.models import create_model
from diffma_cli.models.embedder import info_nce_loss

REFERENCE = load_file(Path(__file__).parents[1] / "data" / "released" / "embedder_brain_p2.safetensors")


def test_released_brain_embedder_is_reproduced():
    model = create_model("embedder/2").eval()
    state = {k.removeprefix("ema."): v for k, v in REFERENCE.items() if k.startswith("ema.")}
    model.load_state_dict(state, strict=True)
    assert sum(p.numel() for p in model.parameters()) == 15_938
    with torch.no_grad():
        weight, tokens = model(REFERENCE["input.z"])
    assert weight.shape == (1, 196, 1) and tokens.shape == (1, 196, 512)
    for ours, theirs in ((weight, REFERENCE["output.weight"]), (tokens, REFERENCE["output.tokens"])):
        assert ((ours - theirs).norm() / theirs.norm()).item() <= 1e-5


def test_info_nce_of_orthogonal_samples():
    # Two samples whose flattened tokens are orthogonal: similarities 1/τ on the diagonal, 0 elsewhere,
    # so each row's loss is -log(e^{1/τ} / (e^{1/τ} + 1)).
    tokens = torch.zeros(2, 2, 3)
    tokens[0, 0, 0] = 5.0
    tokens[1, 1, 2] = -2.0
    tau = 0.07
    expected = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + 1))
    torch.testing.assert_close(info_nce_loss(tokens), torch.tensor(expected))


def test_info_nce_of_identical_samples_is_log_batch():
    tokens = torch.randn(1, 4, 5).repeat(3, 1, 1)
    torch.testing.assert_close(info_nce_loss(tokens), torch.tensor(math.log(3)))
