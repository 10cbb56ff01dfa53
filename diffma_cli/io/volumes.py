"""Volumes on disk: any format SimpleITK reads (NIfTI, MHA, NRRD, ...) or a DICOM series folder.

Geometry (size, spacing in mm, origin in mm, direction cosines) travels with the `SimpleITK.Image`; arrays
taken from it are indexed (z, y, x) as SimpleITK's `GetArrayFromImage` returns them.
"""

from __future__ import annotations

import zlib
from pathlib import Path

from diffma_cli.errors import InputError
from diffma_cli.io.atomic import atomic_file

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr")


def is_volume_file(path: Path) -> bool:
    """True for a file whose name ends in one of the volume formats we look for in folders."""
    name = path.name.lower()
    return path.is_file() and not name.startswith(".") and name.endswith(VOLUME_SUFFIXES)


def read_volume(path: str | Path, *, dimension: int = 3, check_voxels: bool = True):
    """Read a volume (file or DICOM series folder) as a `SimpleITK.Image`, or raise one clear InputError.

    `check_voxels`: also refuse NaN/infinite voxels and NIfTI files whose voxel data is cut short, which
    ITK's reader hides (it reads NaN as 0 and zero-fills a truncated file); costs one more pass over the file.
    """
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
    if check_voxels:
        _check_voxels(image, path)
    return image


def _check_voxels(image, path: Path) -> None:
    """InputError for non-finite voxels (in the image or, for NIfTI, in the raw file) or truncated data."""
    import numpy as np
    import SimpleITK as sitk

    array = sitk.GetArrayViewFromImage(image)
    try:
        bad = int(array.size - np.isfinite(array).sum()) if array.dtype.kind == "f" else 0
        bad = bad or (nifti_nonfinite_count(path) if path.is_file() else 0)
    except (OSError, EOFError, zlib.error):
        raise InputError("is damaged: its voxel data is truncated or corrupt", path=path,
                         hint="copy or export the file again") from None
    if bad:
        raise InputError(f"holds {bad} NaN or infinite voxel(s)", path=path,
                         hint="fix or re-export the volume; NaN has no meaning as an intensity")


# NIfTI-1/-2 float datatype codes -> numpy dtypes (nifti1.h: DT_FLOAT32 16, DT_FLOAT64 64).
_NIFTI_FLOAT_TYPES = {16: "f4", 64: "f8"}


def nifti_nonfinite_count(path: Path) -> int:
    """Non-finite voxels of a NIfTI file read from its raw bytes; EOFError if the voxel data is cut short.

    ITK's NIfTI reader silently turns NaN into 0 and zero-fills a truncated file, so a damaged .nii(.gz)
    looks clean once read; the raw voxel block (from `vox_offset`, header layout per nifti1.h / nifti2.h)
    tells. Other formats return 0.
    """
    import gzip

    import numpy as np

    name = path.name.lower()
    if not name.endswith((".nii", ".nii.gz")):
        return 0
    opener = gzip.open if name.endswith(".gz") else open
    with opener(path, "rb") as stream:
        header = stream.read(540)
        for order in ("<", ">"):
            size = int(np.frombuffer(header[:4], f"{order}i4")[0])
            if size == 348:  # NIfTI-1: dim int16[8] @40, datatype int16 @70, bitpix @72, vox_offset f4 @108
                dims = np.frombuffer(header[40:56], f"{order}i2").astype(np.int64)
                datatype, bitpix = (int(v) for v in np.frombuffer(header[70:74], f"{order}i2"))
                offset = int(np.frombuffer(header[108:112], f"{order}f4")[0])
                break
            if size == 540:  # NIfTI-2: datatype, bitpix int16 @12, dim int64[8] @16, vox_offset i8 @168
                datatype, bitpix = (int(v) for v in np.frombuffer(header[12:16], f"{order}i2"))
                dims = np.frombuffer(header[16:80], f"{order}i8")
                offset = int(np.frombuffer(header[168:176], f"{order}i8")[0])
                break
        else:
            return 0
        expected = int(np.prod(dims[1:1 + int(dims[0])])) * bitpix // 8
        stream.seek(offset)
        data = stream.read(expected)
    if len(data) < expected:
        raise EOFError(f"{len(data)} of {expected} voxel bytes")
    if datatype not in _NIFTI_FLOAT_TYPES:
        return 0
    values = np.frombuffer(data, np.dtype(f"{order}{_NIFTI_FLOAT_TYPES[datatype]}"))
    return int(values.size - np.isfinite(values).sum())


def write_volume(image, path: str | Path, *, overwrite: bool = False, compress: bool = True) -> Path:
    """Write a `SimpleITK.Image` atomically (never a half-written file under the final name)."""
    import SimpleITK as sitk

    path = Path(path)
    with atomic_file(path, overwrite=overwrite) as temporary:
        sitk.WriteImage(image, str(temporary), useCompression=compress)
    return path
