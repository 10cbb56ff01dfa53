"""Which prediction belongs to which reference, and reading a pair onto one checked grid.

Folder mode (`pair_folder`): references come from a SynthRAD tree (`diffma_cli.data.synthrad.find_cases`);
the prediction of case `<id>` in PRED_DIR is `<id><ext>` or `<id>/<modality><ext>` with `<ext>` any volume
suffix (`.nii.gz`, `.nii`, `.mha`, ...; docs/metrics.md). Entries of PRED_DIR named after no case (for
example standard-deviation maps) are ignored; cases without a prediction are not scored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diffma_cli.errors import InputError
from diffma_cli.io.volumes import VOLUME_SUFFIXES, is_volume_file

# Geometry of prediction, reference, mask and input must agree to this tolerance (mm for spacing and origin,
# unitless for direction cosines): it only absorbs float32 rounding in file headers.
GEOMETRY_TOLERANCE = 1e-3
# The modality a reference belongs to -> the modality of the input it was converted from.
INPUT_MODALITY = {"mr": "ct", "ct": "mr"}


@dataclass(frozen=True)
class CasePaths:
    """One case to score: prediction and reference volumes, body mask, and optionally the model input."""

    case: str
    prediction: Path
    reference: Path
    mask: Path
    input: Path | None = None


@dataclass
class CaseVolumes:
    """A case read into arrays (z, y, x) on one grid; `spacing` is (z, y, x) in mm.

    `prediction` and `reference` are float32 on the metric scale of the modality (`scales.metric_range`);
    `input` is the model input in its own units (HU for CT) or None; `mask` is boolean.
    """

    case: str
    prediction: np.ndarray
    reference: np.ndarray
    mask: np.ndarray
    input: np.ndarray | None
    spacing: tuple[float, float, float]


def strip_volume_suffix(name: str) -> str:
    """`1BA001.nii.gz` -> `1BA001`; a name without a volume suffix is returned unchanged."""
    for suffix in VOLUME_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def case_id_of(prediction: Path) -> str:
    """The case id a prediction file names: its stem, or its folder's name for `<id>/mr.nii.gz` files."""
    stem = strip_volume_suffix(prediction.name)
    if stem.lower() in INPUT_MODALITY and prediction.parent.name:
        stem = prediction.absolute().parent.name
    return re.sub(r"[^A-Za-z0-9._-]", "_", stem) or "case"


def find_prediction(pred_dir: Path, case_id: str, modality: str) -> Path | None:
    """The prediction of `case_id` in `pred_dir` (see module docstring); InputError if there are several."""
    candidates = [pred_dir / f"{case_id}{suffix}" for suffix in VOLUME_SUFFIXES]
    candidates += [pred_dir / case_id / f"{modality}{suffix}" for suffix in VOLUME_SUFFIXES]
    found = [path for path in candidates if is_volume_file(path)]
    if len(found) > 1:
        names = ", ".join(str(path.relative_to(pred_dir)) for path in found)
        raise InputError(f"case {case_id} has {len(found)} predictions ({names})", path=pred_dir,
                         hint="keep one file per case")
    return found[0] if found else None


def pair_folder(pred_dir: str | Path, data_src: str | Path, modality: str) -> list[CasePaths]:
    """Every case of the SynthRAD tree `data_src` that has a prediction in `pred_dir`, sorted by case id.

    Raises one InputError if `pred_dir` is not a folder, no prediction matches a case, or a matched case lacks
    its reference or mask (the message names the first such case and counts the others).
    """
    from diffma_cli.data.synthrad import find_cases

    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise InputError("no such folder of predictions", path=pred_dir,
                         hint="give a folder with <case>.nii.gz or <case>/mr.nii.gz files, or --target")
    cases = find_cases(data_src)
    pairs, problems = [], []
    for case in cases:
        prediction = find_prediction(pred_dir, case.id, modality)
        if prediction is None:
            continue
        reference, mask = case.path(modality), case.path("mask")
        if reference is None or mask is None:
            absent = modality if reference is None else "mask"
            problems.append(f"case {case.id} has no {absent} in {case.folder}")
            continue
        pairs.append(CasePaths(case.id, prediction, reference, mask, case.path(INPUT_MODALITY[modality])))
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise InputError(problems[0] + more, path=data_src,
                         hint="every predicted case needs a reference and a mask")
    if not pairs:
        ids = ", ".join(case.id for case in cases[:3]) + (", ..." if len(cases) > 3 else "")
        raise InputError(f"no prediction named after a case of {data_src} ({ids})", path=pred_dir,
                         hint=f"name predictions <case>.nii.gz or <case>/{modality}.nii.gz")
    return sorted(pairs, key=lambda pair: pair.case)


