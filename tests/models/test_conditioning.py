"""The `condition` setting of every backbone: released, tokens (paper Eq. 6), latent, latent+tokens."""

import pytest
import torch

from diffma_cli.errors import InputError
from diffma_cli.models import create_model
from diffma_cli.models.layers import condition_vector, token_condition
from diffma_cli.weights import load_model, save_model

# Tiny versions of DiffMa and two baselines: 28² latents at patch 7 give 16 tokens.
TINY = {"input_size": 28, "hidden_size": 32, "depth": 2}
NAMES = ("DiffMa-S/7", "DiT-S/7", "ZigMa-S/7")


def tiny(name: str, condition: str, seed: int = 0):
    torch.manual_seed(seed)
    extra = {"num_heads": 4} if name.startswith("DiT") else {}
    model = create_model(name, condition=condition, **TINY, **extra).eval()
    # adaLN outputs and the final layer start at zero (DiT's init): give them weights so that the
    # condition changes the output at all.
    with torch.no_grad():
        for parameter_name, parameter in model.named_parameters():
            if "adaLN_modulation" in parameter_name or "final_layer.linear" in parameter_name:
                parameter.normal_(0, 0.05)
    return model


def inputs(n: int = 2, constant_tokens: bool = False, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, 28, 28, generator=g)
    t = torch.randint(0, 1000, (n,), generator=g)
    y = torch.randn(n, 32, generator=g)
    y2 = torch.randn(n, 16, 32, generator=g)
    if constant_tokens:
        y2 = y2[:, :1].expand(-1, 16, -1).contiguous()
    w = torch.rand(n, 16, 1, generator=g)
    source = torch.randn(n, 4, 28, 28, generator=g)
    return x, t, y, y2, w, source


def test_token_condition_is_eq6_and_reduces_to_the_released_vector():
    t, y = torch.tensor([[1.0, 2.0]]), torch.tensor([[10.0, 20.0]])
    y2 = torch.tensor([[[100.0, 200.0], [300.0, 400.0]]])
    expected = torch.tensor([[[11.0, 22.0, 101.0, 202.0], [11.0, 22.0, 301.0, 402.0]]])
    assert torch.equal(token_condition(t, y, y2), expected)
    constant = y2[:, :1].expand(-1, 2, -1)
    assert torch.equal(token_condition(t, y, constant)[:, 0], condition_vector(t, y, constant))


@pytest.mark.parametrize("name", NAMES)
def test_tokens_equals_released_when_the_tokens_are_all_the_same(name):
    released, tokens = tiny(name, "released"), tiny(name, "tokens")
    tokens.load_state_dict(released.state_dict())  # same parameter names and shapes in both modes
    x, t, y, y2, w, _ = inputs(constant_tokens=True)
    with torch.no_grad():
        torch.testing.assert_close(tokens(x, t, y, y2, w), released(x, t, y, y2, w), rtol=1e-5, atol=1e-6)
        x, t, y, y2, w, _ = inputs(constant_tokens=False)
        # with tokens that differ, only the per-token model sees where they differ
        assert not torch.allclose(tokens(x, t, y, y2, w), released(x, t, y, y2, w), atol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_released_mode_ignores_where_the_tokens_are(name):
    """The released condition averages y2 over the tokens: permuting them changes nothing."""
    model = tiny(name, "released")
    x, t, y, y2, w, _ = inputs()
    permuted = y2[:, torch.randperm(16, generator=torch.Generator().manual_seed(3))]
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, y, permuted, w), model(x, t, y, y2, w), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("condition", ["latent", "latent+tokens"])
def test_latent_modes_read_the_ct_latent(name, condition):
    model = tiny(name, condition)
    assert model.x_embedder.proj.in_channels == 8  # [noisy MR latent, CT latent]
    x, t, y, y2, w, source = inputs()
    with torch.no_grad():
        out = model(x, t, y, y2, w, source)
        other = model(x, t, y, y2, w, source.flip(-1))  # only the CT changes
    assert out.shape == (2, 8, 28, 28)
    assert (out - other).abs().max() > 1e-3
    with pytest.raises(ValueError, match="needs the CT latent"):
        model(x, t, y, y2, w)


def test_unknown_condition_is_an_input_error():
    with pytest.raises(InputError, match="unknown condition 'spatial'"):
        create_model("DiffMa-S/7", condition="spatial", **TINY)
    with pytest.raises(InputError, match="unknown condition"):
        create_model("DiT-S/7", condition="spatial", **TINY, num_heads=4)


def test_weights_of_one_mode_are_refused_in_another(tmp_path):
    path = save_model(tiny("DiffMa-S/7", "latent"), tmp_path / "latent.safetensors")
    assert load_model(path).config["condition"] == "latent"
    assert load_model(path, condition="latent").config["condition"] == "latent"
    with pytest.raises(InputError, match="trained with condition 'latent', not 'tokens'") as error:
        load_model(path, condition="tokens")
    assert str(path) in str(error.value)


def test_files_without_a_condition_are_released_models(tmp_path):
    """Weights written before the setting existed hold released-mode models."""
    model = tiny("DiffMa-S/7", "released")
    del model.config["condition"]
    path = save_model(model, tmp_path / "old.safetensors")
    assert load_model(path).config["condition"] == "released"
    with pytest.raises(InputError, match="condition 'released', not 'latent'"):
        load_model(path, condition="latent")
