"""Slice-to-slice consistency of a volume generated one axial slice at a time (issue 10, docs/consistency.md).

A 2-D model samples each axial slice from its own noise, so neighbouring slices may disagree: stripes in
sagittal and coronal views that per-axial-slice scores never see. Two kinds of measure, both inside the mask
and on the metric scale (`scales.metric_range`):

- Reformat SSIM/PSNR (`reformat_metrics`): the SynthRAD SSIM procedure (clip, outside mask -> low end, shift,
  7x7 window, 3-pixel border crop) applied to each 2-D sagittal (fixed x) or coronal (fixed y) slice, whose
  window spans z; SSIM is the mean of the maps over all mask pixels, PSNR the mean of per-slice masked PSNRs.
- Through-plane roughness ratio (`roughness_ratio`): the energy of differences between adjacent axial slices
  in the prediction over that in the reference. About 1 when the prediction varies along z as the anatomy
  does, well above 1 for flicker, below 1 for a prediction smoother than the reference.

Volumes are numpy arrays indexed (z, y, x) on one grid; x is the array's last (left-right in SynthRAD) axis,
so "sagittal" and "coronal" assume the usual axial acquisition. No resampling: with 2.5 mm pelvis slices the
window spans 17.5 mm along z but 7 mm in plane.
"""

from __future__ import annotations

import numpy as np

from diffma_cli.evaluation.metrics import (
    SSIM_BORDER,
    binary_mask,
    check_same_shape,
    masked_psnr,
    ssim_input,
)
from diffma_cli.evaluation.scales import IntensityRange

# Array axis that stays fixed within one reformatted slice: (z, y, x) -> x for sagittal, y for coronal.
REFORMAT_AXES = {"sagittal": 2, "coronal": 1}


def reformat_metrics(prediction: np.ndarray, reference: np.ndarray, mask: np.ndarray, scale: IntensityRange,
                     view: str) -> dict[str, float]:
    """{"<view>_ssim", "<view>_psnr"} over the 2-D slices of `view` ("sagittal", "coronal") with mask pixels.

    Per slice: scikit-image SSIM map (defaults, data range `scale.data_range`) of `ssim_input` of both,
    cropped by `SSIM_BORDER` pixels on every side; SSIM = mean of all cropped maps over mask pixels (so each
    slice counts by its mask area); PSNR = mean over slices of the masked PSNR of each slice (+inf if one
    slice is exact). NaN when no slice has mask pixels.
    """
    from skimage.metrics import structural_similarity

    axis = REFORMAT_AXES[view]
    check_same_shape(prediction, reference, mask, window_axes=tuple(a for a in range(3) if a != axis))
    inside = binary_mask(mask)
    reference_in, prediction_in = ssim_input(reference, inside, scale), ssim_input(prediction, inside, scale)
    ssim_sum, ssim_count, psnrs = 0.0, 0, []
    for index in np.flatnonzero(inside.any(axis=tuple(a for a in range(3) if a != axis))):
        take = (slice(None),) * axis + (index,)
        _, ssim_map = structural_similarity(reference_in[take], prediction_in[take],
                                            data_range=scale.data_range, full=True)
        interior = tuple(slice(SSIM_BORDER, size - SSIM_BORDER) for size in ssim_map.shape)
        values = ssim_map[interior][inside[take][interior]]
        ssim_sum += float(values.sum(dtype=np.float64))
        ssim_count += values.size
        psnrs.append(masked_psnr(prediction[take], reference[take], inside[take], scale))
    ssim = ssim_sum / ssim_count if ssim_count else float("nan")
    psnr = float(np.mean(psnrs)) if psnrs else float("nan")
    return {f"{view}_ssim": ssim, f"{view}_psnr": psnr}


def through_plane_energy(volume: np.ndarray, mask: np.ndarray, scale: IntensityRange) -> float:
    """Sum over voxel pairs (z, y, x), (z+1, y, x) both inside the mask of (v[z+1] - v[z])^2, after clipping
    `volume` to `scale` (units: scale units squared)."""
    inside = binary_mask(mask)
    both = inside[1:] & inside[:-1]
    clipped = scale.clip(np.asarray(volume, dtype=np.float64))
    return float(np.sum((clipped[1:] - clipped[:-1])[both] ** 2))


def roughness_ratio(prediction: np.ndarray, reference: np.ndarray, mask: np.ndarray,
                    scale: IntensityRange) -> float:
    """through_plane_energy(prediction) / through_plane_energy(reference); NaN if the reference has none."""
    check_same_shape(prediction, reference, mask, window_axes=())
    reference_energy = through_plane_energy(reference, mask, scale)
    if reference_energy == 0:
        return float("nan")
    return through_plane_energy(prediction, mask, scale) / reference_energy


def consistency_metrics(prediction: np.ndarray, reference: np.ndarray, mask: np.ndarray,
                        scale: IntensityRange) -> dict[str, float]:
    """Sagittal and coronal reformat SSIM/PSNR and the through-plane roughness ratio of one volume."""
    result = {}
    for view in REFORMAT_AXES:
        result.update(reformat_metrics(prediction, reference, mask, scale, view))
    result["roughness_ratio"] = roughness_ratio(prediction, reference, mask, scale)
    return result