def _geometry(image) -> dict[str, tuple]:
    """Grid of a SimpleITK image or an ImageFileReader that has read the header."""
    return {"size": image.GetSize(), "spacing": image.GetSpacing(), "origin": image.GetOrigin(),
            "direction": image.GetDirection()}


def _compare_geometry(found: dict, expected: dict, name: str, path: Path, reference_path: Path) -> None:
    for key in expected:
        if key == "size":
            same = expected[key] == found[key]
        else:
            same = np.allclose(found[key], expected[key], rtol=0, atol=GEOMETRY_TOLERANCE)
        if not same:
            show = (lambda v: "x".join(str(i) for i in v)) if key == "size" else (
                lambda v: "(" + ", ".join(f"{i:g}" for i in v) + ")")
            raise InputError(f"{name} {key} {show(found[key])} differs from the reference's "
                             f"{show(expected[key])} ({reference_path})", path=path,
                             hint="resample onto the reference grid, or check that the files are of one case")


def check_same_grid(image, reference, name: str, path: Path, reference_path: Path) -> None:
    """InputError (one line) unless `image` lies on `reference`'s grid: size, spacing, origin, direction."""
    _compare_geometry(_geometry(image), _geometry(reference), name, path, reference_path)


def _header_geometry(path: Path) -> dict[str, tuple] | None:
    """Geometry from a volume file's header alone; None for a DICOM folder (checked once read)."""
    import SimpleITK as sitk

    if path.is_dir():
        return None
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise InputError("cannot read as an image", path=path) from None
    return _geometry(reader)


def check_pairs(pairs: list[CasePaths]) -> None:
    """Check every case up front from file headers (existence, readability, one grid), before any long work:
    one InputError naming the first problem and counting the others."""
    problems: list[InputError] = []
    for paths in pairs:
        try:
            files = {"reference": paths.reference, "prediction": paths.prediction, "mask": paths.mask,
                     "input": paths.input}
            for path in files.values():
                if path is not None and not path.exists():
                    raise InputError("no such file or folder", path=path)
            reference = _header_geometry(paths.reference)
            for name, path in files.items():
                geometry = None if path is None or name == "reference" else _header_geometry(path)
                if reference is not None and geometry is not None:
                    _compare_geometry(geometry, reference, name, path, paths.reference)
        except InputError as error:
            problems.append(error)
    if problems:
        first = problems[0]
        more = f"; {len(problems) - 1} more case(s) have problems too" if len(problems) > 1 else ""
        raise InputError(first.problem + more, path=first.path, hint=first.hint)


def _finite_array(image, path: Path) -> np.ndarray:
    import SimpleITK as sitk

    array = sitk.GetArrayFromImage(image).astype(np.float32)
    bad = int(array.size - np.isfinite(array).sum())
    if bad:
        raise InputError(f"holds {bad} non-finite values (NaN or infinity)", path=path)
    return array


def load_case_volumes(paths: CasePaths, modality: str,
                      mr_percentiles: tuple[float, float] | None = None) -> CaseVolumes:
    """Read a case, check that every volume lies on the reference grid, and bring the reference to the
    metric scale (`scales.normalise_reference`, MR with `mr_percentiles`, None for the default). Raises
    InputError naming the file at fault."""
    from diffma_cli.evaluation.scales import normalise_reference
    from diffma_cli.io.volumes import read_volume

    reference_image = read_volume(paths.reference)
    others = {"prediction": paths.prediction, "mask": paths.mask}
    if paths.input is not None:
        others["input"] = paths.input
    images = {}
    for name, path in others.items():
        images[name] = read_volume(path)
        check_same_grid(images[name], reference_image, name, path, paths.reference)
    mask = _finite_array(images["mask"], paths.mask) > 0
    if not mask.any():
        raise InputError("mask is empty (no voxel > 0)", path=paths.mask)
    try:
        reference = normalise_reference(_finite_array(reference_image, paths.reference), mask, modality,
                                        mr_percentiles)
    except InputError as error:
        raise InputError(error.problem, path=paths.reference, hint=error.hint) from None
    spacing_xyz = reference_image.GetSpacing()
    return CaseVolumes(
        case=paths.case,
        prediction=_finite_array(images["prediction"], paths.prediction),
        reference=reference,
        mask=mask,
        input=_finite_array(images["input"], paths.input) if "input" in images else None,
        spacing=(spacing_xyz[2], spacing_xyz[1], spacing_xyz[0]),
    )
