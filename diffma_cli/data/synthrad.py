"""SynthRAD2023-style case discovery and validation.

Layout (docs/data.md, docs/reference.md §5): `Task1/<anatomy>/<case id>/{ct,mr,mask}.<ext>` with `<ext>`
one of `.nii.gz`, `.nii` or `.mha` (SynthRAD2025 moved to `.mha`). A case id is the task digit, the anatomy
letter (B brain, P pelvis), the centre letter and three digits, e.g. `1BA001`; SynthRAD2025's region codes
(`1HNA001`, `1THA001`, `1ABA001`) are accepted too. `overview/` folders, hidden entries and loose files are
ignored.

Public interface (used by `prepare`, `eval` and `convert`; kept stable):

- `find_cases(src, anatomy=None) -> list[Case]`: every case under `src`, which may be the `Task1` folder,
  one anatomy folder or a single case folder; sorted by (anatomy, id). Paths of absent files are `None`;
  nothing is read. Raises `InputError` when `src` is missing or holds no case.
- `Case(id, anatomy, folder, ct, mr, mask)`: a frozen dataclass; `Case.to_dict()` is JSON-able.
- `check_case(case, needs=("ct", "mr", "mask")) -> list[str]`: problems found from the file headers only
  (missing or unreadable file, geometry mismatch) -- cheap, so all cases are checked up front.
- `load_case(case) -> (ct, mr, mask)` as `SimpleITK.Image`s after the full check (headers plus finite
  values and a non-empty mask); raises `CaseError` (an `InputError`) whose message names the case.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

from diffma_cli.errors import InputError

MODALITIES = ("ct", "mr", "mask")
# Looked for in this order; a case with the same modality in two formats is ambiguous (see check_case).
CASE_FILE_SUFFIXES = (".nii.gz", ".nii", ".mha")
IGNORED_FOLDERS = ("overview",)

# SynthRAD2023: task digit, B|P, centre letter, 3 digits. SynthRAD2025: HN|TH|AB in place of B|P.
CASE_ID = re.compile(r"^(?P<task>[12])(?P<region>B|P|HN|TH|AB)(?P<centre>[A-Z])(?P<number>\d{3})$")
ANATOMY_OF_REGION = {"B": "brain", "P": "pelvis", "HN": "head-neck", "TH": "thorax", "AB": "abdomen"}
# Geometry of the three volumes must agree to this tolerance (mm for spacing/origin, unitless direction):
# SynthRAD's files share one grid exactly; the tolerance only absorbs float32 header rounding.
GEOMETRY_TOLERANCE = 1e-3


class CaseError(InputError):
    """A case that cannot be used; the message starts with the case id."""

    def __init__(self, case_id: str, problem: str, *, path: str | Path | None = None):
        self.case_id = case_id
        self.detail = problem  # the problem without the case id, for reports that name the case themselves
        super().__init__(f"case {case_id}: {problem}", path=path)


@dataclass(frozen=True)
class Case:
    """One patient: its id, anatomy and the paths of its volumes (None where the file is absent)."""

    id: str
    anatomy: str
    folder: Path
    ct: Path | None
    mr: Path | None
    mask: Path | None

    @property
    def centre(self) -> str | None:
        """Centre letter of a SynthRAD id (A, B, C, ...), None for ids of another form."""
        match = CASE_ID.match(self.id)
        return match["centre"] if match else None

    def path(self, modality: str) -> Path | None:
        return getattr(self, modality)

    def to_dict(self) -> dict:
        record = asdict(self)
        return {key: (str(value) if isinstance(value, Path) else value) for key, value in record.items()}


def _modality_files(folder: Path, modality: str) -> list[Path]:
    return [folder / f"{modality}{suffix}" for suffix in CASE_FILE_SUFFIXES
            if (folder / f"{modality}{suffix}").is_file()]


def _is_case_folder(folder: Path) -> bool:
    if not folder.is_dir() or folder.name.startswith(".") or folder.name.lower() in IGNORED_FOLDERS:
        return False
    return bool(CASE_ID.match(folder.name)) or any(_modality_files(folder, m) for m in MODALITIES)


def _anatomy_of(folder: Path) -> str:
    match = CASE_ID.match(folder.name)
    if folder.parent.name.lower() in ANATOMY_OF_REGION.values():
        return folder.parent.name.lower()
    if match:
        return ANATOMY_OF_REGION[match["region"]]
    return folder.parent.name.lower()


def _case(folder: Path) -> Case:
    found = {m: _modality_files(folder, m) for m in MODALITIES}
    return Case(id=folder.name, anatomy=_anatomy_of(folder), folder=folder,
                **{m: (files[0] if files else None) for m, files in found.items()})


def find_cases(src: str | Path, anatomy: str | None = None) -> list[Case]:
    """All cases under `src` (Task1 folder, one anatomy folder, or one case folder), sorted by anatomy, id.

    `anatomy` ("brain", "pelvis", ...) keeps only that anatomy. Nothing is read; absent files are None.
    """
    src = Path(src)
    hint = "give the SynthRAD Task1 folder or one anatomy folder in it"
    if not src.exists():
        raise InputError("no such folder", path=src, hint=hint)
    if not src.is_dir():
        raise InputError("is not a folder", path=src, hint=hint)
    if _is_case_folder(src):
        folders = [src]
    else:
        folders = [child for child in sorted(src.iterdir()) if _is_case_folder(child)]
        if not folders:  # a Task1 folder: one level more (brain/, pelvis/)
            folders = [case for group in sorted(src.iterdir())
                       if group.is_dir() and not group.name.startswith(".")
                       and group.name.lower() not in IGNORED_FOLDERS
                       for case in sorted(group.iterdir()) if _is_case_folder(case)]
    cases = [_case(folder) for folder in folders]
    if anatomy is not None:
        found = sorted({case.anatomy for case in cases})
        cases = [case for case in cases if case.anatomy == anatomy]
        if not cases and found:
            raise InputError(f"holds no {anatomy} case (found: {', '.join(found)})", path=src,
                             hint="choose another --anatomy")
    if not cases:
        raise InputError("holds no case folder with ct/mr/mask volumes", path=src,
                         hint="expected <anatomy>/<id>/{ct,mr,mask}.nii.gz or .mha, "
                         "e.g. brain/1BA001/ct.nii.gz")
    # Ids are compared without letter case: 1BA001 and 1ba001 are one patient (and one folder on
    # case-insensitive file systems), who must not land in two splits.
    folded = [case.id.lower() for case in cases]
    duplicates = sorted({case.id for case in cases if folded.count(case.id.lower()) > 1})
    if duplicates:
        same = [case.id for case in cases if case.id.lower() == duplicates[0].lower()]
        names = " and ".join(sorted(set(same))) if len(set(same)) > 1 else duplicates[0]
        raise InputError(f"case id {names} appears in more than one folder (ids are compared without "
                         "letter case)", path=src, hint="case ids must be unique; give one anatomy folder")
    return sorted(cases, key=lambda case: (case.anatomy, case.id))


def _header(path: Path):
    """Geometry of a volume file from its header only: (size, spacing, origin, direction, dimension)."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return (reader.GetSize(), reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection(),
            reader.GetDimension(), reader.GetNumberOfComponents())


