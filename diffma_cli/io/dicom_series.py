"""A volume as a DICOM series written with SimpleITK: one file per axial slice, on the input's frame of
reference.

What a treatment-planning system needs to put a synthetic image beside the CT it came from:
- the CT's Study Instance UID, Frame of Reference UID, patient and study tags (copied from the first file of
  the CT series; fresh UIDs when the input was not DICOM), new Series and SOP Instance UIDs;
- Image Position/Orientation per slice and Pixel Spacing/Slice Thickness from the volume's geometry;
- integer pixel data (16-bit unsigned) with a Rescale Slope/Intercept that map it back onto the float values
  (every value within half a slope of the original).

The classic MR Image IOD has no Modality LUT (no Rescale Slope/Intercept), so GDCM, SimpleITK's DICOM
library, writes an MR series with a rescale as Enhanced MR Image Storage, one frame per file, with the
position, orientation and rescale of each frame in its functional groups; SimpleITK, GDCM and other readers
read that back as a float volume on the right grid. A CT output (MR -> CT runs) stays CT Image Storage.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import numpy as np

from diffma_cli.io.atomic import atomic_dir

# Tags copied from the source series so that the output joins its study on the same frame of reference:
# Specific Character Set (how the names are encoded), patient, general study and patient study modules,
# frame of reference, and the patient position (series level, needed to place the image in a plan).
COPIED_TAGS = {
    "0008|0005": "Specific Character Set",
    "0010|0010": "Patient's Name", "0010|0020": "Patient ID", "0010|0030": "Patient's Birth Date",
    "0010|0040": "Patient's Sex", "0010|1010": "Patient's Age", "0010|1020": "Patient's Size",
    "0010|1030": "Patient's Weight",
    "0020|000d": "Study Instance UID", "0008|0020": "Study Date", "0008|0030": "Study Time",
    "0008|0050": "Accession Number", "0008|0090": "Referring Physician's Name", "0020|0010": "Study ID",
    "0008|1030": "Study Description",
    "0020|0052": "Frame of Reference UID", "0020|1040": "Position Reference Indicator",
    "0018|5100": "Patient Position",
}
STUDY_UID, FRAME_OF_REFERENCE_UID, SERIES_UID = "0020|000d", "0020|0052", "0020|000e"
# DS (decimal string) values hold at most 16 characters (DICOM PS3.5, 6.2).
_DS_DIGITS = 10
STORED_BITS = 16
STORED_MAX = 2**STORED_BITS - 1


def new_uid() -> str:
    """A globally unique DICOM UID without a registered root: "2.25." + a random UUID as an integer
    (DICOM PS3.5 B.2)."""
    return f"2.25.{uuid.uuid4().int}"


def source_tags(path: str | Path) -> dict[str, str]:
    """The COPIED_TAGS present in the first file of the DICOM series in folder `path`; {} for anything else
    (a volume file, a folder without a series)."""
    import SimpleITK as sitk

    path = Path(path)
    if not path.is_dir():
        return {}
    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path))
    if not series:
        return {}
    first = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path), series[0])[0]
    reader = sitk.ImageFileReader()
    reader.SetFileName(first)
    reader.ReadImageInformation()
    keys = set(reader.GetMetaDataKeys())
    return {tag: reader.GetMetaData(tag).strip() for tag in COPIED_TAGS if tag in keys}


def _ds(value: float) -> str:
    """A decimal string of at most 16 characters."""
    text = f"{value:.{_DS_DIGITS}g}"
    assert len(text) <= 16, text
    return text


def rescale_for(values: np.ndarray) -> tuple[str, str]:
    """(Rescale Intercept, Rescale Slope) as DICOM decimal strings that spread the range of `values` over
    0..65535: stored = round((value - intercept) / slope). A constant volume gets slope 1."""
    low, high = float(np.min(values)), float(np.max(values))
    intercept = _ds(low)
    slope = (high - float(intercept)) / STORED_MAX
    # Rounding the slope to 10 digits may shrink it: round up so the maximum still fits in 16 bits.
    slope_text = _ds(slope * (1 + 1e-9)) if slope > 0 else "1"
    return intercept, slope_text


def write_dicom_series(image, folder: str | Path, *, tags: dict[str, str], modality: str, description: str,
                       comments: str, series_number: int = 1000, overwrite: bool = False) -> Path:
    """Write the 3-D `SimpleITK.Image` `image` (any pixel type) as a DICOM series into `folder` (atomically:
    the folder appears complete or not at all), one file `IMxxxx.dcm` per slice along its third axis.

    tags: copied tags of the source series (`source_tags`); Study and Frame of Reference UIDs missing there
    are generated. modality: "MR" or "CT". description / comments: Series Description (trimmed to 64
    characters) and Image Comments. Returns `folder`.
    """
    import SimpleITK as sitk

    from diffma_cli import __version__

    values = sitk.GetArrayViewFromImage(image)
    intercept, slope = rescale_for(values)
    floating = sitk.Cast(image, sitk.sitkFloat64)
    direction = image.GetDirection()
    orientation = "\\".join(_ds(v) for v in (*direction[0::3], *direction[1::3]))
    now_date, now_time = time.strftime("%Y%m%d"), time.strftime("%H%M%S")
    study_uid = tags.get(STUDY_UID) or new_uid()
    series_uid = new_uid()
    common = {
        **tags,
        STUDY_UID: study_uid,
        FRAME_OF_REFERENCE_UID: tags.get(FRAME_OF_REFERENCE_UID) or new_uid(),
        SERIES_UID: series_uid,
        "0008|0060": modality,
        "0008|0008": "DERIVED\\SECONDARY",  # Image Type: computed from another image
        "0008|103e": description[:64],
        "0020|4000": comments,
        "0008|2111": comments[:1024],  # Derivation Description (ST)
        "0008|0070": "diffma",  # Manufacturer: what made this series
        "0018|1020": __version__,  # Software Versions
        "0020|0011": str(series_number),
        "0008|0021": now_date, "0008|0031": now_time,  # Series Date/Time
        "0008|0023": now_date, "0008|0033": now_time,  # Content Date/Time
        "0028|0030": f"{_ds(image.GetSpacing()[1])}\\{_ds(image.GetSpacing()[0])}",  # rows, columns
        "0018|0050": _ds(image.GetSpacing()[2]),  # Slice Thickness
        "0028|1052": intercept, "0028|1053": slope,
        # The stored integers: 16-bit unsigned (ITK maps the float values through the rescale).
        "0028|0100": str(STORED_BITS), "0028|0101": str(STORED_BITS), "0028|0102": str(STORED_BITS - 1),
        "0028|0103": "0",
    }
    if modality == "MR":
        common.update({"0018|0020": "RM", "0018|0021": "NONE"})  # Scanning Sequence: research mode
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()  # write the UIDs given here, not ITK's own
    with atomic_dir(folder, overwrite=overwrite) as temporary:
        for z in range(image.GetDepth()):
            plane = floating[:, :, z]
            position = image.TransformIndexToPhysicalPoint((0, 0, z))
            for tag, value in common.items():
                plane.SetMetaData(tag, value)
            plane.SetMetaData("0008|0018", new_uid())  # SOP Instance UID
            plane.SetMetaData("0020|0013", str(z + 1))  # Instance Number
            plane.SetMetaData("0020|0032", "\\".join(_ds(v) for v in position))
            plane.SetMetaData("0020|0037", orientation)
            plane.SetMetaData("0020|1041", _ds(float(np.dot(position, direction[2::3]))))  # Slice Location
            writer.SetFileName(str(temporary / f"IM{z + 1:04d}.dcm"))
            writer.Execute(plane)
    return Path(folder)
