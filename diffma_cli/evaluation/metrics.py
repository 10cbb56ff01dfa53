"""Image metrics of a predicted volume against its reference: two protocols (docs/metrics.md).

1. SynthRAD2023 (`synthrad_metrics`): the challenge's official masked 3-D metrics (`SynthRAD2023/metrics`,
   `functions/image_metrics.py`): MAE over mask voxels without clipping; PSNR over mask voxels after
   clipping to the range; SSIM of the whole clipped volume with everything outside the mask set to the range's
   low end, averaged over mask voxels after cropping `SSIM_BORDER` voxels from every border. Like the official
   loader, volumes are cast to float32 first; means are accumulated in float64.
2. Paper (`paper_metrics`): DiffMa's Table 2 reports SSIM (%), PSNR (dB) and MSE per 2-D test slice. We map
   each axial slice to 8 bits as the released code wrote its PNGs (`scales.to_uint8`) and compute the three
   on the whole slice with scikit-image's defaults; only slices whose mask holds body count.

All volumes are numpy arrays indexed (z, y, x) on the scale of `scales.metric_range(modality)`; a mask is any
array of the same shape whose non-zero voxels are inside.
"""

from __future__ import annotations

import numpy as np

from diffma_cli.errors import InputError
from diffma_cli.evaluation.scales import IntensityRange, to_uint8

# scikit-image's structural_similarity default: a 7-wide uniform window in every dimension; the official
# script then crops (7 - 1) // 2 = 3 voxels from every border, where the window was not fully inside.
SSIM_WINDOW = 7
SSIM_BORDER = (SSIM_WINDOW - 1) // 2
UINT8_RANGE = IntensityRange(0.0, 255.0)


def binary_mask(mask: np.ndarray) -> np.ndarray:
    """Mask as booleans: voxels > 0 are inside (the official script binarises with `mask > 0`)."""
    return np.asarray(mask) > 0


def check_same_shape(prediction: np.ndarray, reference: np.ndarray, mask: np.ndarray | None = None, *,
                     window_axes: tuple[int, ...] | None = None) -> None:
    """Raise InputError unless the arrays share one shape that is at least `SSIM_WINDOW` long along
    `window_axes` (all axes when None), the axes an SSIM window slides along."""
    shapes = {"prediction": prediction.shape, "reference": reference.shape}
    if mask is not None:
        shapes["mask"] = np.shape(mask)
    if len(set(shapes.values())) > 1:
        found = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise InputError(f"arrays differ in shape: {found}", hint="resample them onto one grid")
    axes = range(prediction.ndim) if window_axes is None else window_axes
    if any(prediction.shape[axis] < SSIM_WINDOW for axis in axes):
        raise InputError(f"volume of shape {prediction.shape} is smaller than the {SSIM_WINDOW}-voxel SSIM "
                         "window in one dimension")


def _as_float32(volume: np.ndarray) -> np.ndarray:
    return np.asarray(volume, dtype=np.float32)


def masked_mae(prediction: np.ndarray, reference: np.ndarray, mask: np.ndarray) -> float:
    """Mean absolute error over mask voxels, no clipping (HU for CT). NaN for an empty mask."""
    inside = binary_mask(mask)
    if not inside.any():
        return float("nan")
    difference = _as_float32(prediction)[inside] - _as_float32(reference)[inside]
    return float(np.mean(np.abs(difference), dtype=np.float64))


def masked_psnr(prediction: np.ndarray, reference: np.ndarray, mask: np.ndarray,
                scale: IntensityRange) -> float:
    """PSNR (dB) over mask voxels after clipping both to `scale`: 10 log10(data_range^2 / MSE).

    Infinite when the clipped values agree exactly; NaN for an empty mask.
    """
    inside = binary_mask(mask)
    if not inside.any():
        return float("nan")
    difference = (scale.clip(_as_float32(prediction)[inside]).astype(np.float64)
                  - scale.clip(_as_float32(reference)[inside]))
    mse = float(np.mean(difference**2))
    return psnr_from_mse(mse, scale.data_range)


def masked_pearson(prediction: np.ndarray, reference: np.ndarray, mask: np.ndarray) -> float:
    """Pearson correlation of the voxel values inside the mask (no clipping), in [-1, 1].

    Not a SynthRAD metric: it says whether the prediction follows the reference's anatomy at all,
    whatever its intensity scale (a constant or a per-case affine map of the wrong image scores ~0 or
    the correlation of that image). NaN for an empty mask or a constant prediction or reference.
    """
    inside = binary_mask(mask)
    if inside.sum() < 2:
        return float("nan")
    p = _as_float32(prediction)[inside].astype(np.float64)
    r = _as_float32(reference)[inside].astype(np.float64)
    p -= p.mean()
    r -= r.mean()
    denominator = np.sqrt(np.dot(p, p) * np.dot(r, r))
    return float(np.dot(p, r) / denominator) if denominator > 0 else float("nan")


