"""Trainings that cannot work fail before their run folder exists; trainings that diverge fail loudly.

- Settings out of range (a negative learning rate, a temperature of 0, betas outside [0, 1), a seed beyond
  64 bits) and weights of the wrong kind (a backbone given as --embedder) are one line, and no run folder
  is left under the output name (so the corrected command is not refused as "already exists").
- A run whose steps are mostly non-finite warns, ends with "training diverged: N of M steps were
  non-finite", exit 2, and stays unfinished (convert refuses it); log.jsonl stays strict JSON (null, never
  a bare NaN).
- --resume refuses a model change.
"""

import json
import math

import pytest
from reliability_world import World
from typer.testing import CliRunner

from diffma_cli.cli import app
from diffma_cli.train.divergence import CONSECUTIVE_LIMIT, SkippedSteps, TrainingDiverged
from diffma_cli.train.run_log import LOG, append_record

TRAIN = ["--recipe", "demo", "--size", "S", "--patch", "7", "--set", "model.hidden_size=32", "--batch-size",
         "2", "--device", "cpu", "--steps", "2"]
EMBED = ["--recipe", "demo", "--patch", "7", "--set", "embedder.embed_dim=32", "--batch-size", "2",
         "--device", "cpu", "--steps", "4"]


def run(*args):
    return CliRunner().invoke(app, [str(arg) for arg in args])


def last_line(result) -> str:
    assert "Traceback" not in result.output and "internal error" not in result.output, result.output
    return result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("setting, words", [
    ("training.lr=-1e-4", "training.lr=-0.0001 must be a finite number >= 0"),
    ("training.lr=.nan", "training.lr=nan"),
    ("training.betas=[1.5, 0.9]", "training.betas=1.5"),
    ("training.weight_decay=-1", "training.weight_decay"),
    ("training.seed=18446744073709551616", "training.seed"),
    ("embedder.tau=0", "embedder.tau=0.0 must be a finite number > 0"),
])
def test_bad_settings_fail_before_the_run_folder_exists(world: World, tmp_path, setting, words):
    result = run("train", world.data, "-o", tmp_path / "run", "--embedder", world.embedder, *TRAIN,
                 "--set", setting)
    assert result.exit_code == 2 and words in last_line(result), result.output
    assert not (tmp_path / "run").exists()


def test_a_backbone_given_as_embedder_fails_before_the_run_folder_exists(world: World, tmp_path):
    backbone = world.run / "backbone.safetensors"
    result = run("train", world.data, "-o", tmp_path / "run", "--embedder", backbone, *TRAIN)
    assert result.exit_code == 2, result.output
    assert "not a CT Vision Embedder" in last_line(result) and str(backbone) in last_line(result)
    assert not (tmp_path / "run").exists()


def test_a_failure_before_the_first_checkpoint_removes_the_new_run_folder(world: World, tmp_path,
                                                                         monkeypatch):
    from diffma_cli.train import api

    def broken_fit(*args, **kwargs):
        raise RuntimeError("the first step failed")

    monkeypatch.setattr(api, "fit", broken_fit)
    result = run("train-embedder", world.data, "-o", tmp_path / "run", *EMBED)
    assert result.exit_code == 1 and not (tmp_path / "run").exists(), result.output


def test_a_diverging_run_fails_and_stays_unfinished(world: World, tmp_path):
    out = tmp_path / "embedder"
    result = run("train-embedder", world.data, "-o", out, *EMBED, "--set", "embedder.tau=1e-40", "--set",
                 "embedder.training.log_every=2", "--set", "embedder.training.checkpoint_every=2")
    assert result.exit_code == 2, result.output
    assert "training diverged: 4 of 4 steps were non-finite" in last_line(result)
    assert "warning: 2 of the last 2 steps had a non-finite loss" in result.stderr
    info = json.loads((out / "run.json").read_text(encoding="utf-8"))
    assert info["finished"] is False and not (out / "embedder.safetensors").exists()
    lines = (out / LOG).read_text(encoding="utf-8").splitlines()
    records = [json.loads(line, parse_constant=lambda name: pytest.fail(f"bare {name} in log.jsonl"))
               for line in lines]
    assert [record["loss"] for record in records] == [None, None]
    assert [record["skipped_steps"] for record in records] == [2, 2]


def test_skipped_steps_count_against_a_half_and_a_streak():
    steps = SkippedSteps()
    for loss in [1.0, math.nan, 0.5, math.inf]:
        steps.record(loss)
    steps.check_at_end()  # 2 of 4: not most
    steps.record(math.nan)
    with pytest.raises(TrainingDiverged, match="3 of 5 steps were non-finite"):
        steps.check_at_end()
    streak = SkippedSteps()
    for _ in range(CONSECUTIVE_LIMIT * 3):
        streak.record(1.0)
    with pytest.raises(TrainingDiverged):
        for _ in range(CONSECUTIVE_LIMIT):
            streak.record(math.nan)
    assert streak.steps == CONSECUTIVE_LIMIT * 4  # stopped at the streak's last step, not later


def test_log_lines_hold_null_for_non_finite_numbers(tmp_path):
    append_record(tmp_path, {"step": 1, "loss": math.nan, "nested": {"x": [math.inf, 2.0]}})
    record = json.loads((tmp_path / LOG).read_text(encoding="utf-8"))
    assert record == {"step": 1, "loss": None, "nested": {"x": [None, 2.0]}}


def test_resume_refuses_another_model_size(world: World, tmp_path):
    import shutil

    run_dir = shutil.copytree(world.run, tmp_path / "run")
    result = run("train", world.data, "-o", run_dir, "--resume", "--recipe", run_dir / "recipe.yaml",
                 "--size", "B", "--device", "cpu", "--set", "data.image_size=224")
    assert result.exit_code == 2, result.output
    assert "--resume cannot change the model: the run has model.name=DiffMa-S/2, now DiffMa-B/2" \
        in last_line(result)
