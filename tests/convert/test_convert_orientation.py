"""Conversion in the runs' orientation: a CT stored flipped or with permuted axes converts to the same MR
voxels as the original; without reorientation it would not."""

import numpy as np
import pytest
import SimpleITK as sitk
from convert_cases import as_image, ct_array
from layouts import relayout

from diffma_cli.config import apply_overrides
from diffma_cli.convert import ConversionModels, SamplingOptions, convert_volume
from diffma_cli.data.orientation import check_orientation, orientation_of
from diffma_cli.errors import InputError

LAYOUTS = {"flipped x": ((0, 1, 2), (True, False, False)),
           "x and y swapped, z reversed": ((1, 0, 2), (False, False, True)),
           "slices stored along x": ((2, 1, 0), (False, True, False))}


def with_orientation(models, code):
    recipe = apply_overrides(models.recipe, {"data.orientation": code})
    return ConversionModels(recipe, models.backbone, models.embedder, models.vae, models.clip, models.device)


def physically_equal(copy, back, original):
    """The hand-made copy really is the same image: each voxel of the copy at the original's position."""
    values = sitk.GetArrayFromImage(copy)
    if not np.array_equal(back(values), sitk.GetArrayFromImage(original)):
        return False
    index = [n - 1 for n in copy.GetSize()]
    point = copy.TransformIndexToPhysicalPoint(index)
    return np.isclose(sitk.Image.EvaluateAtPhysicalPoint(original, point), values[tuple(index[::-1])])


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_reoriented_copies_convert_to_the_same_voxels(models, layout):
    ct = ct_array()
    ct[:, :, :5] = -1000  # break the left-right symmetry
    original = as_image(ct)
    copy, back = relayout(original, *LAYOUTS[layout])
    assert physically_equal(copy, back, original) and orientation_of(copy) != orientation_of(original)
    expected, _ = convert_volume(original, models, SamplingOptions(seed=5), progress=False)
    got, _ = convert_volume(copy, models, SamplingOptions(seed=5), progress=False)
    assert got.GetSize() == copy.GetSize() and got.GetDirection() == copy.GetDirection()
    assert got.GetOrigin() == copy.GetOrigin() and got.GetSpacing() == copy.GetSpacing()
    np.testing.assert_allclose(back(sitk.GetArrayFromImage(got)), sitk.GetArrayFromImage(expected), atol=1e-5)


def test_without_reorientation_a_permuted_copy_converts_differently(models):
    keep = with_orientation(models, "none")
    original = as_image(ct_array())
    copy, back = relayout(original, (1, 0, 2), (True, False, False))
    expected, _ = convert_volume(original, keep, SamplingOptions(seed=5), progress=False)
    got, _ = convert_volume(copy, keep, SamplingOptions(seed=5), progress=False)
    assert got.GetSize() == copy.GetSize()
    assert np.abs(back(sitk.GetArrayFromImage(got)) - sitk.GetArrayFromImage(expected)).max() > 1e-2


def test_orientation_codes():
    assert check_orientation("rai") == "RAI" and check_orientation("none") == "none"
    for bad in ("LLS", "LP", "XYZ", "LPSI"):
        with pytest.raises(InputError, match="orientation"):
            check_orientation(bad)
