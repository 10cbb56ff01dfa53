"""Consistency measures on hand-built volumes: they must see flicker along z, and only along z."""

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from diffma_cli.evaluation.consistency import (
    consistency_metrics,
    reformat_metrics,
    roughness_ratio,
    through_plane_energy,
)
from diffma_cli.evaluation.scales import NORMALISED_RANGE

SHAPE = (16, 20, 18)  # (z, y, x)


def smooth_volume():
    """A smooth MR-like volume in [-1, 1] that changes slowly along every axis, and a body mask."""
    z, y, x = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in SHAPE], indexing="ij")
    volume = 0.5 * np.sin(x / 4) * np.cos(y / 5) + 0.3 * np.sin(z / 6)
    mask = np.ones(SHAPE, bool)
    mask[:, :2] = False  # some outside voxels, so the mask matters
    return volume.astype(np.float32), mask


def test_identical_volumes_are_perfectly_consistent():
    volume, mask = smooth_volume()
    result = consistency_metrics(volume, volume, mask, NORMALISED_RANGE)
    assert result["roughness_ratio"] == pytest.approx(1.0)
    assert result["sagittal_ssim"] == pytest.approx(1.0) and result["coronal_ssim"] == pytest.approx(1.0)
    assert result["sagittal_psnr"] == float("inf")


def test_roughness_ratio_sees_independent_per_slice_noise():
    volume, mask = smooth_volume()
    rng = np.random.default_rng(0)
    flicker = volume + rng.normal(0, 0.05, SHAPE).astype(np.float32)  # a new noise field on every slice
    same_noise = volume + rng.normal(0, 0.05, SHAPE[1:]).astype(np.float32)[None]  # one field for all slices
    # Independent noise of variance s^2 adds 2 s^2 per voxel pair to the expected energy of z-differences.
    pairs = (mask[1:] & mask[:-1]).sum()
    expected = 1 + 2 * 0.05**2 * pairs / through_plane_energy(volume, mask, NORMALISED_RANGE)
    assert expected > 4
    assert roughness_ratio(flicker, volume, mask, NORMALISED_RANGE) == pytest.approx(expected, rel=0.1)
    # Noise that repeats on every slice does not change differences along z: exactly no extra roughness.
    assert roughness_ratio(same_noise, volume, mask, NORMALISED_RANGE) == pytest.approx(1.0, rel=1e-5)


def test_roughness_ratio_of_alternating_offsets_by_hand():
    # Reference: a ramp along z (step a between slices). Prediction: the ramp plus +d, -d, +d, ... per slice,
    # so steps alternate a - 2d, a + 2d: energy ratio = mean((a - 2d)^2, (a + 2d)^2) / a^2 = 1 + 4 d^2 / a^2.
    a, d = 0.05, 0.02
    depth = 11  # 10 steps: 5 of each kind
    ramp = np.broadcast_to((a * np.arange(depth) - 0.25)[:, None, None], (depth, 9, 9)).astype(np.float64)
    offsets = d * (-1.0) ** np.arange(depth)
    prediction = ramp + offsets[:, None, None]
    mask = np.ones(ramp.shape, bool)
    assert roughness_ratio(prediction, ramp, mask, NORMALISED_RANGE) == pytest.approx(1 + 4 * d**2 / a**2)
    assert through_plane_energy(ramp, mask, NORMALISED_RANGE) == pytest.approx(a**2 * 10 * 81)


def test_roughness_counts_only_pairs_inside_the_mask_and_clips():
    volume = np.zeros((8, 8, 8))
    volume[4] = 5.0  # clipped to 1 on the [-1, 1] scale
    mask = np.zeros(volume.shape, bool)
    mask[2:6, :4] = True  # pairs (2,3), (3,4), (4,5) over 4 x 8 voxels
    assert through_plane_energy(volume, mask, NORMALISED_RANGE) == pytest.approx(2 * 1.0 * 32)
    volume[:, 6] = 7.0  # changes outside the mask do not count
    volume[0] = -3.0
    assert through_plane_energy(volume, mask, NORMALISED_RANGE) == pytest.approx(64)


def sagittal_ssim_by_hand(prediction, reference, mask):
    """Per sagittal slice (fixed x), the SynthRAD SSIM recipe in 2-D; mean of all maps over mask pixels."""
    values = []
    for x in range(reference.shape[2]):
        inside = mask[:, :, x]
        if not inside.any():
            continue
        gt = np.where(inside, np.clip(reference[:, :, x], -1, 1), -1) + 1
        pred = np.where(inside, np.clip(prediction[:, :, x], -1, 1), -1) + 1
        _, full = structural_similarity(gt, pred, data_range=2, full=True)
        values.append(full[3:-3, 3:-3][inside[3:-3, 3:-3]])
    return np.concatenate(values).mean()


def test_reformat_ssim_matches_skimage_slice_by_slice():
    volume, mask = smooth_volume()
    mask[:, :, :3] = False  # the first sagittal slices hold no body and are skipped
    prediction = volume + np.random.default_rng(1).normal(0, 0.1, SHAPE).astype(np.float32)
    result = reformat_metrics(prediction, volume, mask, NORMALISED_RANGE, "sagittal")
    assert result["sagittal_ssim"] == pytest.approx(sagittal_ssim_by_hand(prediction, volume, mask), rel=1e-6)
    psnrs = [10 * np.log10(4 / np.mean((np.clip(prediction[:, :, x], -1, 1) - volume[:, :, x])[mask[:, :, x]]
                                       ** 2)) for x in range(3, SHAPE[2])]
    assert result["sagittal_psnr"] == pytest.approx(np.mean(psnrs), rel=1e-6)


def test_reformats_are_taken_along_the_right_axes():
    volume, mask = smooth_volume()
    mask[:] = True
    corrupt = volume.copy()
    corrupt[:, :, 9] += 0.5  # one sagittal plane (fixed x) is wrong
    sagittal = reformat_metrics(corrupt, volume, mask, NORMALISED_RANGE, "sagittal")["sagittal_ssim"]
    coronal = reformat_metrics(corrupt, volume, mask, NORMALISED_RANGE, "coronal")["coronal_ssim"]
    # Sagittal: 17 of 18 slices are exact (SSIM 1), one is off. Coronal: every slice sees the bad column.
    plane = reformat_metrics(corrupt[:, :, 9:10].repeat(7, axis=2), volume[:, :, 9:10].repeat(7, axis=2),
                             mask[:, :, :7], NORMALISED_RANGE, "sagittal")["sagittal_ssim"]
    assert sagittal == pytest.approx((17 + plane) / 18, rel=1e-6)
    assert coronal < sagittal