def _geometry_problem(name: str, reference: tuple, other: tuple, files: tuple[str, str]) -> str | None:
    labels = ("size", "spacing", "origin", "direction")
    for label, a, b in zip(labels, reference[:4], other[:4], strict=True):
        same = a == b if label == "size" else all(
            abs(x - y) <= GEOMETRY_TOLERANCE for x, y in zip(a, b, strict=True))
        if not same:
            fmt = (lambda v: "x".join(str(i) for i in v)) if label == "size" else (
                lambda v: "(" + ", ".join(f"{i:g}" for i in v) + ")")
            return f"{files[1]} {label} {fmt(b)} differs from {files[0]} {label} {fmt(a)}"
    return None


def check_case(case: Case, needs: tuple[str, ...] = MODALITIES) -> list[str]:
    """Problems visible from the headers: absent, ambiguous or unreadable files and mismatched geometry."""
    problems = []
    headers = {}
    for modality in needs:
        files = _modality_files(case.folder, modality)
        if not files:
            problems.append(f"{modality} is missing (expected {modality}.nii.gz or {modality}.mha)")
            continue
        if len(files) > 1:
            names = ", ".join(f.name for f in files)
            problems.append(f"{modality} exists in two formats ({names}); keep one")
            continue
        try:
            header = _header(files[0])
        except RuntimeError:
            problems.append(f"{files[0].name} cannot be read as an image")
            continue
        if header[4] != 3 or header[5] != 1:
            problems.append(f"{files[0].name} is not a 3-D single-channel volume")
            continue
        headers[modality] = (header, files[0].name)
    present = list(headers)
    for modality in present[1:]:
        problem = _geometry_problem(modality, headers[present[0]][0], headers[modality][0],
                                    (headers[present[0]][1], headers[modality][1]))
        if problem:
            problems.append(problem)
    return problems


def load_case(case: Case, needs: tuple[str, ...] = MODALITIES) -> dict:
    """Read and fully check a case: `{modality: SimpleITK.Image}`, or raise CaseError naming the problem."""
    import numpy as np
    import SimpleITK as sitk

    from diffma_cli.data.slicing import BODY_THRESHOLD_HU
    from diffma_cli.io.volumes import nifti_nonfinite_count, read_volume

    problems = check_case(case, needs)
    if problems:
        raise CaseError(case.id, problems[0], path=case.folder)
    images = {}
    for modality in needs:
        path = case.path(modality)
        try:
            image = read_volume(path, check_voxels=False)  # checked below, with the case's id
        except InputError:  # the header was readable, the voxel data is not (e.g. a truncated file)
            raise CaseError(case.id, f"{path.name} cannot be read as an image", path=case.folder) from None
        array = sitk.GetArrayViewFromImage(image)
        try:
            bad = int(np.size(array) - np.isfinite(array).sum()) or nifti_nonfinite_count(path)
        except (OSError, EOFError, zlib.error):
            raise CaseError(case.id, f"{path.name} is damaged (truncated or corrupt voxel data)",
                            path=case.folder) from None
        if bad:
            raise CaseError(case.id, f"{path.name} holds {bad} non-finite values (NaN or infinity)",
                            path=case.folder)
        if modality == "ct" and float(array.min()) >= BODY_THRESHOLD_HU:  # no air: not HU (see convert)
            raise CaseError(case.id, f"{path.name} does not look like a CT in Hounsfield units (values "
                            f"{float(array.min()):g} to {float(array.max()):g}, no air below "
                            f"{BODY_THRESHOLD_HU:g} HU; apply the rescale intercept, usually -1024)",
                            path=case.folder)
        if modality == "mask" and not array.any():
            raise CaseError(case.id, f"{path.name} is empty (no body voxel)", path=case.folder)
        images[modality] = image
    return images
