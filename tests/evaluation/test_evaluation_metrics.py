"""SynthRAD2023 and paper-protocol metrics against independent computations (scikit-image, by hand).

Every element of the SynthRAD protocol (clipping, masking, the +1024 shift, the 3-voxel crop) gets a volume
on which leaving the element out changes the number, and the test checks both: our value equals the
independent one, and the value without the element is clearly different.
"""

import numpy as np
import pytest
from skimage.metrics import mean_squared_error, peak_signal_noise_ratio, structural_similarity

from diffma_cli.errors import InputError
from diffma_cli.evaluation.metrics import (
    masked_mae,
    masked_pearson,
    masked_psnr,
    masked_ssim,
    paper_metrics,
    paper_slices,
    synthrad_metrics,
)
from diffma_cli.evaluation.scales import CT_HU_RANGE, NORMALISED_RANGE, to_uint8

LOW, HIGH = -1024.0, 3000.0  # SynthRAD2023 HU range, written out independently of the code under test


def ct_like(shape=(12, 14, 16), seed=0):
    """A smooth 'CT' in HU with air, soft tissue and bone, plus noise; and a prediction with errors."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    body = (x**2 + y**2) < 0.7
    ct = np.where(body, 40.0 + 300 * np.sin(3 * x) * np.cos(2 * y + z), -1000.0)
    ct[body & ((x**2 + y**2) > 0.45)] = 1500.0  # a bone ring
    prediction = ct + rng.normal(0, 80, shape)
    return ct.astype(np.float32), prediction.astype(np.float32), body


def official_ssim(gt, pred, mask):
    """The SynthRAD SSIM written from docs/reference.md §6 with scikit-image primitives."""
    inside = mask > 0
    gt = np.where(inside, np.clip(gt, LOW, HIGH), LOW) + 1024
    pred = np.where(inside, np.clip(pred, LOW, HIGH), LOW) + 1024
    _, full = structural_similarity(gt, pred, data_range=HIGH - LOW, full=True)
    return full[3:-3, 3:-3, 3:-3][inside[3:-3, 3:-3, 3:-3]].mean()


def test_synthrad_metrics_match_the_protocol_written_out():
    ct, prediction, body = ct_like()
    result = synthrad_metrics(prediction, ct, body, CT_HU_RANGE)
    assert result["mae"] == pytest.approx(np.abs(prediction - ct)[body].mean(), rel=1e-6)
    expected_psnr = peak_signal_noise_ratio(np.clip(ct, LOW, HIGH)[body],
                                            np.clip(prediction, LOW, HIGH)[body], data_range=4024)
    assert result["psnr"] == pytest.approx(expected_psnr, rel=1e-6)
    assert result["ssim"] == pytest.approx(official_ssim(ct, prediction, body), rel=1e-6)


def test_mae_is_not_clipped():
    reference = np.zeros((8, 8, 8), np.float32)
    prediction = reference.copy()
    prediction[4, 4, 4] = 5000.0  # beyond the 3000 HU top of the range
    mask = np.ones_like(reference)
    # 5000 / 512 voxels; clipping would give 3000 / 512.
    assert masked_mae(prediction, reference, mask) == pytest.approx(5000.0 / 512)


def test_psnr_clips_both_volumes_to_the_range():
    reference = np.full((8, 8, 8), 2000.0, np.float32)
    prediction = reference.copy()
    prediction[:, :, :4] = 6000.0  # clipped to 3000: squared error 1000^2 on half the voxels
    reference[0, 0, 7] = -3000.0  # clipped to -1024, and the prediction there is 2000: error 3024
    mask = np.ones_like(reference)
    squared = np.full(reference.shape, 0.0)
    squared[:, :, :4] = 1000.0**2
    squared[0, 0, 7] = 3024.0**2
    by_hand = 10 * np.log10(4024.0**2 / squared.mean())
    assert masked_psnr(prediction, reference, mask, CT_HU_RANGE) == pytest.approx(by_hand, rel=1e-9)
    unclipped = 10 * np.log10(4024.0**2 / np.mean((prediction.astype(float) - reference) ** 2))
    assert abs(by_hand - unclipped) > 3


def test_metrics_only_see_mask_voxels():
    ct, prediction, body = ct_like()
    garbage = prediction.copy()
    garbage[~body] = np.random.default_rng(1).uniform(-3000, 5000, (~body).sum())
    exact_inside = np.where(body, ct, garbage)
    result = synthrad_metrics(exact_inside, ct, body, CT_HU_RANGE)
    # Outside voxels are set to -1024 in both before SSIM, so an exact match inside is exactly 1.
    assert result == {"mae": 0.0, "psnr": float("inf"), "ssim": pytest.approx(1.0, abs=1e-6)}
    _, full = structural_similarity(np.clip(ct, LOW, HIGH) + 1024, np.clip(exact_inside, LOW, HIGH) + 1024,
                                    data_range=4024, full=True)
    assert full[3:-3, 3:-3, 3:-3][body[3:-3, 3:-3, 3:-3]].mean() < 0.99  # without masking it would not be 1
    # Masks count voxels > 0, whatever their value (the official script binarises with mask > 0).
    assert synthrad_metrics(prediction, ct, body * 7.0, CT_HU_RANGE) == synthrad_metrics(
        prediction, ct, body, CT_HU_RANGE)


def test_ssim_clips_and_shifts_before_the_window():
    ct, prediction, body = ct_like(seed=2)
    prediction[body & (prediction > 1400)] = 9000.0  # far above the range: clipping matters
    ours = masked_ssim(prediction, ct, body, CT_HU_RANGE)
    assert ours == pytest.approx(official_ssim(ct, prediction, body), rel=1e-6)

    def variant(clip, shift):
        gt = np.where(body, np.clip(ct, LOW, HIGH) if clip else ct, LOW) + shift
        pred = np.where(body, np.clip(prediction, LOW, HIGH) if clip else prediction, LOW) + shift
        _, full = structural_similarity(gt, pred, data_range=4024, full=True)
        return full[3:-3, 3:-3, 3:-3][body[3:-3, 3:-3, 3:-3]].mean()

    assert abs(variant(clip=False, shift=1024) - ours) > 0.01
    assert abs(variant(clip=True, shift=0) - ours) > 0.01  # SSIM's luminance term is not shift-invariant


def test_ssim_crops_three_voxels_from_every_border():
    rng = np.random.default_rng(3)
    reference = rng.uniform(-500, 1500, (14, 14, 14)).astype(np.float32)
    prediction = reference.copy()
    # Errors only near the borders: the crop removes most of their effect on the map.
    border = np.ones(reference.shape, bool)
    border[2:-2, 2:-2, 2:-2] = False
    prediction[border] += rng.normal(0, 800, border.sum())
    mask = np.ones(reference.shape)
    ours = masked_ssim(prediction, reference, mask, CT_HU_RANGE)
    assert ours == pytest.approx(official_ssim(reference, prediction, mask), rel=1e-6)
    _, full = structural_similarity(reference + 1024, np.clip(prediction, LOW, HIGH) + 1024, data_range=4024,
                                    full=True)
    assert abs(full.mean() - ours) > 0.05  # mean of the uncropped map
    assert abs(full[2:-2, 2:-2, 2:-2].mean() - ours) > 0.01  # a 2-voxel crop


def test_mr_uses_the_normalised_range_the_same_way():
    rng = np.random.default_rng(4)
    reference = np.tanh(rng.normal(0, 1, (10, 12, 12))).astype(np.float32)
    prediction = (reference + rng.normal(0, 0.2, reference.shape)).astype(np.float32)
    mask = np.zeros(reference.shape, bool)
    mask[1:-1, 2:-2, 2:-2] = True
    result = synthrad_metrics(prediction, reference, mask, NORMALISED_RANGE)
    inside_ref, inside_pred = np.clip(reference, -1, 1), np.clip(prediction, -1, 1)
    assert result["psnr"] == pytest.approx(peak_signal_noise_ratio(inside_ref[mask], inside_pred[mask],
                                                                   data_range=2), rel=1e-6)
    gt, pred = np.where(mask, inside_ref, -1) + 1, np.where(mask, inside_pred, -1) + 1
    _, full = structural_similarity(gt, pred, data_range=2, full=True)
    assert result["ssim"] == pytest.approx(full[3:-3, 3:-3, 3:-3][mask[3:-3, 3:-3, 3:-3]].mean(), rel=1e-6)


def test_shape_mismatch_and_tiny_volumes_are_input_errors():
    with pytest.raises(InputError, match="differ in shape"):
        synthrad_metrics(np.zeros((8, 8, 8)), np.zeros((8, 8, 9)), np.ones((8, 8, 8)), CT_HU_RANGE)
    with pytest.raises(InputError, match="SSIM window"):
        synthrad_metrics(np.zeros((8, 8, 5)), np.zeros((8, 8, 5)), np.ones((8, 8, 5)), CT_HU_RANGE)


def test_to_uint8_matches_torchvision_save_image(tmp_path):
    torch = pytest.importorskip("torch")
    from PIL import Image
    from torchvision.utils import save_image

    edges = [-1, 1, 0, -1 + 1 / 255, 0.5 / 255]
    values = np.concatenate([np.linspace(-1.2, 1.2, 395), edges]).astype(np.float32)
    image = values[:400].reshape(20, 20)
    save_image(torch.from_numpy(image)[None], tmp_path / "released.png", normalize=True, value_range=(-1, 1))
    released = np.asarray(Image.open(tmp_path / "released.png").convert("L"))
    np.testing.assert_array_equal(to_uint8(image, NORMALISED_RANGE), released)


def grey_volume(seed, depth=5, side=24):
    """8-bit slices and the [-1, 1] volume that maps exactly onto them."""
    grey = np.random.default_rng(seed).integers(0, 256, (depth, side, side)).astype(np.uint8)
    return grey, (grey.astype(np.float32) / 255 * 2 - 1)


def test_paper_metrics_are_means_of_8bit_slice_metrics():
    reference_grey, reference = grey_volume(5)
    # A prediction close to the reference, so SSIM is far from 0 and PSNR is finite.
    noise = np.random.default_rng(6).integers(-20, 21, reference_grey.shape)
    prediction_grey = np.clip(reference_grey.astype(int) + noise, 0, 255).astype(np.uint8)
    prediction = prediction_grey.astype(np.float32) / 255 * 2 - 1
    np.testing.assert_array_equal(to_uint8(prediction, NORMALISED_RANGE), prediction_grey)
    mask = np.zeros(reference.shape, bool)
    mask[[1, 3], 10:14, 10:14] = True  # only slices 1 and 3 hold body
    result = paper_metrics(prediction, reference, mask, NORMALISED_RANGE)
    counted = [1, 3]
    assert result["paper_slices"] == 2
    assert result["paper_ssim"] == pytest.approx(100 * np.mean(
        [structural_similarity(reference_grey[z], prediction_grey[z], data_range=255) for z in counted]))
    assert result["paper_psnr"] == pytest.approx(np.mean(
        [peak_signal_noise_ratio(reference_grey[z], prediction_grey[z], data_range=255) for z in counted]))
    assert result["paper_mse"] == pytest.approx(np.mean(
        [mean_squared_error(reference_grey[z], prediction_grey[z]) for z in counted]))
    every_slice = paper_metrics(prediction, reference, None, NORMALISED_RANGE)
    assert every_slice["paper_slices"] == 5 and every_slice["paper_mse"] != result["paper_mse"]


def test_paper_metrics_on_ct_use_the_hu_range():
    grey, _ = grey_volume(7, depth=2)
    hu_reference = grey.astype(np.float32) / 255 * 4024 - 1024
    hu_prediction = hu_reference[::-1].copy()
    result = paper_metrics(hu_prediction, hu_reference, None, CT_HU_RANGE)
    assert result["paper_mse"] == pytest.approx(mean_squared_error(grey[0], grey[1]))


def test_paper_slices_are_those_with_body():
    mask = np.zeros((6, 4, 4))
    mask[[0, 2, 5], 1, 1] = 1
    assert paper_slices(mask, 6).tolist() == [0, 2, 5]
    assert paper_slices(None, 3).tolist() == [0, 1, 2]


def test_pearson_is_numpy_corrcoef_over_mask_voxels():
    rng = np.random.default_rng(5)
    reference = rng.normal(size=(8, 9, 10)).astype(np.float32)
    prediction = (0.5 * reference + rng.normal(size=reference.shape)).astype(np.float32)
    mask = np.zeros(reference.shape, np.uint8)
    mask[2:6, 1:8, 3:9] = 1
    prediction[mask == 0] = 50.0  # outside the mask: must not count
    expected = np.corrcoef(prediction[mask > 0], reference[mask > 0])[0, 1]
    assert masked_pearson(prediction, reference, mask) == pytest.approx(expected, rel=1e-9)
    # any positive affine map of the reference is perfectly correlated; a constant is undefined
    assert masked_pearson(3 * reference - 1, reference, mask) == pytest.approx(1.0, abs=1e-9)
    assert np.isnan(masked_pearson(np.full_like(reference, 0.2), reference, mask))
    assert np.isnan(masked_pearson(prediction, reference, np.zeros_like(mask)))
