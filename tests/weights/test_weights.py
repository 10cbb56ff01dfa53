"""Our weights files (save_model/load_model) and recognising released checkpoints from keys and shapes."""

import argparse
import json
import os
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

import diffma_cli.models
from diffma_cli import __version__
from diffma_cli.errors import InputError, OutputError
from diffma_cli.weights import load_model, save_model
from diffma_cli.weights.released import recognise


class _TinyNet(nn.Module):
    """Stand-in registry model: `config` like diffma's models, a shape that depends on its settings."""

    def __init__(self, name, width=4, depth=2):
        super().__init__()
        self.config = {"name": name, "width": width, "depth": depth}
        self.layers = nn.Sequential(*(nn.Linear(width, width) for _ in range(depth)))
        self.register_buffer("scale", torch.linspace(1, 2, width))

    def forward(self, x):
        return self.layers(x) * self.scale


def _stand_in_create_model(name, **overrides):
    if name != "tiny/1":
        raise InputError(f"unknown model {name}", hint="valid: tiny/1")
    return _TinyNet(name, **overrides)


@pytest.fixture
def tiny_registry(monkeypatch):
    monkeypatch.setattr(diffma_cli.models, "create_model", _stand_in_create_model, raising=False)


def _tiny(seed=0, **settings):
    torch.manual_seed(seed)
    model = _TinyNet("tiny/1", **settings)
    for parameter in model.parameters():
        nn.init.normal_(parameter)
    return model


def test_round_trip_gives_identical_outputs_and_config(tmp_path, tiny_registry):
    model = _tiny(width=6, depth=3)
    path = save_model(model, tmp_path / "tiny.safetensors")
    loaded = load_model(path)
    assert not loaded.training
    assert loaded.config == model.config
    x = torch.randn(5, 6)
    assert torch.equal(loaded(x), model(x))
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    assert metadata["format"] == "diffma" and metadata["diffma_version"] == __version__
    assert json.loads(metadata["config"]) == {"name": "tiny/1", "width": 6, "depth": 3}
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask  # as readable as any other output


def test_save_refuses_existing_output_and_other_suffixes(tmp_path, tiny_registry):
    path = save_model(_tiny(seed=1), tmp_path / "tiny.safetensors")
    with pytest.raises(OutputError, match="already exists"):
        save_model(_tiny(seed=2), path)
    save_model(_tiny(seed=2), path, overwrite=True)
    assert torch.equal(load_model(path).layers[0].weight, _tiny(seed=2).layers[0].weight)
    with pytest.raises(InputError, match=".safetensors"):
        save_model(_tiny(), tmp_path / "tiny.pt")
    assert [entry.name for entry in tmp_path.iterdir()] == ["tiny.safetensors"]  # no partial files


def test_save_needs_a_diffma_config(tmp_path):
    with pytest.raises(InputError, match="no diffma config"):
        save_model(nn.Linear(2, 2), tmp_path / "linear.safetensors")


def test_override_of_another_size_names_the_key_and_both_shapes(tmp_path, tiny_registry):
    path = save_model(_tiny(width=4), tmp_path / "tiny.safetensors")
    with pytest.raises(InputError) as mismatch:
        load_model(path, width=8)
    message = str(mismatch.value)
    assert "`scale` has shape (4,) in the file but (8,) in the model" in message  # first key that differs
    assert str(path) in message


def test_missing_and_unexpected_keys_are_listed(tmp_path, tiny_registry):
    path = save_model(_tiny(depth=2), tmp_path / "tiny.safetensors")
    with pytest.raises(InputError, match=r"weights of tiny/1 are missing \(layers\.2\.weight"):
        load_model(path, depth=3)
    with pytest.raises(InputError, match=r"2 are not part of tiny/1 \(layers\.1\.bias, layers\.1\.weight\)"):
        load_model(path, depth=1)


