"""The predictors every model is read against: trivial rows that need no learning and ceilings that no
model can pass (docs/quality.md, "Reading the table").

All work on the normalised scale the models and `diffma eval` use (MR: per-case percentiles inside the
mask to [-1, 1]; CT: the data's HU window to [-1, 1]), on (z, y, x) float32 arrays; the background outside
the mask is -1, as `convert --mask` writes it.

- `constant_prediction`: one value inside the mask, the mean normalised MR over the training cases'
  mask voxels (`pooled_mean`): what a model that ignores the CT scores at best on MAE-like metrics.
- `other_patient_prediction`: another patient's normalised MR, placed on this case's grid with the two
  volumes' centres aligned: "a plausible MR of somebody else".
- `affine_prediction`: the least-squares map MR ~ a·CT + b fitted on this case's own mask voxels (it sees
  the answer: a floor that a model must pass to use the CT beyond one global intensity map).
- `oracle_prediction` (phantoms only): the MR before noise, with the reference's own normalisation; the
  remaining error is the noise, which no prediction from the anatomy can know.
- `vae_round_trip`: the normalised reference sliced as convert slices a CT, encoded and decoded by a
  run's VAE and put back on the grid: what any latent model of that run can reach.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

BACKGROUND = -1.0


def normalised_case_mr(case) -> tuple[np.ndarray, np.ndarray]:
    """(MR on eval's normalised scale, bool mask) of a SynthRAD case (`data.synthrad.Case`), read and
    normalised exactly as `diffma eval` reads a reference."""
    import SimpleITK as sitk

    from diffma_cli.evaluation.scales import normalise_reference
    from diffma_cli.io.volumes import read_volume

    mask = sitk.GetArrayFromImage(read_volume(case.mask)) > 0
    mr = sitk.GetArrayFromImage(read_volume(case.mr)).astype(np.float32)
    return normalise_reference(mr, mask, "mr"), mask


def pooled_mean(volumes_and_masks: Iterable[tuple[np.ndarray, np.ndarray]]) -> float:
    """Mean of the normalised volumes over all their mask voxels together (each voxel counts once)."""
    total, count = 0.0, 0
    for volume, mask in volumes_and_masks:
        inside = np.asarray(volume, np.float64)[np.asarray(mask) > 0]
        total, count = total + float(inside.sum()), count + inside.size
    if count == 0:
        raise ValueError("no mask voxel in any volume")
    return total / count


def _inside_only(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    out = np.full(mask.shape, BACKGROUND, np.float32)
    inside = np.asarray(mask) > 0
    out[inside] = np.asarray(values, np.float32)[inside]
    return out


def constant_prediction(mask: np.ndarray, value: float) -> np.ndarray:
    """`value` inside the mask, the background outside."""
    return _inside_only(np.full(mask.shape, value, np.float32), mask)


def affine_prediction(ct_unit: np.ndarray, mr_unit: np.ndarray, mask: np.ndarray
                      ) -> tuple[np.ndarray, float, float]:
    """Least-squares MR ~ a·CT + b over this case's mask voxels -> (prediction clipped to [-1, 1], a, b)."""
    inside = np.asarray(mask) > 0
    x = ct_unit[inside].astype(np.float64)
    design = np.stack([x, np.ones_like(x)], axis=1)
    (a, b), *_ = np.linalg.lstsq(design, mr_unit[inside].astype(np.float64), rcond=None)
    return _inside_only(np.clip(a * ct_unit.astype(np.float64) + b, -1.0, 1.0), mask), float(a), float(b)


def oracle_prediction(noise_free_mr: np.ndarray, reference_mr: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The noise-free MR on the reference's normalised scale: both in scanner units, the scaling (the
    reference's percentiles inside the mask) taken from the reference, as `diffma eval` normalises it."""
    from diffma_cli.data.normalise import mr_scaling, mr_to_unit

    return _inside_only(mr_to_unit(noise_free_mr, mr_scaling(reference_mr, mask)), mask)


def other_patient_prediction(other, like, mask: np.ndarray):
    """`other` (a SimpleITK image of another case's normalised MR) resampled linearly onto the grid of `like`
    (a SimpleITK image) with the centres of the two volumes made to coincide, background outside `other`;
    then masked by this case's `mask` -> (z, y, x) float32."""
    import SimpleITK as sitk

    def centre(image) -> np.ndarray:
        return np.array(image.TransformContinuousIndexToPhysicalPoint(
            [(n - 1) / 2.0 for n in image.GetSize()]))

    # The transform maps points of `like`'s space to `other`'s space.
    shift = sitk.TranslationTransform(3, (centre(other) - centre(like)).tolist())
    moved = sitk.Resample(other, like, shift, sitk.sitkLinear, BACKGROUND, sitk.sitkFloat32)
    return _inside_only(sitk.GetArrayFromImage(moved), mask)


def vae_round_trip(unit: np.ndarray, spacing_xyz, mask: np.ndarray, models,
                   batch_size: int = 16) -> np.ndarray:
    """A normalised volume (z, y, x) through the slicing, VAE encoder (posterior mean) and decoder of a
    run (`convert.load_models`) and back onto its grid, masked."""
    import torch

    from diffma_cli.data.slicing import plan_slicing, slice_volume, unslice_volume

    body = np.asarray(mask) > 0
    record = plan_slicing(unit.shape, spacing_xyz, body, models.recipe.data.image_size)
    slices = slice_volume(np.asarray(unit, np.float32), record, "linear", BACKGROUND)
    decoded = np.empty_like(slices)
    with torch.no_grad():
        for start in range(0, len(slices), batch_size):
            images = torch.from_numpy(slices[start:start + batch_size]).to(models.device)[:, None]
            latents = models.vae.encode(images).mean * models.vae.scale
            decoded[start:start + batch_size] = (
                models.vae.decode(latents).mean(dim=1).clamp(-1.0, 1.0).float().cpu().numpy())
    return _inside_only(unslice_volume(decoded, record, "linear", BACKGROUND), mask)
