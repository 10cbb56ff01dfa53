"""Training previews on a tiny CPU run: the PNGs, what their columns hold, that they do not change training,
and `diffma info` listing them."""

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from diffma_cli.cli import app
from diffma_cli.config import apply_overrides, load_recipe
from diffma_cli.convert import SamplingOptions, load_models, sample_slices
from diffma_cli.data.dataset import PreparedSlices
from diffma_cli.train import api, previews, run_log

RECIPE = {"model.name": "DiffMa-S/7", "model.hidden_size": 32, "training.global_batch_size": 2,
          "training.steps": 4, "training.log_every": 1}


@pytest.fixture(scope="module")
def embedder(prepared_data, tmp_path_factory):
    recipe = apply_overrides(load_recipe("demo"), {
        "embedder.patch_size": 7, "embedder.embed_dim": 32, "embedder.training.global_batch_size": 4,
        "embedder.training.steps": 2})
    run = tmp_path_factory.mktemp("previews") / "embedder"
    api.train_embedder(prepared_data, run, recipe, device="cpu", progress=False)
    return run


def unit_to_grey(values):
    """[-1, 1] -> 0..255 written out: clamp, scale, +0.5, truncate (as the report's 8-bit mapping)."""
    return np.floor((np.clip(values.astype(np.float32), -1, 1) + 1) / 2 * 255 + 0.5).astype(np.uint8)


def column(image, number, rows, side=224):
    """(rows, side, side) panels of column `number` of a preview grid."""
    grey = np.asarray(image)
    left = number * (side + previews.GAP)
    return np.stack([grey[previews.LABEL_HEIGHT + r * (side + previews.GAP):][:side, left:left + side]
                     for r in range(rows)])


def test_previews_show_ct_the_ema_sample_and_mr(prepared_data, embedder, tmp_path):
    recipe = apply_overrides(load_recipe("demo"), {**RECIPE, "training.preview_every": 2})
    run = api.train_diffusion(prepared_data, tmp_path / "run", recipe, embedder, device="cpu", progress=False)
    names = [path.name for path in previews.preview_files(run)]
    assert names == ["step-0000002.png", "step-0000004.png", "loss.png"]  # every 2 steps

    val = PreparedSlices(prepared_data, "val")
    picks = np.unique(np.linspace(0, len(val) - 1, previews.PREVIEW_SLICES).round().astype(int))
    ct = np.stack([val[int(i)]["ct"][0].numpy() for i in picks])
    mr = np.stack([val[int(i)]["mr"][0].numpy() for i in picks])
    last = Image.open(run / "previews" / "step-0000004.png")
    assert last.size == (3 * 224 + 2 * previews.GAP,
                         previews.LABEL_HEIGHT + len(picks) * 224 + (len(picks) - 1) * previews.GAP)
    np.testing.assert_array_equal(column(last, 0, len(picks)), unit_to_grey(ct))
    np.testing.assert_array_equal(column(last, 2, len(picks)), unit_to_grey(mr))
    # The step-4 preview was sampled with the final EMA backbone, the one the run exports: sampling the
    # finished run again as `convert` does gives the same image.
    models = load_models(run, device="cpu")
    options = SamplingOptions(sampler="dpm", steps=previews.PREVIEW_STEPS, seed=previews.PREVIEW_SEED,
                              batch_size=len(picks)).resolved(models.recipe)
    again = sample_slices(models, ct, options, progress=False)[0]
    generated = column(last, 1, len(picks)).astype(int)
    assert np.abs(generated - unit_to_grey(again)).max() <= 1
    earlier = column(Image.open(run / "previews" / "step-0000002.png"), 1, len(picks))
    assert np.abs(generated - earlier).max() > 0  # the model changed between the previews

    # `diffma info RUN` lists them.
    result = CliRunner().invoke(app, ["info", str(run), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["previews"] == [f"previews/{name}" for name in names]


def test_previews_do_not_change_training(prepared_data, embedder, tmp_path):
    losses = {}
    for every in (0, 1):
        recipe = apply_overrides(load_recipe("demo"), {**RECIPE, "training.preview_every": every})
        run = api.train_diffusion(prepared_data, tmp_path / f"run{every}", recipe, embedder, device="cpu",
                                  progress=False)
        losses[every] = [record["loss"] for record in run_log.read_records(run)]
        assert bool(previews.preview_files(run)) == (every > 0)
    assert losses[0] == losses[1]


def test_loss_curve_falls_from_top_left():
    image = np.asarray(previews.loss_curve(list(range(10, 110, 10)), [1.0 / step for step in range(1, 11)]))
    plot = image[12:-24, 46:-12]  # inside the frame, clear of the labels
    dark = np.argwhere(plot < 128)
    first, last = dark[dark[:, 1].argmin()], dark[dark[:, 1].argmax()]
    assert first[0] < last[0]  # falling loss: the line starts high and ends low
    flat = np.asarray(previews.loss_curve([1], [float("nan")]))
    assert flat.shape == image.shape  # no finite loss: a frame and a note, no error
