"""Registry, configs that rebuild the model, and parameter counts of every released DiffMa name."""

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from diffma_cli.errors import InputError
from diffma_cli.models import MODEL_NAMES, create_model, model_names, register_model, registry

with safe_open(Path(__file__).parents[1] / "data" / "released" / "scan_orders.safetensors", "pt") as _f:
    #: parameter counts of the released code's models (built by make_diffma_reference.py)
    RELEASED_COUNTS = json.loads(_f.metadata()["param_counts"])

#: docs/reference.md §3.6 (millions, 3 decimals) for the names it lists
TABLE_MILLIONS = {"DiffMa-S/7": 23.723, "DiffMa-S/4": 23.537, "DiffMa-S/2": 23.538, "DiffMa-B/7": 45.692,
                  "DiffMa-B/4": 45.506, "DiffMa-B/2": 45.507, "DiffMa-L/2": 89.445, "DiffMa-XL/2": 155.352,
                  "DiffMa-XXL/2": 309.134}


def count_parameters(name: str) -> int:
    with torch.device("meta"):  # no memory, no init cost: shapes only
        return sum(p.numel() for p in create_model(name).parameters())


@pytest.mark.parametrize("name", sorted(RELEASED_COUNTS))
def test_parameter_count_equals_the_released_code(name):
    assert count_parameters(name) == RELEASED_COUNTS[name]


def test_parameter_counts_match_the_reference_table():
    for name, millions in TABLE_MILLIONS.items():
        assert round(RELEASED_COUNTS[name] / 1e6, 3) == millions, name
    assert RELEASED_COUNTS["embedder/2"] == 15_938


def test_every_released_diffma_and_embedder_name_is_registered():
    expected = {f"DiffMa-{s}/{p}" for s in ("S", "B", "L", "XL", "XXL") for p in (2, 4, 7)}
    expected |= {f"embedder/{p}" for p in (2, 4, 7)}
    assert expected <= set(MODEL_NAMES) == set(model_names())


@pytest.mark.parametrize(
    "name, overrides",
    [("DiffMa-B/4", {"depth": 2, "hidden_size": 16, "scan": "spiral", "soft_mask": False}),
     ("embedder/4", {"hidden_size": 8})],
)
def test_config_is_json_and_rebuilds_the_same_architecture(name, overrides):
    model = create_model(name, **overrides)
    config = model.config
    assert json.loads(json.dumps(config)) == config
    assert config["name"] == name and all(config[k] == v for k, v in overrides.items())
    rebuilt = create_model(**config)
    assert rebuilt.config == config
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == shapes
    rebuilt.load_state_dict(model.state_dict())


def test_unknown_name_lists_choices():
    with pytest.raises(InputError, match="DiffMa-B/2"):
        create_model("DiffMa-Q/2")


def test_unknown_override_lists_valid_settings():
    with pytest.raises(InputError, match="valid overrides: .*scan"):
        create_model("DiffMa-B/2", heads=4)


def test_bad_scan_and_patch_are_refused():
    with pytest.raises(InputError, match="spiral"):
        create_model("DiffMa-S/2", scan="zigzag", depth=1, hidden_size=8)
    with pytest.raises(InputError, match="multiple"):
        create_model("DiffMa-S/2", patch_size=3, depth=1, hidden_size=8)
    with pytest.raises(InputError, match="multiple of 4"):
        create_model("DiffMa-S/2", depth=1, hidden_size=30)
    with pytest.raises(InputError, match="at least 1"):
        create_model("DiffMa-S/2", depth=0, hidden_size=8)


def test_register_model_refuses_a_taken_name_but_accepts_the_same_factory(monkeypatch):
    monkeypatch.setattr(registry, "_FACTORIES", dict(registry._FACTORIES))  # leave the real one alone

    def factory(**overrides):
        raise AssertionError("not called")

    register_model("test-only/1", factory)
    register_model("test-only/1", factory)
    with pytest.raises(ValueError, match="already"):
        register_model("test-only/1", lambda **kw: None)
