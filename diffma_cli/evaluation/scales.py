"""The intensity scales metrics are computed on, and the 8-bit mapping of the paper protocol.

- CT in Hounsfield units, clipped to SynthRAD2023's range [-1024, 3000] HU (data range 4024): the official
  challenge metrics (`SynthRAD2023/metrics`, `functions/image_metrics.py`, `ImageMetrics.dynamic_range`).
- MR on prepare's normalised scale [-1, 1] (data range 2): MR has no physical unit, so a reference MR in
  scanner units is first brought to that scale with prepare's own per-case normalisation (with the
  percentiles recorded by `prepare` or the run's recipe, `recorded_mr_percentiles`, when given); a
  prediction written by `diffma convert` already is on it.

Arrays are indexed (z, y, x) as SimpleITK's `GetArrayFromImage` returns them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diffma_cli.errors import InputError

MODALITIES = ("mr", "ct")


@dataclass(frozen=True)
class IntensityRange:
    """A closed intensity interval [low, high]; values are clipped to it before PSNR, SSIM and 8-bit."""

    low: float
    high: float

    @property
    def data_range(self) -> float:
        """high - low: the peak value of PSNR and SSIM's `data_range`."""
        return self.high - self.low

    def clip(self, volume: np.ndarray) -> np.ndarray:
        return np.clip(volume, self.low, self.high)


# SynthRAD2023 official image metrics: ImageMetrics.dynamic_range = [-1024., 3000.] (HU).
CT_HU_RANGE = IntensityRange(-1024.0, 3000.0)
# prepare's normalised scale: every modality is mapped to [-1, 1] before the VAE (docs/data.md).
NORMALISED_RANGE = IntensityRange(-1.0, 1.0)


def metric_range(modality: str) -> IntensityRange:
    """The range metrics of `modality` ("mr" or "ct") use: normalised [-1, 1] for MR, HU for CT."""
    if modality == "ct":
        return CT_HU_RANGE
    if modality == "mr":
        return NORMALISED_RANGE
    raise InputError(f"unknown modality {modality!r}", hint=f"use one of {', '.join(MODALITIES)}")


def normalise_reference(reference: np.ndarray, mask: np.ndarray, modality: str,
                        mr_percentiles: tuple[float, float] | None = None) -> np.ndarray:
    """A reference volume on the scale of `metric_range(modality)`, float32.

    CT stays in HU. MR in scanner units goes through prepare's per-case normalisation
    (`diffma_cli.data.normalise`: the `mr_percentiles` of the MR inside `mask` -- by default the 0.5th and
    99.5th, see `recorded_mr_percentiles` -- map to -1 and +1, values beyond are clipped), the mapping the
    model was trained on, so prediction and reference share one scale. Raises InputError for an empty mask
    or an MR that is flat inside it.
    """
    if modality == "ct":
        return np.asarray(reference, dtype=np.float32)
    metric_range(modality)
    from diffma_cli.data.normalise import MR_PERCENTILES, mr_scaling, mr_to_unit

    return mr_to_unit(reference, mr_scaling(reference, mask, mr_percentiles or MR_PERCENTILES))


def recorded_mr_percentiles(path: str | Path) -> tuple[float, float]:
    """The MR percentiles a model's data was normalised with, read from `path`: a folder prepared by
    `diffma prepare` (manifest.json, `options.mr_percentiles`) or a run folder of `diffma train`
    (recipe.yaml, `data.mr_percentiles`, which training sets from the manifest). InputError otherwise."""
    path = Path(path)
    if (path / "manifest.json").is_file():
        from diffma_cli.data.dataset import load_manifest

        found, source = load_manifest(path).get("options", {}).get("mr_percentiles"), path / "manifest.json"
    elif (path / "recipe.yaml").is_file():
        from diffma_cli.config import load_recipe

        found, source = load_recipe(path / "recipe.yaml").data.mr_percentiles, path / "recipe.yaml"
    else:
        raise InputError("holds neither manifest.json (a prepared data folder) nor recipe.yaml (a run "
                         "folder)", path=path,
                         hint="give the folder that `diffma prepare` or `diffma train` wrote")
    try:
        low, high = (float(value) for value in found)
    except (TypeError, ValueError):
        raise InputError(f"records no MR percentiles (found {found!r})", path=source) from None
    if not 0 <= low < high <= 100:
        raise InputError(f"MR percentiles {[low, high]} are not an increasing pair within [0, 100]",
                         path=source)
    return low, high


def to_uint8(image: np.ndarray, scale: IntensityRange) -> np.ndarray:
    """Map intensities in `scale` to 8-bit grey values 0..255, as the released code wrote its PNGs.

    The released `sample.py` saves images with torchvision's `save_image(..., normalize=True,
    value_range=(-1, 1))`, which clamps to the range, maps it linearly to [0, 1], multiplies by 255, adds 0.5,
    clamps to [0, 255] and truncates to uint8 (so: round half up). The same operations, in float32 like
    torchvision, on any `scale`.
    """
    unit = (np.clip(image.astype(np.float32), scale.low, scale.high) - np.float32(scale.low)) / np.float32(
        scale.data_range)
    return np.clip(unit * np.float32(255) + np.float32(0.5), 0, 255).astype(np.uint8)


# More than this share of the voxels inside the mask off the metric scale: not a prediction on that scale.
OFF_SCALE_LIMIT = 0.5


def off_scale_problem(prediction: np.ndarray, mask: np.ndarray, modality: str) -> str | None:
    """Why `prediction` does not look like a volume on `metric_range(modality)` inside `mask` (None if it
    does): most voxels beyond the range (with 5 % of its width to spare: a raw MR in scanner units, a CT
    scored as MR), or, for CT, every voxel within [-1.5, 1.5] (a normalised volume scored as HU)."""
    scale = metric_range(modality)
    inside = prediction[mask > 0]
    if inside.size == 0:
        return None
    spare = 0.05 * scale.data_range
    off = float(np.mean((inside < scale.low - spare) | (inside > scale.high + spare)))
    low, high = float(inside.min()), float(inside.max())
    if off > OFF_SCALE_LIMIT:
        return (f"{off:.0%} of its voxels inside the mask lie outside the {modality.upper()} scale "
                f"[{scale.low:g}, {scale.high:g}] (they range from {low:.4g} to {high:.4g})")
    if modality == "ct" and -1.5 <= low and high <= 1.5:
        return (f"its voxels inside the mask range from {low:.4g} to {high:.4g}, the normalised scale, not "
                "Hounsfield units")
    return None
