"""The calibration predictors (evaluation/calibration.py) against numpy and SimpleITK written out."""

import numpy as np
import pytest
import SimpleITK as sitk

from diffma_cli.evaluation import calibration


def test_pooled_mean_counts_every_mask_voxel_once():
    a, b = np.arange(24.0).reshape(2, 3, 4), -np.ones((1, 2, 2))
    mask_a, mask_b = a > 10, np.ones(b.shape)
    expected = np.concatenate([a[mask_a], b.ravel()]).mean()
    assert calibration.pooled_mean([(a, mask_a), (b, mask_b)]) == pytest.approx(expected, rel=1e-12)
    assert (calibration.constant_prediction(mask_a, 0.25)[mask_a] == 0.25).all()
    assert (calibration.constant_prediction(mask_a, 0.25)[~mask_a] == -1).all()


def test_affine_is_the_least_squares_fit_inside_the_mask():
    rng = np.random.default_rng(0)
    ct = rng.uniform(-1, 1, (4, 6, 5)).astype(np.float32)
    mask = rng.uniform(size=ct.shape) > 0.3
    mr = (0.6 * ct - 0.1 + rng.normal(0, 0.05, ct.shape)).astype(np.float32)
    mr[~mask] = 5.0  # values outside the mask must not enter the fit
    prediction, a, b = calibration.affine_prediction(ct, mr, mask)
    slope, intercept = np.polyfit(ct[mask].astype(np.float64), mr[mask].astype(np.float64), 1)
    assert a == pytest.approx(slope, rel=1e-9) and b == pytest.approx(intercept, rel=1e-9)
    np.testing.assert_allclose(prediction[mask], np.clip(slope * ct[mask] + intercept, -1, 1), rtol=1e-6)
    assert (prediction[~mask] == -1.0).all()


def test_oracle_uses_the_references_percentiles():
    rng = np.random.default_rng(1)
    clean = rng.uniform(100, 900, (5, 6, 7)).astype(np.float32)
    noisy = clean + rng.normal(0, 30, clean.shape).astype(np.float32)
    mask = np.zeros(clean.shape, bool)
    mask[1:4, 1:5, 2:6] = True
    low, high = np.percentile(noisy[mask].astype(np.float64), [0.5, 99.5])
    expected = np.clip(2 * (clean[mask] - low) / (high - low) - 1, -1, 1)
    np.testing.assert_allclose(calibration.oracle_prediction(clean, noisy, mask)[mask], expected, atol=1e-6)


def test_other_patient_is_placed_with_the_centres_aligned():
    values = np.random.default_rng(2).uniform(-1, 1, (6, 8, 10)).astype(np.float32)
    other = sitk.GetImageFromArray(values)
    other.SetOrigin((40.0, -7.0, 3.0))  # somewhere else in space, same size and spacing
    like = sitk.GetImageFromArray(np.zeros_like(values))
    like.SetOrigin((-2.0, 5.0, 11.0))
    mask = np.ones(values.shape, bool)
    mask[0] = False
    moved = calibration.other_patient_prediction(other, like, mask)
    np.testing.assert_allclose(moved[mask], values[mask], atol=1e-6)  # a pure shift of the grid
    assert (moved[0] == -1).all()
    # twice the voxel size on this grid: the centre voxel of `like` reads the centre of `other`
    like_coarse = sitk.GetImageFromArray(np.zeros((3, 4, 5), np.float32))
    like_coarse.SetSpacing((2.0, 2.0, 2.0))
    coarse = calibration.other_patient_prediction(other, like_coarse, np.ones((3, 4, 5), bool))
    resampled = sitk.Resample(other, like_coarse, sitk.TranslationTransform(
        3, (np.array(other.TransformContinuousIndexToPhysicalPoint((4.5, 3.5, 2.5)))
            - np.array(like_coarse.TransformContinuousIndexToPhysicalPoint((2.0, 1.5, 1.0)))).tolist()),
        sitk.sitkLinear, -1.0)
    np.testing.assert_allclose(coarse, sitk.GetArrayFromImage(resampled), atol=1e-6)
