"""`diffma train-embedder` and `diffma train` end to end on a tiny prepared data set, `load_run`, resume and
the command-line errors."""

import json

import pytest
import torch
from typer.testing import CliRunner

from diffma_cli.cli import app
from diffma_cli.config import apply_overrides, load_recipe
from diffma_cli.runs import load_run
from diffma_cli.train import api, run_log
from diffma_cli.weights import load_model

# The demo recipe shrunk further: patch 7 (16 tokens), width 32, tiny VAE stand-in, no CLIP.
EMBEDDER_ARGS = ["--recipe", "demo", "--patch", "7", "--set", "embedder.embed_dim=32", "--batch-size", "4",
                 "--device", "cpu"]
TRAIN_ARGS = ["--recipe", "demo", "--size", "S", "--patch", "7", "--set", "model.hidden_size=32",
              "--batch-size", "2", "--device", "cpu"]


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def embedder_run(prepared_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "embedder"
    result = invoke("train-embedder", prepared_data, "-o", run, "--steps", "3", *EMBEDDER_ARGS)
    assert result.exit_code == 0, result.output
    return run


def test_train_writes_a_run_folder_that_load_run_reads(prepared_data, embedder_run, tmp_path):
    run = tmp_path / "run"
    result = invoke("train", prepared_data, "-o", run, "--embedder", embedder_run, "--steps", "2",
                    *TRAIN_ARGS)
    assert result.exit_code == 0, result.output
    assert f"--model {run}" in result.output

    loaded = load_run(run)
    assert loaded.backbone.config["name"] == "DiffMa-S/7" and loaded.backbone.config["scan"] == "spiral"
    assert loaded.backbone.config["hidden_size"] == 32 and not loaded.backbone.training
    # the recipe's condition for new models reaches the weights file
    assert loaded.backbone.config["condition"] == loaded.recipe.model.condition == "latent+tokens"
    # The run holds a copy of the embedder it was trained with.
    original = load_model(embedder_run / "embedder.safetensors")
    for key, value in original.state_dict().items():
        assert torch.equal(loaded.embedder.state_dict()[key], value)
    assert loaded.recipe.model.name == "DiffMa-S/7" and loaded.recipe.training.steps == 2
    assert loaded.info["finished"] and loaded.info["steps"] == 2 and loaded.info["kind"] == "diffusion"
    assert loaded.info["data"]["manifest_sha256"] and loaded.info["encoders"]["vae"]["weights_sha256"]
    assert loaded.info["embedder"]["sha256"]
    # The EMA backbone differs from a freshly initialised one: training changed it.
    assert loaded.backbone.final_layer.linear.weight.abs().sum() > 0

    again = invoke("train", prepared_data, "-o", run, "--embedder", embedder_run, *TRAIN_ARGS)
    assert again.exit_code == 3 and "--resume" in again.output and "--overwrite" in again.output

    # --resume takes the run's recipe and embedder; more steps continue where it stopped.
    more = invoke("train", prepared_data, "-o", run, "--resume", "--steps", "3", "--device", "cpu")
    assert more.exit_code == 0, more.output
    assert json.loads((run / "run.json").read_text(encoding="utf-8"))["steps"] == 3
    assert [r["step"] for r in run_log.read_records(run)][-1] == 3
    # Resuming with another embedder than the run's own copy is refused.
    other = tmp_path / "other-embedder"
    assert invoke("train-embedder", prepared_data, "-o", other, "--steps", "1", *EMBEDDER_ARGS).exit_code == 0
    wrong = invoke("train", prepared_data, "-o", run, "--resume", "--embedder", other, "--device", "cpu")
    assert wrong.exit_code == 2 and "is not the embedder this run was trained with" in wrong.output


def test_resumed_embedder_training_repeats_the_uninterrupted_losses(prepared_data, tmp_path):
    recipe = apply_overrides(load_recipe("demo"), {
        "embedder.patch_size": 7, "embedder.embed_dim": 32, "embedder.training.global_batch_size": 4,
        "embedder.training.steps": 5, "embedder.training.log_every": 1,
        "embedder.training.checkpoint_every": 2})
    api.train_embedder(prepared_data, tmp_path / "whole", recipe, device="cpu", progress=False)
    interrupted = apply_overrides(recipe, {"embedder.training.steps": 3})
    api.train_embedder(prepared_data, tmp_path / "parts", interrupted, device="cpu", progress=False)
    api.train_embedder(prepared_data, tmp_path / "parts", recipe, device="cpu", progress=False, resume=True)
    whole = [r["loss"] for r in run_log.read_records(tmp_path / "whole")]
    parts = [r["loss"] for r in run_log.read_records(tmp_path / "parts")]
    assert len(whole) == 5 and parts == whole
    weights = [load_model(tmp_path / name / "embedder.safetensors").state_dict()
               for name in ("whole", "parts")]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_resumed_diffusion_training_repeats_the_uninterrupted_losses(prepared_data, embedder_run, tmp_path):
    recipe = apply_overrides(load_recipe("demo"), {
        "model.name": "DiffMa-S/7", "model.hidden_size": 32, "training.global_batch_size": 2,
        "training.steps": 4, "training.log_every": 1, "training.checkpoint_every": 2})
    emb = embedder_run
    api.train_diffusion(prepared_data, tmp_path / "whole", recipe, emb, device="cpu", progress=False)
    interrupted = apply_overrides(recipe, {"training.steps": 2})
    api.train_diffusion(prepared_data, tmp_path / "parts", interrupted, emb, device="cpu", progress=False)
    api.train_diffusion(prepared_data, tmp_path / "parts", recipe, emb, device="cpu", progress=False,
                        resume=True)
    whole = [r["loss"] for r in run_log.read_records(tmp_path / "whole")]
    parts = [r["loss"] for r in run_log.read_records(tmp_path / "parts")]
    assert len(whole) == 4 and parts == whole
    weights = [load_run(tmp_path / name).backbone.state_dict() for name in ("whole", "parts")]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


@pytest.mark.parametrize("args, message", [
    (["--backbone", "unet"], "--backbone 'unet' is not one of: diffma, dit"),
    (["--size", "Q"], "there is no model DiffMa-Q/7"),
    (["--scan", "zigzag"], "--scan 'zigzag' is not one of"),
    (["--condition", "spatial"], "--condition 'spatial' is not one of: released, tokens, latent"),
    (["--set", "model.condition=spatial"], "model.condition='spatial' is not one of"),
    (["--set", "diffusion.objective=regression", "--condition", "tokens"],
     "diffusion.objective=regression needs the CT latent as an input"),
    (["--set", "diffusion.objective=x0"], "diffusion.objective='x0' is not one of"),
    (["--set", "diffusion.mse_weighting=p2"], "diffusion.mse_weighting='p2' is not one of"),
    (["--set", "diffusion.min_snr_gamma=0"], "diffusion.min_snr_gamma=0.0 must be a finite number > 0"),
    (["--set", "diffusion.objective=regression", "--set", "diffusion.mse_weighting=min-snr"],
     "diffusion.mse_weighting=min-snr weights the denoising loss"),
    (["--set", "training.lrr=1"], "unknown recipe key training.lrr"),
    (["--set", "model.hidden_size=wide"], "model.hidden_size must be int"),
    (["--recipe", "nowhere.yaml"], "no such recipe file"),
])
def test_bad_options_are_one_line_errors(prepared_data, embedder_run, tmp_path, args, message):
    result = invoke("train", prepared_data, "-o", tmp_path / "run", "--embedder", embedder_run, *TRAIN_ARGS,
                    *args)
    assert result.exit_code == 2 and message in result.output
    assert "Traceback" not in result.output and not (tmp_path / "run").exists()


def test_errors_before_training(prepared_data, embedder_run, tmp_path):
    no_embedder = invoke("train", prepared_data, "-o", tmp_path / "a", *TRAIN_ARGS)
    assert no_embedder.exit_code == 2 and "--embedder is required" in no_embedder.output
    not_data = invoke("train-embedder", tmp_path, "-o", tmp_path / "b", *EMBEDDER_ARGS)
    assert not_data.exit_code == 2 and "no manifest.json" in not_data.output
    not_a_run = invoke("train", prepared_data, "-o", tmp_path / "c", "--resume", "--embedder", embedder_run,
                       *TRAIN_ARGS)
    assert not_a_run.exit_code == 2 and "not a run folder to resume" in not_a_run.output
    # An embedder of another patch size does not fit the backbone: refused before any step.
    wrong_patch = invoke("train", prepared_data, "-o", tmp_path / "d", "--embedder", embedder_run,
                         *TRAIN_ARGS, "--patch", "4")
    assert wrong_patch.exit_code == 2 and "does not fit DiffMa-S/4" in wrong_patch.output
    assert not (tmp_path / "d").exists()  # a failed start leaves no run folder behind
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me", encoding="utf-8")
    foreign = invoke("train", prepared_data, "-o", tmp_path / "mine", "--overwrite", "--embedder",
                     embedder_run, *TRAIN_ARGS)
    assert foreign.exit_code == 3 and (tmp_path / "mine" / "notes.txt").exists()
    (tmp_path / "empty").mkdir()  # an empty folder counts as new
    empty = invoke("train-embedder", prepared_data, "-o", tmp_path / "empty", "--steps", "1", *EMBEDDER_ARGS)
    assert empty.exit_code == 0, empty.output


def test_train_vae_command_reports_psnr_and_scale(prepared_data, tmp_path):
    out = tmp_path / "vae"
    result = invoke("train-vae", prepared_data, "-o", out, "--recipe", "demo", "--steps", "1", "--batch-size",
                    "2", "--set", "vae.block_out_channels=[8, 8, 16, 16]", "--set", "vae.norm_num_groups=4",
                    "--device", "cpu")
    assert result.exit_code == 0, result.output
    info = json.loads((out / "run.json").read_text(encoding="utf-8"))
    assert f"CT {info['val_psnr_db']['ct']:.2f} dB" in result.output
    assert f"--set encoders.vae={out}" in result.output
    assert (out / "config.json").is_file() and (out / "diffusion_pytorch_model.safetensors").is_file()
    assert info["data"]["slice_counts"]["val"] == info["val_slices"] > 0


def test_torchrun_with_two_processes_trains_like_one(prepared_data, tmp_path):
    """The documented multi-GPU command line, on the CPU: torchrun starts 2 processes (gloo)."""
    import os
    import subprocess
    import sys

    args = ["train-embedder", prepared_data, "--steps", "3", "--set", "embedder.training.log_every=1",
            *EMBEDDER_ARGS]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "diffma_cli", *[str(a) for a in args], "-o", str(tmp_path / "two")]
    done = subprocess.run(command, capture_output=True, encoding="utf-8", timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("wrote ") == 1  # only rank 0 speaks
    one = invoke(*args, "-o", tmp_path / "one")
    assert one.exit_code == 0, one.output
    info = json.loads((tmp_path / "two" / "run.json").read_text(encoding="utf-8"))
    assert info["world_size"] == 2 and info["finished"]
    two_losses = [r["loss"] for r in run_log.read_records(tmp_path / "two")]
    one_losses = [r["loss"] for r in run_log.read_records(tmp_path / "one")]
    # The losses are tiny (~1e-5: distinct slices are easy to tell apart), so float summation order shows
    # at ~1e-4 relative; a different batch or initialisation changes them by tens of percent.
    assert len(two_losses) == 3 and two_losses == pytest.approx(one_losses, rel=2e-3)