def test_truncated_safetensors_is_an_input_error(tmp_path, tiny_registry):
    path = save_model(_tiny(width=16), tmp_path / "tiny.safetensors")
    data = path.read_bytes()
    for cut in (20, len(data) // 2, len(data) - 1):
        truncated = tmp_path / f"cut-{cut}.safetensors"
        truncated.write_bytes(data[:cut])
        with pytest.raises(InputError, match="damaged or truncated|neither"):
            load_model(truncated)


def test_foreign_safetensors_needs_the_model_name(tmp_path, tiny_registry):
    path = tmp_path / "foreign.safetensors"
    save_file({key: value.contiguous() for key, value in _tiny(seed=3).state_dict().items()}, str(path))
    with pytest.raises(InputError, match="not written by diffma.*--model"):
        load_model(path)
    loaded = load_model(path, name="tiny/1")
    assert torch.equal(loaded.layers[1].bias, _tiny(seed=3).layers[1].bias)


def test_unknown_model_name_is_an_input_error_naming_the_file(tmp_path, tiny_registry):
    path = save_model(_tiny(), tmp_path / "tiny.safetensors")
    with pytest.raises(InputError, match="cannot build the model it describes: unknown model other/2") as err:
        load_model(path, name="other/2")
    assert str(path) in str(err.value)


def test_files_that_are_not_weights_are_refused(tmp_path):
    text = tmp_path / "notes.safetensors"
    text.write_text("hello world, not weights", encoding="utf-8")
    with pytest.raises(InputError, match="neither a diffma .safetensors"):
        load_model(text)
    with pytest.raises(InputError, match="no such file"):
        load_model(tmp_path / "missing.safetensors")


# --- recognising released state dicts from key names and shapes (released model.py / CT_encoder.py) ---

class _Shape:
    def __init__(self, *shape):
        self.shape = shape


def _released_backbone(block_keys, depth=4, width=64, patch=2, grid=14, channels=4):
    weights = {"x_embedder.proj.weight": _Shape(width, channels, patch, patch),
               "pos_embed": _Shape(1, grid * grid, width),
               "final_layer.linear.weight": _Shape(patch * patch * 2 * channels, width)}
    for index in range(depth):
        for key in block_keys:
            weights[f"blocks.{index}.{key}"] = _Shape(2 * width, 16) if key.endswith("A_log") else _Shape(1)
    return weights


DIFFMA_BLOCK = ["mamba1.in_proj.weight", "mamba1.A_log", "mamba2.in_proj.weight",
                "attention_network.1.weight"]
DIT_BLOCK = ["attn.qkv.weight", "mlp.fc1.weight"]
SINGLE_MIXER_BLOCK = ["mamba.in_proj.weight", "mamba.A_log", "norm1.weight"]


def test_recognises_diffma_sizes_and_patches():
    path = Path("x.pt")
    config = recognise(_released_backbone(DIFFMA_BLOCK, depth=8, width=512, patch=2), path)
    assert config == {"name": "DiffMa-B/2", "depth": 8, "hidden_size": 512, "patch_size": 2,
                      "in_channels": 4, "input_size": 28, "learn_sigma": True, "scan": "released",
                      "d_state": 16}
    config = recognise(_released_backbone(DIFFMA_BLOCK, depth=16, patch=7, grid=4), path)
    assert (config["name"], config["patch_size"], config["input_size"]) == ("DiffMa-L/7", 7, 28)
    config = recognise(_released_backbone(DIFFMA_BLOCK, depth=5, width=64), path)  # not a released size
    assert (config["name"], config["depth"], config["hidden_size"]) == ("DiffMa-B/2", 5, 64)


def test_recognises_dit_and_needs_a_name_for_single_mixer_baselines():
    path = Path("x.pt")
    config = recognise(_released_backbone(DIT_BLOCK, depth=8), path)
    assert config["name"] == "DiT-B/2" and "scan" not in config
    single = _released_backbone(SINGLE_MIXER_BLOCK, depth=13)
    with pytest.raises(InputError, match="ZigMa, ViM, VMamba, EMamba.*--model"):
        recognise(single, path)
    config = recognise(single, path, "VMamba-BL/2")
    assert (config["name"], config["scan"], config["d_state"]) == ("VMamba-BL/2", "released", 16)
    assert recognise(single, path, "ViM-BL/2")["name"] == "ViM-BL/2"


def test_recognises_the_embedder_and_refuses_unknown_layouts():
    weights = {"vision_embedding.proj.weight": _Shape(512, 4, 2, 2), "fc.0.weight": _Shape(14, 196)}
    assert recognise(weights, Path("e.pt")) == {"name": "embedder/2", "hidden_size": 512, "in_channels": 4,
                                                 "input_size": 28}
    with pytest.raises(InputError, match="no `x_embedder.proj.weight`"):
        recognise({"something.weight": _Shape(2)}, Path("e.pt"))
    with pytest.raises(InputError, match="match no known block"):
        recognise(_released_backbone(["conv.weight"]), Path("e.pt"))


def test_released_training_checkpoint_ema_and_raw_weights(tmp_path, monkeypatch):
    """load_model on a released-layout .pt: EMA by default, `model` with ema=False, args give the family."""
    created = []

    def create_model(name, **settings):
        created.append((name, settings))
        return _ReleasedStandIn(name, settings)

    monkeypatch.setattr(diffma_cli.models, "create_model", create_model, raising=False)
    ema = _ReleasedStandIn("ZigMa-BL/2", {}).state_dict()
    raw = _ReleasedStandIn("ZigMa-BL/2", {}).state_dict()
    for tensor in raw.values():
        tensor.add_(1.0)
    path = tmp_path / "0750000.pt"
    torch.save({"model": raw, "ema": ema, "opt": {}, "args": argparse.Namespace(model="ZigMa-BL/2")}, path)
    loaded = load_model(path)
    assert created[-1][0] == "ZigMa-BL/2" and created[-1][1]["depth"] == 1
    assert all(torch.equal(loaded.state_dict()[key], ema[key]) for key in ema)
    loaded = load_model(path, ema=False)
    assert all(torch.equal(loaded.state_dict()[key], raw[key]) for key in raw)
    torch.save({"model": raw, "opt": {}}, path)
    with pytest.raises(InputError, match="no `ema` weights.*--raw"):
        load_model(path)


class _ReleasedStandIn(nn.Module):
    """The released single-mixer baseline layout, one block, tiny width."""

    def __init__(self, name, settings):
        super().__init__()
        self.config = {"name": name, **settings}
        width, patch = 8, 2
        self.x_embedder = nn.Module()
        self.x_embedder.proj = nn.Conv2d(4, width, patch, patch)
        self.pos_embed = nn.Parameter(torch.randn(1, 4, width), requires_grad=False)
        self.blocks = nn.ModuleList([nn.Module()])
        self.blocks[0].mamba = nn.Module()
        self.blocks[0].mamba.in_proj = nn.Linear(width, 2 * width)
        self.blocks[0].mamba.A_log = nn.Parameter(torch.zeros(2 * width, 16))
        self.final_layer = nn.Module()
        self.final_layer.linear = nn.Linear(width, patch * patch * 8)

    def state_dict(self, *args, **kwargs):
        return OrderedDict((key, value.detach().clone()) for key, value in super().state_dict().items())


def test_a_header_length_whose_first_byte_is_0x80_is_still_safetensors(tmp_path, tiny_registry):
    # safetensors begins with the header length as 8 little-endian bytes; a length of 128 + 256·k starts
    # with 0x80, the opcode that also begins a legacy pickle. A run's backbone file hit this (6528 bytes).
    model = _tiny(width=6, depth=3)
    path = tmp_path / "model.safetensors"
    for padding in range(300):
        save_model(model, path, overwrite=True, provenance={"note": "x" * padding})
        if path.read_bytes()[0] == 0x80:
            break
    assert path.read_bytes()[0] == 0x80
    loaded = load_model(path)
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
