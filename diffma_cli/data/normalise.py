"""Intensity normalisation of CT (fixed HU window) and MR (robust per-case scaling), and the inverses.

Every function works on one array of any shape (a volume, a slice stack, a single slice) and needs no
data set: `convert` normalises a new CT with the recipe's window, `eval` scales MR for its metric protocol.
Results are float32.

- CT: clip to a window `[low, high]` in HU, then map linearly to [-1, 1]. Default window [-1024, 3000] HU:
  -1024 is air as CT scanners store it (SynthRAD fills outside the field of view with -1000, which maps
  just above -1), 3000 HU covers cortical bone and dental fillings (the SynthRAD2023 challenge's own
  window). Inverse: `ct_from_unit`; values outside the window come back clipped.
- MR: scanner units have no absolute scale, so each case is scaled by its own robust range inside the body
  mask: percentiles (default 0.5 and 99.5) of the MR voxels where mask > 0 map to -1 and +1, values beyond
  are clipped. `mr_scaling(mr, mask)` returns the JSON-able record `{"low", "high", "percentiles"}` that
  `mr_to_unit` / `mr_from_unit` use and that `prepare` stores per case in the manifest.
"""

from __future__ import annotations

import numpy as np

from diffma_cli.errors import InputError

# HU window mapped to [-1, 1]; see the module docstring for where the numbers come from.
CT_WINDOW_HU: tuple[float, float] = (-1024.0, 3000.0)
# Percentiles of the in-mask MR intensities mapped to -1 and +1: robust to the few hot voxels (vessels,
# noise, bias-field corners) that a min/max scaling would let dominate.
MR_PERCENTILES: tuple[float, float] = (0.5, 99.5)


def _to_unit(values: np.ndarray, low: float, high: float) -> np.ndarray:
    values = np.asarray(values, dtype=np.float32)
    unit = (np.clip(values, low, high) - np.float32(low)) * np.float32(2.0 / (high - low)) - np.float32(1.0)
    return unit.astype(np.float32, copy=False)


def _from_unit(unit: np.ndarray, low: float, high: float) -> np.ndarray:
    unit = np.clip(np.asarray(unit, dtype=np.float32), -1.0, 1.0)
    return ((unit + np.float32(1.0)) * np.float32((high - low) / 2.0) + np.float32(low)).astype(np.float32)


def _check_window(window: tuple[float, float]) -> tuple[float, float]:
    low, high = (float(v) for v in window)
    if not (np.isfinite(low) and np.isfinite(high) and high > low):
        raise InputError(f"CT window {list(window)} is not an increasing pair of HU values",
                         hint="e.g. [-1024, 3000]")
    return low, high


def ct_to_unit(hu: np.ndarray, window: tuple[float, float] = CT_WINDOW_HU) -> np.ndarray:
    """CT in HU (any shape) -> float32 in [-1, 1]: clipped to `window`, then linear."""
    return _to_unit(hu, *_check_window(window))


def ct_from_unit(unit: np.ndarray, window: tuple[float, float] = CT_WINDOW_HU) -> np.ndarray:
    """Inverse of `ct_to_unit`: [-1, 1] -> HU (float32; inputs outside [-1, 1] are clipped first)."""
    return _from_unit(unit, *_check_window(window))


def mr_scaling(mr: np.ndarray, mask: np.ndarray, percentiles: tuple[float, float] = MR_PERCENTILES) -> dict:
    """Robust range of one case's MR inside its mask: `{"low", "high", "percentiles"}` (JSON-able).

    `mr` and `mask` have the same shape; voxels with mask > 0 count. Raises InputError for an empty mask or
    a flat MR (low == high), both of which leave nothing to scale by.
    """
    mr = np.asarray(mr)
    mask = np.asarray(mask)
    if mr.shape != mask.shape:
        raise InputError(f"MR shape {mr.shape} differs from mask shape {mask.shape}")
    inside = mr[mask > 0]
    if inside.size == 0:
        raise InputError("the mask is empty: no MR intensity to scale by", hint="check the body mask")
    low, high = (float(v) for v in np.percentile(inside.astype(np.float64), list(percentiles)))
    if not high > low:
        raise InputError(f"the MR inside the mask is flat ({low:g}): nothing to scale by",
                         hint="check that the MR holds an image")
    return {"low": low, "high": high, "percentiles": [float(p) for p in percentiles]}


def mr_to_unit(mr: np.ndarray, scaling: dict) -> np.ndarray:
    """MR in scanner units (any shape) -> float32 in [-1, 1] with a case's `mr_scaling` record."""
    return _to_unit(mr, scaling["low"], scaling["high"])


def mr_from_unit(unit: np.ndarray, scaling: dict) -> np.ndarray:
    """Inverse of `mr_to_unit`: [-1, 1] -> scanner units of that case (float32)."""
    return _from_unit(unit, scaling["low"], scaling["high"])
