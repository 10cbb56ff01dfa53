"""Volumes on disk: any format SimpleITK reads (NIfTI, MHA, NRRD, ...) or a DICOM series folder.

Geometry (size, spacing in mm, origin in mm, direction cosines) travels with the `SimpleITK.Image`; arrays
taken from it are indexed (z, y, x) as SimpleITK's `GetArrayFromImage` returns them.
"""

from __future__ import annotations

import os
import zlib
from contextlib import contextmanager
from pathlib import Path

from diffma_cli.errors import InputError, OutputError
from diffma_cli.io.atomic import atomic_file, disk_full_error, free_bytes

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
    if not path.is_dir() and not path.is_file():  # reading a named pipe would block forever
        raise InputError("is not a regular file (a named pipe, socket or device)", path=path,
                         hint="give a volume file or a DICOM series folder")
    if path.is_file():
        check_header(path)
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
            with quiet_itk():
                image = sitk.ReadImage(files)
        else:
            with quiet_itk():
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
    check_geometry(image.GetSize(), image.GetSpacing(), path)
    if check_voxels:
        _check_voxels(image, path)
    return image


# Plausibility limits of a volume's header, checked before its voxels are read: a human body fits in 3 m
# along every axis, and no scanner makes voxels larger than 100 mm.
MAX_EXTENT_MM = 3000.0
MAX_SPACING_MM = 100.0


def check_header(path: Path) -> None:
    """InputError for a volume file whose header is implausible (voxel size zero, negative, NaN or huge;
    an extent beyond a body) and EnvironmentProblem when its voxels would not fit in memory; read from the
    header only, before any voxel memory is allocated."""
    import numpy as np
    import SimpleITK as sitk

    raw = nifti_header(path) if path.name.lower().endswith((".nii", ".nii.gz")) else None
    if raw is not None:
        problem = raw.get("problem")
        if problem:
            raise InputError(problem, path=path,
                             hint="fix the header (pixdim, sform) or export the volume again")
    try:
        with quiet_itk():
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            reader.ReadImageInformation()
    except RuntimeError:
        return  # unreadable: read_volume's own message says so
    size = reader.GetSize()
    check_geometry(size[:3], reader.GetSpacing()[:3], path)  # a time axis is read_volume's to refuse
    # the voxels as read (up to 8 bytes), a float32 working copy and a float32 result, per component
    needed = float(np.prod(size, dtype=np.float64)) * reader.GetNumberOfComponents() * 16
    available = available_memory()
    if available is not None and needed > available:
        from diffma_cli.errors import EnvironmentProblem

        raise EnvironmentProblem(f"its header asks for {' x '.join(map(str, size))} voxels, about "
                                 f"{needed / 2**30:.1f} GiB to work on; {available / 2**30:.1f} GiB of "
                                 "memory is available", path=path,
                                 hint="check the file (a damaged header?) or use a machine with more memory")


