"""Canonical orientation: the axis order and signs a volume is sliced in.

Slicing takes axial slices along the array's first axis, (z, y, x) as SimpleITK gives it, and the models learn
whatever in-plane layout the training volumes had. A CT stored with flipped or permuted axes would be sliced
in a frame the model never saw. So `prepare` and `convert` first reorient every volume to one orientation
(recipe `data.orientation`, DICOM-style three-letter code of where the x, y, z index axes point; "LPS" by
default, the layout of SynthRAD volumes and of axial DICOM series: x to the patient's left, y posterior,
z superior) and `convert` turns its result back onto the input's exact grid.

Reorienting only permutes and flips the array axes (SimpleITK's DICOMOrient: the closest axis-aligned
orientation, no interpolation), so it is exact and undone exactly. "none" keeps volumes as stored.
"""

from __future__ import annotations

from diffma_cli.errors import InputError

CANONICAL = "LPS"
KEEP = "none"
_PAIRS = ("LR", "PA", "SI")


def check_orientation(code: str, key: str = "data.orientation") -> str:
    """The code in upper case ("none" stays), or InputError: three letters, one of each of L/R, P/A, S/I."""
    if code == KEEP:
        return code
    upper = str(code).upper()
    axes = sorted(i for letter in upper for i, pair in enumerate(_PAIRS) if letter in pair)
    if len(upper) != 3 or axes != [0, 1, 2]:
        raise InputError(f"{'recipe value ' if '.' in key else ''}{key}={code!r} is not an orientation",
                         hint="three letters, one each of L/R, P/A and S/I (e.g. LPS), or none")
    return upper


def orientation_of(image) -> str:
    """The closest three-letter orientation code of a 3-D `SimpleITK.Image` (e.g. "LPS")."""
    import SimpleITK as sitk

    return sitk.DICOMOrientImageFilter_GetOrientationFromDirectionCosines(image.GetDirection())


def reorient(image, code: str):
    """`image` with its axes permuted and flipped to orientation `code` (the same image if it already is, or
    if code is "none"). Voxel values are moved, never interpolated."""
    import SimpleITK as sitk

    if code == KEEP or orientation_of(image) == code:
        return image
    return sitk.DICOMOrient(image, code)


def restore(result, reference):
    """`result`, computed on `reorient(reference, code)`'s grid, back on `reference`'s exact grid."""
    back = reorient(result, orientation_of(reference))
    if back.GetSize() != reference.GetSize():  # a permutation always comes back; guard the invariant
        raise AssertionError(f"reorientation did not invert: {back.GetSize()} vs {reference.GetSize()}")
    back.CopyInformation(reference)  # identical up to rounding of the origin; take the input's exactly
    return back
