"""A run folder carries its own encoder references: moved, copied or used from another directory it still
converts; a path-looking encoder id that is missing says it is a path instead of advising a download."""

import json
import os
import shutil

import pytest
import yaml
from reliability_world import World
from typer.testing import CliRunner

from diffma_cli import runs
from diffma_cli.cli import app
from diffma_cli.config import apply_overrides, load_recipe
from diffma_cli.encoders.source import source_kind
from diffma_cli.encoders.vae import tiny_autoencoder
from diffma_cli.errors import InputError
from diffma_cli.train import run_folder


def run_with_local_vae(world: World, root):
    """The world's run with its VAE as a local folder beside it, recorded as training does (start_run)."""
    project = root / "project"
    tiny_autoencoder().save_pretrained(project / "vae")  # the same weights as "tiny": same fingerprint
    run = shutil.copytree(world.run, project / "run")
    recipe = apply_overrides(load_recipe(run / runs.RECIPE), {"encoders.vae": str(project / "vae")})
    run_folder.save_run_recipe(recipe, run)
    info = json.loads((run / runs.RUN_INFO).read_text(encoding="utf-8"))
    info["encoder_paths"] = runs.local_encoder_paths(recipe)
    (run / runs.RUN_INFO).write_text(json.dumps(info), encoding="utf-8")
    return project, run


def convert(world: World, run, out):
    return CliRunner().invoke(app, ["convert", str(world.ct), "-o", str(out), "--model", str(run), "--device",
                                    "cpu"])


def test_the_recipe_names_local_encoders_relative_to_the_run(world: World, tmp_path):
    project, run = run_with_local_vae(world, tmp_path)
    saved = yaml.safe_load((run / runs.RECIPE).read_text(encoding="utf-8"))["encoders"]
    hub_or_tiny = load_recipe(world.run / runs.RECIPE).encoders.clip
    assert saved["vae"] == "../vae" and saved["clip"] == hub_or_tiny
    assert runs.read_run_recipe(run).encoders.vae == str((project / "vae").resolve())


def test_a_moved_or_copied_run_converts_from_any_directory(world: World, tmp_path, monkeypatch):
    project, run = run_with_local_vae(world, tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert convert(world, run, tmp_path / "a.nii.gz").exit_code == 0
    moved = shutil.move(str(project), tmp_path / "moved")  # the project moved as a whole: relative paths
    assert convert(world, f"{moved}/run", tmp_path / "b.nii.gz").exit_code == 0
    copied = shutil.copytree(f"{moved}/run", tmp_path / "copy" / "run")  # the run alone: recorded path...
    info = json.loads((copied / runs.RUN_INFO).read_text(encoding="utf-8"))
    info["encoder_paths"]["vae"] = str(tmp_path / "moved" / "vae")  # ...as the run.json of that place says
    (copied / runs.RUN_INFO).write_text(json.dumps(info), encoding="utf-8")
    result = convert(world, copied, tmp_path / "c.nii.gz")
    assert result.exit_code == 0, result.output
    shutil.rmtree(tmp_path / "moved" / "vae")
    result = convert(world, copied, tmp_path / "d.nii.gz")
    assert result.exit_code == 2 and "the run's VAE is not found at ../vae" in result.stderr, result.output


def test_a_missing_path_that_looks_like_a_hub_id_says_it_is_a_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "diffma-demo").mkdir()
    with pytest.raises(InputError, match="read as a path because the folder diffma-demo exists"):
        source_kind("diffma-demo/vae")
    assert source_kind("owner/model") == "hub"
    os.makedirs("diffma-demo/vae")
    assert source_kind("diffma-demo/vae") == "folder"


def test_run_folder_mistakes_are_named(world: World, tmp_path):
    weights = world.run / runs.BACKBONE
    result = convert(world, weights, tmp_path / "a.nii.gz")
    assert result.exit_code == 2 and "is a file, not a run folder" in result.stderr
    result = convert(world, tmp_path / "absent", tmp_path / "a.nii.gz")
    assert result.exit_code == 2 and "no such run folder" in result.stderr
    run = shutil.copytree(world.run, tmp_path / "run")
    (run / runs.BACKBONE).unlink()
    result = convert(world, run, tmp_path / "a.nii.gz")
    assert result.exit_code == 2 and "finished run whose backbone.safetensors is missing" in result.stderr
    assert "--resume" not in result.stderr.replace("--resume cannot", "")
