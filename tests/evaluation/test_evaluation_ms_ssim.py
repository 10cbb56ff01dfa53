"""MS-SSIM against an independent pyramid (scikit-image SSIM maps, scipy FFT convolution, index padding).

The reference below is written from the SynthRAD2025 procedure in docs/metrics.md with other primitives than
the code under test: scikit-image's `structural_similarity` map clipped at 0 and raised to the level weight
(equal to the product of the clipped luminance, contrast and structure terms), downsampling by
`scipy.signal.fftconvolve(..., mode="same")` with a 2x2x2 box, and edge padding by clamped indices.
"""

import numpy as np
import pytest
from scipy.signal import fftconvolve
from skimage.metrics import structural_similarity

from diffma_cli.evaluation.evaluate import evaluate_arrays
from diffma_cli.evaluation.ms_ssim import halve, masked_ms_ssim, ms_ssim_range
from diffma_cli.evaluation.scales import IntensityRange

WEIGHTS = [0.0448, 0.2856, 0.3001, 0.2363, 0.1333]
LOW, HIGH = -1024.0, 3071.0  # SynthRAD2025's CT range, written out independently


def clamp_pad(volume, side=97):
    """Edge padding to `side` per axis by indexing with clamped coordinates (extra voxel after)."""
    for axis, n in enumerate(volume.shape):
        if n < side:
            before = (side - n) // 2
            index = np.clip(np.arange(side) - before, 0, n - 1)
            volume = np.take(volume, index, axis=axis)
    return volume


def reference_ms_ssim(gt, pred, mask, low, high, weights=WEIGHTS, luminance_everywhere=True):
    inside = mask > 0
    gt = np.where(inside, np.clip(gt.astype(np.float64), low, high), low) - low
    pred = np.where(inside, np.clip(pred.astype(np.float64), low, high), low) - low
    gt, pred, inside = clamp_pad(gt), clamp_pad(pred), clamp_pad(inside)
    box = np.ones((2, 2, 2)) / 8
    levels = []
    for level, weight in enumerate(weights):
        _, full = structural_similarity(gt, pred, data_range=high - low, full=True)
        if luminance_everywhere or level == len(weights) - 1:
            ssim_map = np.clip(full, 0, None) ** weight
        else:  # contrast-structure only (the textbook MS-SSIM): SSIM without its luminance factor
            mean_g = fftconvolve(gt, np.ones((7, 7, 7)) / 343, mode="same")
            mean_p = fftconvolve(pred, np.ones((7, 7, 7)) / 343, mode="same")
            c1 = (0.01 * (high - low)) ** 2
            contrast_structure = full * (mean_g**2 + mean_p**2 + c1) / (2 * mean_g * mean_p + c1)
            ssim_map = np.clip(contrast_structure, 0, None) ** weight
        crop = (slice(3, -3),) * 3
        levels.append(np.clip(ssim_map[crop][inside[crop]].mean(), 0, 1))
        gt, pred = (fftconvolve(v, box, mode="same")[::2, ::2, ::2] for v in (gt, pred))
        inside = inside[::2, ::2, ::2]
    return float(np.prod(levels))


def ct_pair(shape=(20, 40, 36), seed=0):
    """A CT-like volume in HU (air, tissue, a bone ring beyond the range's top) and a noisy, blurred
    prediction, with a body mask."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    body = (x**2 + y**2) < 0.8
    ct = np.where(body, 40.0 + 300 * np.sin(4 * x) * np.cos(3 * y + 2 * z), -1000.0)
    ct[body & ((x**2 + y**2) > 0.5)] = 3500.0
    prediction = 0.8 * ct + 0.2 * np.roll(ct, 1, axis=2) + rng.normal(0, 120, shape)
    return prediction.astype(np.float32), ct.astype(np.float32), body


def test_ms_ssim_matches_the_independent_pyramid_on_ct():
    prediction, ct, body = ct_pair()
    ours = masked_ms_ssim(prediction, ct, body, ms_ssim_range("ct"))
    expected = reference_ms_ssim(ct, prediction, body, LOW, HIGH)
    assert 0.3 < expected < 0.999
    assert ours == pytest.approx(expected, rel=1e-6)


def test_ms_ssim_on_mr_scale_and_a_side_longer_than_97():
    rng = np.random.default_rng(3)
    reference = np.clip(rng.normal(0, 0.4, (9, 100, 24)).cumsum(axis=1) / 5, -1.2, 1.2).astype(np.float32)
    prediction = (reference + rng.normal(0, 0.15, reference.shape)).astype(np.float32)
    mask = np.zeros(reference.shape, bool)
    mask[1:8, 10:90, 3:21] = True
    ours = masked_ms_ssim(prediction, reference, mask, ms_ssim_range("mr"))
    assert ours == pytest.approx(reference_ms_ssim(reference, prediction, mask, -1.0, 1.0), rel=1e-6)


def test_identical_volumes_score_one_and_evaluate_arrays_reports_it():
    _, ct, body = ct_pair(seed=1)
    assert masked_ms_ssim(ct, ct, body, ms_ssim_range("ct")) == pytest.approx(1.0, abs=1e-12)
    result = evaluate_arrays(ct, ct, body, modality="ct", protocol="synthrad")
    assert result["ms_ssim"] == pytest.approx(1.0, abs=1e-12)
    assert "ms_ssim" not in evaluate_arrays(ct, ct, body, modality="ct", protocol="paper")


def test_each_element_of_the_definition_changes_the_number():
    prediction, ct, body = ct_pair(seed=2)
    prediction = np.where(body, prediction - 400, prediction)  # a bias, which luminance sees
    prediction[ct > HIGH] = 2990.0  # bone just below 3000 HU, where the reference is clipped to the top
    ours = masked_ms_ssim(prediction, ct, body, ms_ssim_range("ct"))
    assert ours == pytest.approx(reference_ms_ssim(ct, prediction, body, LOW, HIGH), rel=1e-6)
    # Luminance weighted at every level (as the official script runs), not only at the last.
    textbook = reference_ms_ssim(ct, prediction, body, LOW, HIGH, luminance_everywhere=False)
    # SynthRAD2025's 3071 HU top, not SynthRAD2023's 3000 (the bone ring lies above both).
    range_2023 = masked_ms_ssim(prediction, ct, body, IntensityRange(LOW, 3000.0))
    # The mask: outside voxels set to the low end and left out of the means.
    unmasked = masked_ms_ssim(prediction, ct, np.ones_like(body), ms_ssim_range("ct"))
    for other in (textbook, range_2023, unmasked):
        assert abs(ours - other) > 3e-4


def test_halving_averages_pairs_with_a_zero_before_the_first_voxel():
    volume = np.arange(3 * 4 * 5, dtype=np.float64).reshape(3, 4, 5)
    expected = fftconvolve(volume, np.ones((2, 2, 2)) / 8, mode="same")[::2, ::2, ::2]
    np.testing.assert_allclose(halve(volume), expected, atol=1e-9)
    # By hand: voxel (0, 0, 0) averages itself with seven zeros.
    assert halve(volume)[0, 0, 0] == pytest.approx(volume[0, 0, 0] / 8)


def test_a_mask_gone_at_a_coarse_level_gives_nan():
    prediction, ct, _ = ct_pair()
    corner = np.zeros(ct.shape, bool)
    corner[0, 0, 0] = True  # only inside the cropped border from the first level on
    assert np.isnan(masked_ms_ssim(prediction, ct, corner, ms_ssim_range("ct")))
