"""Test-time flips and ensembles of runs: the combination of members against numpy, and the command."""

import numpy as np
import pytest
import SimpleITK as sitk
from convert_cases import SHAPE, SPACING, as_image, ct_array
from test_convert_cli import invoke, one_line_error
from test_convert_volume import oracle_models

from diffma_cli.convert import SamplingOptions, combine_volumes, convert_array
from diffma_cli.errors import InputError


@pytest.mark.parametrize("count", [1, 2, 5])
def test_combine_volumes_is_numpy_mean_median_and_sample_std(count):
    volumes = np.random.default_rng(count).normal(size=(count, 3, 4, 5)).astype(np.float32)
    for combine, centre in (("mean", np.mean), ("median", np.median)):
        got, std = combine_volumes(iter(volumes), count, combine)
        np.testing.assert_allclose(got, centre(volumes, axis=0), atol=1e-6)
        if count == 1:
            assert std is None
        else:
            np.testing.assert_allclose(std, np.std(volumes, axis=0, ddof=1), atol=1e-6)
    with pytest.raises(InputError, match="combination"):
        combine_volumes(iter(volumes), count, "mode")


def test_flip_tta_is_the_mean_with_the_mirrored_conversion(models):
    ct = ct_array()
    ct[:, :, :6] = -1000  # make the volume left-right asymmetric
    options = SamplingOptions(seed=2).resolved(models.recipe)
    plain, _ = convert_array(ct, SPACING, models, options, progress=False)
    mirrored, _ = convert_array(ct[:, :, ::-1], SPACING, models, options, progress=False)
    mirrored = mirrored[:, :, ::-1]
    assert np.abs(plain - mirrored).max() > 1e-3  # the mirror image is a member of its own
    both, std = convert_array(ct, SPACING, models, SamplingOptions(seed=2, tta="flip"), progress=False)
    stack = np.stack([plain, mirrored]).astype(np.float64)
    np.testing.assert_allclose(both, stack.mean(axis=0), atol=1e-5)
    np.testing.assert_allclose(std, stack.std(axis=0, ddof=1), atol=1e-5)


@pytest.mark.parametrize("combine", ["mean", "median"])
def test_ensemble_of_runs_combines_every_member(models, combine):
    ct = ct_array()
    ensemble = [models, oracle_models(models, 0.5), oracle_models(models, -0.2)]
    options = SamplingOptions(samples=2, seed=1, sampler="ddim", combine=combine)
    members = []
    for one in ensemble:
        for k in range(2):
            alone = SamplingOptions(seed=1 + k, sampler="ddim")
            members.append(convert_array(ct, SPACING, one, alone, progress=False)[0])
    stack = np.stack(members).astype(np.float64)
    centre, std = convert_array(ct, SPACING, ensemble, options, progress=False)
    expected = np.median(stack, axis=0) if combine == "median" else stack.mean(axis=0)
    np.testing.assert_allclose(centre, expected, atol=1e-5)
    np.testing.assert_allclose(std, stack.std(axis=0, ddof=1), atol=1e-5)


def test_ensemble_of_both_directions_is_refused(models):
    with pytest.raises(InputError, match="different directions"):
        convert_array(ct_array(), SPACING, [models, oracle_models(models, 0.5, "mr->ct")], progress=False)


def test_command_with_two_runs_and_flips_writes_the_std_of_all_members(tmp_path, run_dir, mr_to_ct_run,
                                                                        ct_file):
    out = tmp_path / "mri.nii.gz"
    result = invoke(ct_file, "-o", out, "--model", run_dir, "--model", run_dir, "--tta", "flip",
                    "--combine", "median", "--device", "cpu")
    assert result.exit_code == 0, result.output
    image, std = sitk.ReadImage(str(out)), sitk.ReadImage(str(tmp_path / "mri_std.nii.gz"))
    assert image.GetSize() == SHAPE[::-1] and sitk.GetArrayFromImage(std).max() > 0
    assert std.GetDirection() == as_image(ct_array()).GetDirection()
    result = invoke(ct_file, "-o", tmp_path / "b.nii.gz", "--model", run_dir, "--tta", "rotate")
    line = one_line_error(result, 2)
    assert "rotate" in line and "flip" in line
    line = one_line_error(invoke(ct_file, "-o", tmp_path / "c.nii.gz", "--model", run_dir, "--model",
                                 mr_to_ct_run), 2)
    assert "different directions" in line and not (tmp_path / "c.nii.gz").exists()
