"""Recipes: YAML round trip, overrides, and clear errors for unknown keys and wrong types."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from diffma_cli.config import (
    BUILTIN_RECIPES,
    Recipe,
    apply_overrides,
    builtin_recipe_text,
    load_recipe,
    recipe_from_dict,
    recipe_to_dict,
    recipe_yaml,
    save_recipe,
)
from diffma_cli.errors import InputError

REPOSITORY = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", BUILTIN_RECIPES)
def test_builtin_recipes_round_trip_through_yaml(tmp_path, name):
    recipe = load_recipe(name)
    save_recipe(recipe, tmp_path / "recipe.yaml")
    assert load_recipe(tmp_path / "recipe.yaml") == recipe
    assert recipe_from_dict(yaml.safe_load(recipe_yaml(recipe))) == recipe


def test_builtin_recipes_hold_the_paper_and_released_values():
    brain, pelvis = load_recipe("brain"), load_recipe("pelvis")
    for recipe in (brain, pelvis):
        assert recipe.training.lr == 1e-4 and recipe.training.weight_decay == 0.0  # paper
        assert recipe.training.epochs == 50 and recipe.training.ema_decay == 0.9999
        assert recipe.embedder.tau == 0.07 and recipe.embedder.training.ema_decay == 0.9999
        assert recipe.embedder.training.global_batch_size == 32 and recipe.embedder.training.epochs == 100
        assert recipe.encoders.latent_scale is None and recipe.diffusion.num_timesteps == 1000
    assert brain.training.global_batch_size == 8 and pelvis.training.global_batch_size == 1
    # Every key of the dataclasses is written out in the shipped files (nothing silently defaulted).
    for name in ("brain", "pelvis", "pelvis-512", "demo"):
        written = yaml.safe_load(builtin_recipe_text(name))
        assert _keys(written) == _keys(recipe_to_dict(Recipe()))


def test_builtin_recipes_are_the_top_level_files():
    # A source checkout reads recipes/ at the top of the repository.
    for name in BUILTIN_RECIPES:
        top_level = REPOSITORY / "recipes" / f"{name}.yaml"
        assert builtin_recipe_text(name) == top_level.read_text(encoding="utf-8")


def test_the_build_ships_the_recipes_inside_the_package(tmp_path):
    # What `pip install .` puts in the wheel: setup.py's build_py copies recipes/ to diffma_cli/recipes/.
    subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(tmp_path)],
                   cwd=REPOSITORY, check=True, capture_output=True)
    shipped = sorted(p.name for p in (tmp_path / "diffma_cli" / "recipes").glob("*.yaml"))
    assert shipped == sorted(f"{name}.yaml" for name in BUILTIN_RECIPES)
    for name in shipped:
        copy = tmp_path / "diffma_cli" / "recipes" / name
        assert copy.read_bytes() == (REPOSITORY / "recipes" / name).read_bytes()


def _keys(tree, prefix=""):
    keys = set()
    for key, value in tree.items():
        keys.add(prefix + key)
        if isinstance(value, dict):
            keys |= _keys(value, prefix + key + ".")
    return keys


def test_overrides_reach_any_key_and_are_typed():
    recipe = apply_overrides(load_recipe("brain"), ["training.lr=2e-4", "model.scan=released",
                                                    "embedder.training.global_batch_size=64",
                                                    "model.depth=4", "training.betas=[0.8, 0.99]"])
    assert recipe.training.lr == 2e-4 and isinstance(recipe.training.lr, float)
    assert recipe.model.scan == "released" and recipe.model.depth == 4
    assert recipe.embedder.training.global_batch_size == 64 and recipe.training.betas == [0.8, 0.99]
    assert apply_overrides(recipe, {"model.depth": None}).model.depth is None


@pytest.mark.parametrize("override, message", [
    ("training.lrr=1", "unknown recipe key training.lrr (valid keys in training: lr, weight_decay"),
    ("trainin.lr=1", "unknown recipe section trainin"),
    ("training.lr.x=1", "unknown recipe section training.lr"),
    ("training.global_batch_size=eight", "training.global_batch_size must be int, got 'eight'"),
    ("training.global_batch_size=8.5", "must be int, got 8.5"),
    ("encoders.offline=maybe", "encoders.offline must be bool"),
    ("training.betas=0.9", "training.betas must be a list of float"),
    ("model.scan=zigzag", "model.scan='zigzag' is not one of: released, spiral"),
    ("training.ema_decay=1.5", "must be in [0, 1)"),
    ("training.lr", "is not of the form section.key=value"),
])
def test_bad_overrides_name_the_key_and_the_valid_choices(override, message):
    with pytest.raises(InputError) as error:
        apply_overrides(load_recipe("demo"), [override])
    assert message in str(error.value)


def test_bad_recipe_files_name_the_file_and_the_key(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("training:\n  lr: 1e-4\n  epoch: 3\n", encoding="utf-8")
    with pytest.raises(InputError) as error:
        load_recipe(path)
    assert str(path) in str(error.value) and "unknown recipe key training.epoch" in str(error.value)
    path.write_text("training: [1, 2\n", encoding="utf-8")
    with pytest.raises(InputError, match="not valid YAML"):
        load_recipe(path)
    with pytest.raises(InputError, match="no such recipe file"):
        load_recipe(tmp_path / "missing.yaml")
    # A partial recipe takes the defaults for the rest; "1e-4" (a string in YAML 1.1) is read as a float.
    path.write_text("training:\n  lr: 1e-4\n", encoding="utf-8")
    assert load_recipe(path).training.lr == 1e-4
