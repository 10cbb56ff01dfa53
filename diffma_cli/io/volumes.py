"""Volumes on disk: any format SimpleITK reads (NIfTI, MHA, NRRD, ...) or a DICOM series folder.

Geometry (size, spacing in mm, origin in mm, direction cosines) travels with the `SimpleITK.Image`; arrays
taken from it are indexed (z, y, x) as SimpleITK's `GetArrayFromImage` returns them.
"""

from __future__ import annotations

from pathlib import Path

from diffma_cli.errors import InputError
from diffma_cli.io.atomic import atomic_file

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr")


def is_volume_file(path: Path) -> bool:
    """True for a file whose name ends in one of the volume formats we look for in folders."""
    name = path.name.lower()
    return path.is_file() and not name.startswith(".") and name.endswith(VOLUME_SUFFIXES)


def read_volume(path: str | Path, *, dimension: int = 3):
    """Read a volume (file or DICOM series folder) as a `SimpleITK.Image`, or raise one clear InputError."""
    import SimpleITK as sitk

    path = Path(path)
    if not path.exists():
        raise InputError("no such file or folder", path=path)
    try:
        if path.is_dir():
            series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path))
            if not series:
                raise InputError("folder holds no DICOM series", path=path,
                                 hint="give a volume file or a folder of DICOM slices")
            if len(series) > 1:
                raise InputError(f"folder holds {len(series)} DICOM series; expected one", path=path,
                                 hint="put each series in its own folder")
            files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path), series[0])
            image = sitk.ReadImage(files)
        else:
            image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        reason = str(error).strip().splitlines()
        detail = next((line for line in reason if "ERROR" in line or "Unable" in line), "unreadable")
        raise InputError(f"cannot read as an image ({detail.strip()[:160]})", path=path) from None
    if image.GetDimension() != dimension:
        raise InputError(f"is a {image.GetDimension()}-D image; expected {dimension}-D", path=path)
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"has {image.GetNumberOfComponentsPerPixel()} components per voxel; expected 1",
                         path=path)
    return image


def write_volume(image, path: str | Path, *, overwrite: bool = False, compress: bool = True) -> Path:
    """Write a `SimpleITK.Image` atomically (never a half-written file under the final name)."""
    import SimpleITK as sitk

    path = Path(path)
    with atomic_file(path, overwrite=overwrite) as temporary:
        sitk.WriteImage(image, str(temporary), useCompression=compress)
    return path
