"""The recipe a training runs with (diffma_cli.train.settings): the command line's rules, callable from
Python. Expected values are read from the shipped recipe file itself (yaml), not from the code under test."""

from pathlib import Path

import pytest
import yaml

from diffma_cli.config import save_recipe
from diffma_cli.errors import InputError
from diffma_cli.train.settings import model_name, training_recipe

BRAIN = yaml.safe_load((Path(__file__).resolve().parents[2] / "recipes" / "brain.yaml").read_text(
    encoding="utf-8"))


def test_nothing_chosen_is_the_named_recipe(tmp_path):
    resolved = training_recipe("diffusion", tmp_path / "run", "brain")
    assert resolved.model.name == BRAIN["model"]["name"]
    assert resolved.training.global_batch_size == BRAIN["training"]["global_batch_size"]
    assert resolved.training.epochs == BRAIN["training"]["epochs"]


def test_typed_choices_override_the_recipe_and_set_overrides_them(tmp_path):
    resolved = training_recipe("diffusion", tmp_path / "run", "brain", batch_size=4, steps=7,
                               sets=["training.global_batch_size=6", "training.lr=2e-4"])
    assert resolved.training.global_batch_size == 6  # --set is the most specific
    assert resolved.training.steps == 7 and resolved.training.lr == pytest.approx(2e-4)


def test_epochs_alone_clear_the_recipes_steps(tmp_path):
    stepped = training_recipe("vae", tmp_path / "run", "brain", sets=["vae.training.steps=500"])
    assert stepped.vae.training.steps == 500
    by_epochs = training_recipe("vae", tmp_path / "run", "brain", epochs=3, sets=[])
    assert (by_epochs.vae.training.steps, by_epochs.vae.training.epochs) == (0, 3)
    both = training_recipe("vae", tmp_path / "run", "brain", epochs=3, steps=9)
    assert (both.vae.training.steps, both.vae.training.epochs) == (9, 3)


def test_patch_goes_to_the_embedder_or_the_backbone(tmp_path):
    assert training_recipe("embedder", tmp_path / "e", "brain", patch=4).embedder.patch_size == 4
    family = BRAIN["model"]["name"].split("-")[0]
    size = BRAIN["model"]["name"].split("-")[1].split("/")[0]
    assert training_recipe("diffusion", tmp_path / "d", "brain", patch=4).model.name == f"{family}-{size}/4"


@pytest.mark.parametrize(("current", "backbone", "size", "patch", "expected"), [
    ("DiffMa-B/2", None, None, None, None),
    ("DiffMa-B/2", None, "L", None, "DiffMa-L/2"),
    ("DiffMa-B/2", "dit", None, 4, "DiT-B/4"),
    ("DiT-B/2", "DiffMa", "S", None, "DiffMa-S/2"),
])
def test_model_name_takes_the_parts_not_given_from_the_current_name(current, backbone, size, patch, expected):
    assert model_name(current, backbone, size, patch) == expected


def test_bad_choices_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="no model DiffMa-Q/2"):
        training_recipe("diffusion", tmp_path / "run", "brain", size="Q")
    with pytest.raises(InputError, match="--backbone 'unet'"):
        training_recipe("diffusion", tmp_path / "run", "brain", backbone="unet")
    with pytest.raises(InputError, match="--scan"):
        training_recipe("diffusion", tmp_path / "run", "brain", scan="zigzag")
    with pytest.raises(InputError, match="--condition"):
        training_recipe("diffusion", tmp_path / "run", "brain", condition="cross-attention")


def test_resuming_without_a_recipe_reads_the_runs_own(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    own = training_recipe("diffusion", run, "demo", steps=11)
    save_recipe(own, run / "recipe.yaml")
    resumed = training_recipe("diffusion", run, None, resume=True)
    assert resumed.model.name == own.model.name and resumed.training.steps == 11
    assert training_recipe("diffusion", run, None, resume=False).model.name == BRAIN["model"]["name"]
