"""`diffma eval --percentiles-from`: reference MRs normalised with the percentiles a model's data was prepared
with (a prepared folder's manifest or a run's recipe), not the default 0.5/99.5."""

import json

import numpy as np
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from diffma_cli.cli import app
from diffma_cli.config import Recipe, apply_overrides, save_recipe
from diffma_cli.data.prepare import PrepareOptions, prepare
from diffma_cli.evaluation.evaluate import evaluate_arrays
from diffma_cli.evaluation.scales import recorded_mr_percentiles

SHAPE = (10, 24, 20)  # (z, y, x)
PERCENTILES = (5.0, 95.0)  # differ from the default (0.5, 99.5)


def write(array, path):
    image = sitk.GetImageFromArray(np.asarray(array))
    image.SetSpacing((1.0, 1.0, 2.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


@pytest.fixture
def case(tmp_path):
    """A SynthRAD case folder with a long-tailed MR (so that the percentiles matter) and a prediction."""
    rng = np.random.default_rng(0)
    z, y, x = np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij")
    mask = ((y - 12) ** 2 + (x - 10) ** 2) < 64
    mr = np.where(mask, rng.gamma(2.0, 150.0, SHAPE) + 100 * np.sin(x / 3), 0).astype(np.float32)
    ct = np.where(mask, 40 + 300 * np.cos(y / 4), -1000).astype(np.int16)
    folder = tmp_path / "Task1" / "brain" / "1BA001"
    write(ct, folder / "ct.nii.gz")
    write(mr, folder / "mr.nii.gz")
    write(mask.astype(np.uint8), folder / "mask.nii.gz")
    prediction = np.clip(rng.normal(0, 0.5, SHAPE), -1, 1).astype(np.float32)
    write(prediction, tmp_path / "pred.nii.gz")
    return {"folder": folder, "mr": mr, "mask": mask, "prediction": prediction, "root": tmp_path}


def by_hand(mr, mask, percentiles):
    """prepare's MR scaling written out: the in-mask percentiles map linearly to -1 and +1, then clip."""
    low, high = np.percentile(mr[mask].astype(np.float64), percentiles)
    return np.clip(2 * (mr - low) / (high - low) - 1, -1, 1).astype(np.float32)


def run_eval(case, *extra):
    out = case["root"] / f"metrics{len(extra)}.json"
    result = CliRunner().invoke(app, ["eval", str(case["root"] / "pred.nii.gz"), "--target",
                                      str(case["folder"] / "mr.nii.gz"), "--mask",
                                      str(case["folder"] / "mask.nii.gz"), "--protocol", "synthrad",
                                      "-o", str(out), *map(str, extra)])
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text(encoding="utf-8"))


def check_scored_with(metrics, case, percentiles):
    expected = evaluate_arrays(case["prediction"], by_hand(case["mr"], case["mask"], percentiles),
                               case["mask"], protocol="synthrad")
    record = metrics["cases"][0]
    for key in ("mae", "psnr", "ssim"):
        assert record[key] == pytest.approx(expected[key], rel=1e-5), key
    assert metrics["mr_percentiles"] == list(percentiles)


def test_percentiles_from_a_prepared_folder(case):
    data = case["root"] / "prepared"
    prepare(case["root"] / "Task1", data, PrepareOptions(mr_percentiles=PERCENTILES, size=32), progress=False)
    assert recorded_mr_percentiles(data) == PERCENTILES
    default, recorded = run_eval(case), run_eval(case, "--percentiles-from", data)
    check_scored_with(default, case, (0.5, 99.5))
    check_scored_with(recorded, case, PERCENTILES)
    assert abs(default["cases"][0]["mae"] - recorded["cases"][0]["mae"]) > 0.02  # the choice matters here


def test_percentiles_from_a_run_folders_recipe(case):
    run = case["root"] / "run"
    run.mkdir()
    save_recipe(apply_overrides(Recipe(), {"data.mr_percentiles": list(PERCENTILES)}), run / "recipe.yaml")
    check_scored_with(run_eval(case, "--percentiles-from", run), case, PERCENTILES)


@pytest.mark.parametrize("content, problem", [
    (None, "neither manifest.json"),
    ("data:\n  mr_percentiles: [99, 1]\n", "not an increasing pair"),
])
def test_unusable_sources_are_one_line(case, content, problem):
    source = case["root"] / "elsewhere"
    source.mkdir()
    if content is not None:
        (source / "recipe.yaml").write_text(content, encoding="utf-8")
    result = CliRunner().invoke(app, ["eval", str(case["root"] / "pred.nii.gz"), "--target",
                                      str(case["folder"] / "mr.nii.gz"), "--mask",
                                      str(case["folder"] / "mask.nii.gz"), "--percentiles-from", str(source)])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("diffma: error:")]
    assert len(errors) == 1 and problem in errors[0] and "elsewhere" in errors[0]
    assert "Traceback" not in result.output
