"""Helpers for the data pipeline tests: tiny SynthRAD-shaped cases written on the fly."""

from pathlib import Path

import numpy as np


def write_case(folder: Path, *, shape=(6, 8, 10), spacing=(1.0, 1.0, 2.5), suffix=".nii.gz",
               modalities=("ct", "mr", "mask"), mask_slices=slice(1, 5)) -> Path:
    """A small case: CT/MR ramps and a body mask filling `mask_slices` of the (z, y, x) volume."""
    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    z, y, x = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    mask = np.zeros(shape, np.uint8)
    mask[mask_slices] = 1
    arrays = {"ct": (-1000 + 100 * x + 10 * y).astype(np.int16), "mr": (50.0 + x + y + z).astype(np.float32),
              "mask": mask}
    for modality in modalities:
        image = sitk.GetImageFromArray(arrays[modality])
        image.SetSpacing(spacing)
        image.SetOrigin((-10.0, 20.0, 5.0))
        sitk.WriteImage(image, str(folder / f"{modality}{suffix}"))
    return folder
