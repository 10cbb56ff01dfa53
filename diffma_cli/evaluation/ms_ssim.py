"""Masked 3-D multi-scale SSIM as the SynthRAD2025 evaluation computes it (docs/metrics.md, "MS-SSIM").

The procedure, for prediction p, reference g and a body mask on one (z, y, x) grid:

1. clip both to the range, set voxels outside the mask to the range's low end, shift by -low (so that
   background is 0) -- the same input as the SynthRAD2023 SSIM (`metrics.ssim_input`);
2. pad every axis shorter than `MIN_SIDE` voxels to that length by repeating edge voxels (split evenly, the
   odd voxel after), the mask too, so that five halvings still leave a 7-voxel window;
3. at each of the five levels, a 3-D SSIM map from a 7x7x7 uniform window (sample covariance, K1 0.01,
   K2 0.03, the full data range) whose luminance, contrast and structure terms are each clipped at 0 and
   raised to the level's weight; its mean over mask voxels after cropping 3 voxels from every border;
4. between levels, the volumes are averaged over 2x2x2 blocks (the block of voxel i is {i-1, i} along each
   axis, with zeros before the first voxel) and every second voxel kept; the mask is only subsampled;
5. MS-SSIM = product over the levels of the level means, each clipped to [0, 1].

Every level weights luminance too (the official script's luminance weights end up equal to the scale
weights), so a level's map is SSIM**weight wherever the structure term is non-negative.
"""

from __future__ import annotations

import numpy as np

from diffma_cli.evaluation.metrics import SSIM_BORDER, SSIM_WINDOW, binary_mask, check_same_shape, ssim_input
from diffma_cli.evaluation.scales import IntensityRange, metric_range

# Wang, Simoncelli & Bovik 2003 (Asilomar), the exponents of the five scales; SynthRAD2025 uses them as is.
SCALE_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
# Smallest side that keeps a full 7-voxel window at the fifth level: 97 -> 49 -> 25 -> 13 -> 7.
MIN_SIDE = 97
K1, K2 = 0.01, 0.03
# SynthRAD2025's CT range (ImageMetrics.dynamic_range); SynthRAD2023 used 3000 HU as the top.
SYNTHRAD2025_CT_RANGE = IntensityRange(-1024.0, 3071.0)


def ms_ssim_range(modality: str) -> IntensityRange:
    """The range MS-SSIM clips to: SynthRAD2025's [-1024, 3071] HU for CT, the normalised [-1, 1] for MR."""
    return SYNTHRAD2025_CT_RANGE if modality == "ct" else metric_range(modality)


def pad_to_min_side(volume: np.ndarray, side: int = MIN_SIDE) -> np.ndarray:
    """`volume` with every axis shorter than `side` extended to `side` by repeating its edge voxels; of an
    odd number of added voxels, the extra one goes after."""
    widths = [((side - n) // 2, side - n - (side - n) // 2) if n < side else (0, 0) for n in volume.shape]
    return np.pad(volume, widths, mode="edge")


def halve(volume: np.ndarray) -> np.ndarray:
    """Mean over the 2x2x2 block {i-1, i} along every axis (zero before index 0), kept at even indices."""
    result = np.asarray(volume, dtype=np.float64)
    for axis in range(result.ndim):
        shifted = np.zeros_like(result)
        head = [slice(None)] * result.ndim
        tail = [slice(None)] * result.ndim
        head[axis], tail[axis] = slice(1, None), slice(None, -1)
        shifted[tuple(head)] = result[tuple(tail)]  # shifted[i] = result[i - 1], 0 at i = 0
        keep = [slice(None)] * result.ndim
        keep[axis] = slice(None, None, 2)
        result = ((result + shifted) / 2)[tuple(keep)]
    return result


def weighted_ssim_map(x: np.ndarray, y: np.ndarray, data_range: float, weight: float) -> np.ndarray:
    """L**w * C**w * S**w voxelwise for one level: local means, deviations and covariance over a
    `SSIM_WINDOW`-wide uniform window (reflecting borders, sample covariance), each term clipped at 0."""
    from scipy.ndimage import uniform_filter

    def local_mean(values: np.ndarray) -> np.ndarray:
        return uniform_filter(values, size=SSIM_WINDOW)

    sample = SSIM_WINDOW**x.ndim / (SSIM_WINDOW**x.ndim - 1)
    mean_x, mean_y = local_mean(x), local_mean(y)
    var_x = sample * (local_mean(x * x) - mean_x**2)
    var_y = sample * (local_mean(y * y) - mean_y**2)
    covariance = sample * (local_mean(x * y) - mean_x * mean_y)
    std_x, std_y = np.sqrt(np.clip(var_x, 0, None)), np.sqrt(np.clip(var_y, 0, None))
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    c3 = c2 / 2
    luminance = np.clip((2 * mean_x * mean_y + c1) / (mean_x**2 + mean_y**2 + c1), 0, None)
    contrast = np.clip((2 * std_x * std_y + c2) / (var_x + var_y + c2), 0, None)
    structure = np.clip((covariance + c3) / (std_x * std_y + c3), 0, None)
    return (luminance * contrast * structure) ** weight  # = L**w C**w S**w, the terms being >= 0


def masked_ms_ssim(prediction: np.ndarray, reference: np.ndarray, mask: np.ndarray,
                   scale: IntensityRange) -> float:
    """SynthRAD2025's masked MS-SSIM (0..1) of a 3-D volume pair on `scale` (module docstring). NaN when at
    some level no mask voxel is left after the border crop (a mask too small or too close to the border)."""
    check_same_shape(prediction, reference, mask, window_axes=())
    inside = binary_mask(mask)
    x = pad_to_min_side(ssim_input(reference, inside, scale).astype(np.float64))
    y = pad_to_min_side(ssim_input(prediction, inside, scale).astype(np.float64))
    inside = pad_to_min_side(inside)
    crop = (slice(SSIM_BORDER, -SSIM_BORDER),) * x.ndim
    result = 1.0
    for level, weight in enumerate(SCALE_WEIGHTS):
        if level:
            x, y, inside = halve(x), halve(y), inside[(slice(None, None, 2),) * inside.ndim]
        values = weighted_ssim_map(x, y, scale.data_range, weight)[crop][inside[crop]]
        if not values.size:
            return float("nan")
        result *= float(np.clip(values.mean(dtype=np.float64), 0.0, 1.0))
    return result
