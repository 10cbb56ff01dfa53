"""eval refuses to score a prediction that is not on the modality's scale inside the mask (a raw MR in
scanner units, a CT given as MR, a normalised volume given as CT), naming the file and its range;
--allow-off-scale scores it with a warning."""

import numpy as np
import pytest
from reliability_world import World, body, ct_hu, mr_like, write
from typer.testing import CliRunner

from diffma_cli.cli import app
from diffma_cli.evaluation.scales import off_scale_problem


def scores(world: World, prediction, modality: str, *extra):
    reference = world.ct if modality == "ct" else world.mr
    return CliRunner().invoke(app, ["eval", str(prediction), "--target", str(reference), "--mask",
                                    str(world.mask), "--modality", modality, *extra])


@pytest.mark.parametrize("name, values, modality, words", [
    ("raw_mr.nii.gz", lambda: (mr_like() * 600 + 700).astype(np.float32), "mr", ("outside the MR scale",)),
    ("ct_as_mr.nii.gz", ct_hu, "mr", ("outside the MR scale", "range from 40 to 900")),
    ("mr_as_ct.nii.gz", mr_like, "ct", ("not Hounsfield units",)),
])
def test_off_scale_predictions_are_refused_or_warned_about(world: World, tmp_path, name, values, modality,
                                                           words):
    prediction = write(values(), tmp_path / name)
    result = scores(world, prediction, modality)
    assert result.exit_code == 2, result.output
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("diffma: error: ") and name in line and "--allow-off-scale" in line
    for word in words:
        assert word in line, line
    allowed = scores(world, prediction, modality, "--allow-off-scale")
    assert allowed.exit_code == 0 and f"warning: {prediction}" in allowed.stderr, allowed.output


def test_the_limit_is_most_voxels_inside_the_mask():
    mask = body().astype(np.uint8)
    inside = np.flatnonzero(mask)
    prediction = np.where(mask > 0, 0.2, 50.0).astype(np.float32)  # off the scale only outside the mask
    assert off_scale_problem(prediction, mask, "mr") is None
    flat = prediction.reshape(-1)
    flat[inside[: len(inside) // 2 - 1]] = 3.0  # just under half inside: still scored
    assert off_scale_problem(prediction, mask, "mr") is None
    flat[inside[: len(inside) // 2 + 2]] = 3.0  # just over half
    assert "outside the MR scale [-1, 1]" in off_scale_problem(prediction, mask, "mr")
    flat[inside] = 1.08  # within the 5 % spare (0.1 on a range of 2)
    assert off_scale_problem(prediction, mask, "mr") is None