def check_geometry(size, spacing, path: Path) -> None:
    """InputError for a voxel size that is not a finite positive number or is implausibly large, or an
    extent (size x spacing) beyond a human body."""
    import math

    for axis, (count, step) in enumerate(zip(size, spacing, strict=True)):
        name = "xyzt"[axis] if axis < 4 else str(axis)
        if not (math.isfinite(step) and step > 0):
            raise InputError(f"has a voxel size of {step} mm along {name}; it must be a positive number",
                             path=path, hint="fix the header's voxel size or export the volume again")
        if step > MAX_SPACING_MM or count * step > MAX_EXTENT_MM:
            raise InputError(f"is implausible for a scan: {count} voxels of {step:g} mm along {name} "
                             f"({count * step / 1000:g} m)", path=path,
                             hint="check the header's voxel size and dimensions")


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux MemAvailable), None where unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def nifti_header(path: Path) -> dict | None:
    """The voxel sizes of a NIfTI file's header, with a "problem" entry when they cannot be a voxel size
    (ITK silently reads a zero or NaN pixdim as 1 mm); None for files that are not NIfTI-1/-2."""
    import gzip

    import numpy as np

    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as stream:
            header = stream.read(540)
    except (OSError, EOFError, zlib.error):
        return None
    if len(header) < 348:
        return None
    for order in ("<", ">"):
        size = int(np.frombuffer(header[:4], f"{order}i4")[0])
        if size == 348:  # NIfTI-1: dim int16[8] @40, pixdim f4[8] @76, sform_code int16 @254, srow f4 @280
            ndim = int(np.frombuffer(header[40:42], f"{order}i2")[0])
            pixdim = np.frombuffer(header[76:108], f"{order}f4").astype(np.float64)
            sform_code = int(np.frombuffer(header[254:256], f"{order}i2")[0])
            srow = np.frombuffer(header[280:328], f"{order}f4").astype(np.float64).reshape(3, 4)
            break
        if size == 540 and len(header) >= 540:  # NIfTI-2: dim int64[8] @16, pixdim f8[8] @104
            ndim = int(np.frombuffer(header[16:24], f"{order}i8")[0])
            pixdim = np.frombuffer(header[104:168], f"{order}f8")
            sform_code, srow = 0, None
            break
    else:
        return None
    spatial = pixdim[1:1 + max(1, min(ndim, 3))]
    result: dict = {"pixdim": spatial.tolist()}
    if not np.all(np.isfinite(spatial)) or np.any(spatial <= 0):
        result["problem"] = f"has an invalid voxel size in its header (pixdim {spatial.tolist()} mm)"
    elif sform_code > 0 and srow is not None:
        columns = np.linalg.norm(srow[:, :3], axis=0)[: len(spatial)]
        if not np.all(np.isfinite(srow)) or np.any(columns == 0):
            result["problem"] = (f"has an invalid voxel size in its sform (column lengths {columns.tolist()} "
                                 "mm)")
    return result


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
    """Write a `SimpleITK.Image` so that a file under `path` is always complete.

    SimpleITK's writer can fail without raising (on a full disk it prints "wrote only 0 of N bytes" and
    returns): the temporary file is read back (size, voxel count and, for NIfTI, every voxel byte) before
    it is flushed to the disk and renamed (io/atomic.py). A failed check is an OutputError, "no space left
    on device in DIR" when the disk is full.
    """
    import SimpleITK as sitk

    path = Path(path)
    with atomic_file(path, overwrite=overwrite) as temporary:
        with quiet_itk():
            sitk.WriteImage(image, str(temporary), useCompression=compress)
        problem = volume_file_problem(temporary, expected_size=image.GetSize())
        if problem is not None:
            free = free_bytes(path.parent)
            needed = image.GetNumberOfPixels() * image.GetSizeOfPixelComponent()
            if free is not None and free < max(needed, 2**20):
                raise disk_full_error(path.parent)
            raise OutputError(f"the written file failed its read-back check ({problem})", path=path,
                              hint="check the disk and write again")
    return path


def volume_file_problem(path: Path, expected_size: tuple[int, ...] | None = None) -> str | None:
    """Why a volume file on disk is not a complete, readable volume (None when it is).

    Reads the header (and compares the voxel grid with `expected_size`), then the voxel data: NIfTI by
    our own byte count (ITK zero-fills a short file), other formats through ITK. Used after every write
    and before a folder run skips a case as finished.
    """
    import SimpleITK as sitk

    if not path.is_file() or path.stat().st_size == 0:
        return "empty or missing"
    try:
        with quiet_itk():
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            reader.ReadImageInformation()
            size = tuple(reader.GetSize())
            if expected_size is not None and size != tuple(expected_size):
                return f"holds {size} voxels, expected {tuple(expected_size)}"
            if path.name.lower().endswith((".nii", ".nii.gz")):
                nifti_nonfinite_count(path)
            else:
                sitk.ReadImage(str(path))
    except (RuntimeError, OSError, EOFError, zlib.error) as error:
        return str(error).strip().splitlines()[-1][:120] if str(error).strip() else type(error).__name__
    return None


@contextmanager
def quiet_itk():
    """Keep ITK's, GDCM's and the NIfTI library's messages off the terminal while reading or writing a
    volume: our own checks turn every problem into one line, and those libraries print to the C-level
    stderr (file descriptor 2) before and besides raising, which Python cannot catch otherwise."""
    import sys
    import tempfile

    import SimpleITK as sitk

    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no descriptor 2 (a detached process): nothing to silence
        saved = None
    sink = tempfile.TemporaryFile() if saved is not None else None
    if sink is not None:
        os.dup2(sink.fileno(), 2)
    try:
        yield
    finally:
        if sink is not None:
            os.dup2(saved, 2)
            os.close(saved)
            sink.close()
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)
