"""Importing checkpoints of the released code into diffma's real models (diffma_cli.models)."""

import argparse
import json
from pathlib import Path

import pytest
import torch
from released_baselines import assert_matches_float64_reference, forward_in_float64, load_released_baseline
from safetensors import safe_open

from diffma_cli.errors import InputError
from diffma_cli.models import create_model, model_names
from diffma_cli.weights import load_model, save_model

DATA = Path(__file__).parents[1] / "data"
RELEASED_EMBEDDERS = DATA / "released-embedder"


def _released_layout(path: Path, weights: dict, args=None) -> Path:
    """A checkpoint as the released train.py writes it: {"model", "ema", "opt", "args"}."""
    torch.save({"model": weights, "ema": weights, "opt": {"state": {}, "param_groups": []},
                "args": args if args is not None else argparse.Namespace()}, path)
    return path


@pytest.mark.parametrize("name", ["brain_patch_size_2.pt", "pelvis_patch_size_2.pt"])
def test_released_embedders_load_ema_by_default_and_raw_on_request(name):
    path = RELEASED_EMBEDDERS / name
    with torch.serialization.safe_globals([argparse.Namespace]):
        reference = torch.load(path, map_location="cpu", weights_only=True)
    for ema, which in ((True, "ema"), (False, "model")):
        model = load_model(path, ema=ema)
        assert model.config["name"] == "embedder/2" and not model.training
        loaded = model.state_dict()
        assert loaded.keys() == reference[which].keys()
        assert all(torch.equal(loaded[key], reference[which][key]) for key in loaded)


def test_released_embedder_of_another_patch_size_names_key_and_shapes():
    path = RELEASED_EMBEDDERS / "brain_patch_size_2.pt"
    with pytest.raises(InputError, match=r"vision_embedding.proj.weight` has shape \(512, 4, 2, 2\) in the "
                                         r"file but \(512, 4, 4, 4\)"):
        load_model(path, name="embedder/4")


#: reference file -> the released name its training options would carry (`args.model`).
BASELINES = {"dit": "DiT-S/2", "zigma": "ZigMa-S/2", "vim": "ViM-S/4", "vmamba": "VMamba-S/2",
             "emamba": "EMamba-S/2"}


@pytest.mark.parametrize("family", sorted(BASELINES))
def test_released_baseline_checkpoints_import_and_reproduce_the_released_output(tmp_path, family):
    released_name = BASELINES[family]
    if not any(name.split("-")[0] == released_name.split("-")[0] for name in model_names()):
        pytest.skip(f"{released_name.split('-')[0]} is not in the model registry yet")
    config, state, inputs, expected = load_released_baseline(family)
    path = _released_layout(tmp_path / "0050000.pt", state, args=argparse.Namespace(model=released_name))
    model = load_model(path)
    assert model.config["name"].split("-")[0] == released_name.split("-")[0]
    for key in ("depth", "hidden_size", "patch_size", "input_size"):
        assert model.config[key] == config[key], key
    assert_matches_float64_reference(forward_in_float64(model, inputs), expected)


def _tiny_diffma():
    torch.manual_seed(0)
    model = create_model("DiffMa-S/2", depth=2, hidden_size=32, input_size=8)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:  # the released initialisation zeroes the output layers
                parameter.normal_(0, 0.1)
    return model.eval()


