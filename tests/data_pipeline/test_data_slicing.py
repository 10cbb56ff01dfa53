"""Slicing to 224² and back: geometry checked against SimpleITK's resampler, round trips, slice selection."""

import numpy as np
import pytest
import SimpleITK as sitk

from diffma_cli.data.phantoms import case_rng, make_phantom
from diffma_cli.data.slicing import (
    body_mask_from_ct,
    plan_slicing,
    slice_image,
    slice_volume,
    unslice_image,
    unslice_volume,
)


def _smooth_volume(shape):
    z, y, x = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    return np.sin(x / 9.0) * np.cos(y / 7.0) + 0.05 * z


@pytest.mark.parametrize("shape, spacing", [((3, 40, 70), (1.0, 1.0, 2.5)), ((3, 90, 50), (0.8, 1.3, 1.0))])
def test_slices_match_simpleitk_resampling_of_the_padded_square(shape, spacing):
    volume = _smooth_volume(shape)
    record = plan_slicing(shape, spacing)
    slices = slice_volume(volume, record, "linear", fill=-7.0)
    side = max(shape[1] * spacing[1], shape[2] * spacing[0])
    assert record["field_of_view_mm"] == pytest.approx(side)
    pixel = side / 224
    # Independent reference: SimpleITK resamples each slice onto a 224² grid of `pixel` mm centred on it.
    plane = sitk.GetImageFromArray(volume[1])
    plane.SetSpacing(spacing[:2])
    origin = [(n * s - side) / 2 - s / 2 + pixel / 2 for n, s in zip(shape[:0:-1], spacing[:2], strict=True)]
    reference = sitk.GetArrayFromImage(sitk.Resample(plane, [224, 224], sitk.Transform(), sitk.sitkLinear,
                                                     origin, [pixel, pixel], plane.GetDirection(), -7.0))
    # SimpleITK fills any sample beyond the outermost voxel centres; we clamp within a one-pixel rim.
    inside = reference != -7.0
    np.testing.assert_allclose(slices[1][inside], reference[inside], atol=1e-4)
    assert np.all(slices[1][~inside & (np.abs(slices[1] - -7.0) > 0)] <= volume.max())
    outside_far = slices[1] == -7.0
    assert outside_far.sum() > 0 and np.all(~inside[outside_far])


def test_shrinking_is_anti_aliased_like_scikit_image():
    """448² voxels of 1 mm -> 224² pixels of 2 mm: Gaussian sigma 0.5 px first, as skimage's resize does."""
    from skimage.transform import resize

    rng = np.random.default_rng(0)
    volume = (_smooth_volume((1, 448, 448)) + 0.3 * rng.standard_normal((1, 448, 448))).astype(np.float32)
    record = plan_slicing(volume.shape, (1.0, 1.0, 1.0))
    assert record["antialias_px"] == [0.5, 0.5]
    slices = slice_volume(volume, record)
    reference = resize(volume[0], (224, 224), order=1, mode="edge", anti_aliasing=True)
    np.testing.assert_allclose(slices[0], reference, atol=1e-4)
    aliased = slice_volume(volume, record | {"antialias_px": [0.0, 0.0]})
    assert np.std(aliased[0] - reference) > 10 * np.std(slices[0] - reference)
    mask = slice_volume((volume > 0).astype(np.float32), record, "nearest", 0.0)
    assert set(np.unique(mask)) == {0.0, 1.0}  # masks are never smoothed


def test_round_trip_reproduces_the_volume_within_interpolation_error():
    shape, spacing = (6, 120, 200), (1.0, 1.0, 2.5)
    volume = _smooth_volume(shape)
    record = plan_slicing(shape, spacing)
    back = unslice_volume(slice_volume(volume, record), record)
    # Linear interpolation errs by at most h²/8 * |f''| per pass: (1/8)(1/81 + 1/49) ≈ 0.004 each way here.
    # The outermost voxels are clamped, not interpolated, over half a pixel: |f'| / 2 ≤ 1/14 there.
    error = np.abs(back - volume)
    assert error[:, 1:-1, 1:-1].max() < 0.01
    assert error.max() < 1 / 14
    shifted = record | {"field_of_view_mm": record["field_of_view_mm"] * 1.02}
    assert np.abs(unslice_volume(slice_volume(volume, record), shifted) - volume).max() > 0.05


def test_kept_slices_follow_the_body_and_others_are_filled():
    shape = (12, 30, 40)
    body = np.zeros(shape, bool)
    body[3:9, 10:20, 5:30] = True
    body[5] = False  # a gap inside the body range: only slices that hold body are kept
    record = plan_slicing(shape, (1.0, 1.0, 2.5), body)
    assert record["slices"] == [3, 4, 6, 7, 8]
    volume = _smooth_volume(shape)
    slices = slice_volume(volume, record)
    assert slices.shape == (5, 224, 224) and slices.dtype == np.float32
    back = unslice_volume(slices, record, fill=-3.0)
    assert np.all(back[[0, 1, 2, 5, 9, 10, 11]] == -3.0)
    mask_slices = slice_volume(body.astype(np.float32), record, "nearest", 0.0)
    mask_back = unslice_volume(mask_slices, record, "nearest", 0.0)
    assert np.array_equal(mask_back[record["slices"]] > 0.5, body[record["slices"]])


def test_image_round_trip_keeps_the_geometry():
    image = sitk.GetImageFromArray(_smooth_volume((4, 50, 60)))
    image.SetSpacing((0.9, 1.1, 3.0))
    image.SetOrigin((-12.5, 40.0, 7.0))
    image.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    slices, record = slice_image(image)
    back = unslice_image(slices, record)
    for attribute in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
        np.testing.assert_allclose(getattr(back, attribute)(), getattr(image, attribute)(), atol=1e-9)
    np.testing.assert_allclose(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image), atol=2e-2)


def test_body_mask_from_ct_recovers_the_phantom_mask():
    phantom = make_phantom("pelvis", case_rng(3, "pelvis", 0), scale=0.25)
    body = body_mask_from_ct(phantom.ct, phantom.spacing)
    truth = phantom.mask > 0
    dice = 2 * (body & truth).sum() / (body.sum() + truth.sum())
    assert dice > 0.95
    assert not body_mask_from_ct(np.full((3, 8, 8), -1000), (1, 1, 1)).any()