def psnr_from_mse(mse: float, data_range: float) -> float:
    """10 log10(data_range^2 / mse) in dB; +inf for mse == 0 (as scikit-image's peak_signal_noise_ratio)."""
    if mse == 0:
        return float("inf")
    return float(10 * np.log10(data_range**2 / mse))


def ssim_input(volume: np.ndarray, inside: np.ndarray, scale: IntensityRange) -> np.ndarray:
    """The official SSIM's input: clip to `scale`, set voxels outside the mask to `scale.low`, shift by
    -`scale.low` so that values start at 0 (SynthRAD: +1024 HU)."""
    clipped = scale.clip(_as_float32(volume))
    clipped[~inside] = scale.low
    return clipped - np.float32(scale.low)


def masked_ssim(prediction: np.ndarray, reference: np.ndarray, mask: np.ndarray,
                scale: IntensityRange) -> float:
    """SSIM of the whole volume (any number of dimensions), averaged over mask voxels away from the border.

    scikit-image `structural_similarity(reference, prediction, data_range=scale.data_range, full=True)` with
    its defaults (7-wide uniform window, K1 0.01, K2 0.03, sample covariance) on `ssim_input` of both; then
    the mean of the SSIM map over mask voxels after cropping `SSIM_BORDER` voxels from every border of map and
    mask. NaN when no mask voxel is left after the crop.
    """
    from skimage.metrics import structural_similarity

    check_same_shape(prediction, reference, mask)
    inside = binary_mask(mask)
    _, ssim_map = structural_similarity(ssim_input(reference, inside, scale),
                                        ssim_input(prediction, inside, scale),
                                        data_range=scale.data_range, full=True)
    interior = tuple(slice(SSIM_BORDER, size - SSIM_BORDER) for size in ssim_map.shape)
    values = ssim_map[interior][inside[interior]]
    return float(values.mean(dtype=np.float64)) if values.size else float("nan")


def synthrad_metrics(prediction: np.ndarray, reference: np.ndarray, mask: np.ndarray,
                     scale: IntensityRange) -> dict[str, float]:
    """SynthRAD2023's three image metrics: {"mae", "psnr" (dB), "ssim" (0..1)} (see module docstring)."""
    check_same_shape(prediction, reference, mask)
    return {
        "mae": masked_mae(prediction, reference, mask),
        "psnr": masked_psnr(prediction, reference, mask, scale),
        "ssim": masked_ssim(prediction, reference, mask, scale),
    }


def paper_slices(mask: np.ndarray | None, depth: int) -> np.ndarray:
    """Indices of the axial slices the paper protocol scores: those with at least one mask voxel (all slices
    when `mask` is None)."""
    if mask is None:
        return np.arange(depth)
    return np.flatnonzero(binary_mask(mask).reshape(depth, -1).any(axis=1))


def slice_scores_uint8(prediction: np.ndarray, reference: np.ndarray) -> tuple[float, float, float]:
    """(SSIM 0..1, PSNR dB, MSE) of two 8-bit 2-D images, on the whole image with scikit-image defaults."""
    from skimage.metrics import structural_similarity

    mse = float(np.mean((prediction.astype(np.float64) - reference) ** 2))
    ssim = float(structural_similarity(reference, prediction, data_range=UINT8_RANGE.data_range))
    return ssim, psnr_from_mse(mse, UINT8_RANGE.data_range), mse


def paper_metrics(prediction: np.ndarray, reference: np.ndarray, mask: np.ndarray | None,
                  scale: IntensityRange) -> dict[str, float]:
    """The paper's per-slice protocol on axial slices: means over the scored slices (`paper_slices`).

    Each slice of `prediction` and `reference` (z, y, x) is mapped to 8 bits with `to_uint8(., scale)`;
    SSIM (skimage defaults, data range 255) over the whole 2-D slice, PSNR = 10 log10(255^2 / MSE) and MSE on
    grey values. Returns {"paper_ssim" (%), "paper_psnr" (dB), "paper_mse", "paper_slices" (count)}; the means
    are NaN when no slice counts, and the PSNR mean is +inf if any slice is identical in 8 bits.
    """
    check_same_shape(prediction, reference, mask, window_axes=(1, 2))
    scores = np.array([slice_scores_uint8(to_uint8(prediction[z], scale), to_uint8(reference[z], scale))
                       for z in paper_slices(mask, prediction.shape[0])], dtype=np.float64).reshape(-1, 3)
    if not len(scores):
        return {"paper_ssim": float("nan"), "paper_psnr": float("nan"), "paper_mse": float("nan"),
                "paper_slices": 0}
    ssim, psnr, mse = scores.mean(axis=0)
    return {"paper_ssim": float(100 * ssim), "paper_psnr": float(psnr), "paper_mse": float(mse),
            "paper_slices": len(scores)}