def _inputs(model, batch=2):
    torch.manual_seed(1)
    config = model.config
    tokens = (config["input_size"] // config["patch_size"]) ** 2
    return (torch.randn(batch, config["in_channels"], config["input_size"], config["input_size"]),
            torch.tensor([3, 700]), torch.randn(batch, config["hidden_size"]),
            torch.randn(batch, tokens, config["hidden_size"]), torch.rand(batch, tokens, 1))


def test_diffma_released_layout_is_recognised_with_released_scan(tmp_path):
    model = _tiny_diffma()
    path = _released_layout(tmp_path / "0001000.pt", model.state_dict())
    loaded = load_model(path)
    for key in ("depth", "hidden_size", "patch_size", "input_size", "in_channels", "learn_sigma"):
        assert loaded.config[key] == model.config[key], key
    assert loaded.config["scan"] == "released" and loaded.config["name"].startswith("DiffMa-")
    with torch.no_grad():
        assert torch.equal(loaded(*_inputs(model)), model(*_inputs(model)))


def test_a_model_name_of_another_size_reports_the_mismatch(tmp_path):
    path = _released_layout(tmp_path / "0001000.pt", _tiny_diffma().state_dict())
    with pytest.raises(InputError, match=r"`pos_embed` has shape \(1, 16, 32\) in the file but "
                                         r"\(1, 4, 32\) in the model"):
        load_model(path, name="DiffMa-S/4", depth=2)
    with pytest.raises(InputError, match=r"weights of DiffMa-L/2 are missing \(blocks\.2\."):
        load_model(path, name="DiffMa-L/2")
    assert load_model(path, name="DiffMa-L/2", depth=2).config["depth"] == 2


def test_real_model_round_trip_through_our_format(tmp_path):
    model = _tiny_diffma()
    loaded = load_model(save_model(model, tmp_path / "diffma.safetensors"))
    assert loaded.config == model.config
    with torch.no_grad():
        assert torch.equal(loaded(*_inputs(model)), model(*_inputs(model)))


def test_weights_of_another_size_are_refused_with_key_and_shapes(tmp_path):
    path = save_model(_tiny_diffma(), tmp_path / "diffma.safetensors")
    with pytest.raises(InputError, match=r"has shape .* in the file but .* in the model"):
        load_model(path, hidden_size=64)
    with pytest.raises(InputError, match=r"weights of DiffMa-S/2 are missing \(blocks\.2\."):
        load_model(path, depth=3)


def _reference_file(name: str) -> Path:
    path = DATA / "released" / name
    if not path.is_file():
        pytest.skip(f"{name} not generated yet (tests/data/released/make_diffma_reference.py)")
    return path


def _relative_error(output: torch.Tensor, expected: torch.Tensor) -> float:
    return ((output - expected).norm() / expected.norm()).item()


def test_imported_released_embedder_reproduces_the_released_outputs(tmp_path):
    """brain_patch_size_2.pt -> our file -> model; the released CT_Encoder's outputs on the same input."""
    with safe_open(str(_reference_file("embedder_brain_p2.safetensors")), framework="pt") as handle:
        reference = {key: handle.get_tensor(key) for key in handle.keys()}
    from diffma_cli.weights import import_released

    import_released(RELEASED_EMBEDDERS / "brain_patch_size_2.pt", tmp_path / "embedder.safetensors")
    model = load_model(tmp_path / "embedder.safetensors")
    with torch.no_grad():
        weight, tokens = model(reference["input.z"])
    assert _relative_error(weight, reference["output.weight"]) <= 1e-5
    assert _relative_error(tokens, reference["output.tokens"]) <= 1e-5


@pytest.mark.parametrize("case", ["p2", "p4", "p7"])
def test_released_diffma_checkpoint_reproduces_the_released_output(tmp_path, case):
    with safe_open(str(_reference_file(f"diffma_{case}.safetensors")), framework="pt") as handle:
        config = json.loads(handle.metadata()["config"])
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    state = {key.removeprefix("model."): value for key, value in tensors.items() if key.startswith("model.")}
    model = load_model(_released_layout(tmp_path / "0100000.pt", state))
    for key in ("depth", "hidden_size", "patch_size", "input_size"):
        assert model.config[key] == config[key], key
    assert model.config["scan"] == "released"
    with torch.no_grad():
        output = model(*(tensors[f"input.{key}"] for key in ("x", "t", "y", "y2", "w")))
    assert _relative_error(output, tensors["output"]) <= 1e-5


def test_dictconfig_options_name_the_model_without_omegaconf(tmp_path, monkeypatch):
    """Released diffusion training stores an OmegaConf DictConfig as `args`; its `model` names the model."""
    import sys

    from fake_omegaconf import write_fake_omegaconf

    write_fake_omegaconf(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    from omegaconf.dictconfig import DictConfig

    torch.manual_seed(0)
    model = create_model("DiffMa-S/2", depth=4, hidden_size=16, input_size=8)
    path = _released_layout(tmp_path / "0050000.pt", model.state_dict(),
                            args=DictConfig({"model": "DiffMa-S/2", "epochs": 50, "lr": 1e-4}))
    for name in [module for module in sys.modules if module.split(".")[0] == "omegaconf"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "path", [entry for entry in sys.path if entry != str(tmp_path)])

    loaded = load_model(path)
    assert loaded.config["name"] == "DiffMa-S/2" and loaded.config["depth"] == 4
    from diffma_cli.info import describe

    assert describe(path)["args"] == {"model": "DiffMa-S/2", "epochs": 50, "lr": 1e-4}
    assert not any(module.split(".")[0] == "omegaconf" for module in sys.modules)


def test_released_checkpoint_with_missing_or_unexpected_keys_is_refused(tmp_path):
    state = _tiny_diffma().state_dict()
    extra = {**state, "blocks.0.mamba1.dt_bias": torch.zeros(64)}  # a Mamba-2 key diffma does not have
    with pytest.raises(InputError, match=r"1 are not part of DiffMa-\S+ \(blocks\.0\.mamba1\.dt_bias\)"):
        load_model(_released_layout(tmp_path / "extra.pt", extra))
    partial = {key: value for key, value in state.items() if not key.startswith("t_embedder.")}
    with pytest.raises(InputError, match=r"4 weights of DiffMa-\S+ are missing \(t_embedder\.mlp\.0\."):
        load_model(_released_layout(tmp_path / "partial.pt", partial))

