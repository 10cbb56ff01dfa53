"""SynthRAD-style volumes -> normalised 224² axial slice pairs split by patient (the library side of
`diffma prepare`).

Output (written to a temporary folder renamed at the end; docs/data.md):

    DATA/manifest.json               splits, per-case geometry/normalisation/slicing records, options, skipped
    DATA/cases/<id>/ct.npy           float16 (n, 224, 224), CT in [-1, 1]
    DATA/cases/<id>/mr.npy           float16 (n, 224, 224), MR in [-1, 1]
    DATA/cases/<id>/mask.npy         uint8   (n, 224, 224), body mask in {0, 1}

Row k of a case's arrays is axial slice `manifest["cases"][id]["slicing"]["slices"][k]` of its volume.
A bad case stops the run with a `CaseError` naming it (nothing is written) unless `skip_bad`, which leaves
it out and records it under `manifest["skipped"]`.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from diffma_cli.data.normalise import CT_WINDOW_HU, MR_PERCENTILES
from diffma_cli.data.orientation import CANONICAL
from diffma_cli.data.slicing import SLICE_SIZE
from diffma_cli.data.splits import DEFAULT_FRACTIONS, SPLITS
from diffma_cli.errors import InputError

MANIFEST_FORMAT = "diffma-prepared/1"
# Stored dtypes: float16 keeps ~3 significant digits, far below the noise of either modality, at half the
# bytes of float32; the mask is exact in uint8.
STORED_DTYPES = {"ct": np.float16, "mr": np.float16, "mask": np.uint8}
# Value outside the body after normalisation: -1 is air for CT (window floor) and MR (dark background).
FILL = {"ct": -1.0, "mr": -1.0, "mask": 0.0}


@dataclass
class PrepareOptions:
    """Everything `prepare` can be told; stored in the manifest as "options"."""

    anatomy: str | None = None
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS
    seed: int = 0
    split_file: str | None = None
    ct_window: tuple[float, float] = CT_WINDOW_HU
    mr_percentiles: tuple[float, float] = MR_PERCENTILES
    size: int = SLICE_SIZE
    orientation: str = CANONICAL  # volumes are reoriented to this before slicing (data/orientation.py)
    workers: int = 1
    skip_bad: bool = False


def prepare_case(case, out: Path, options: PrepareOptions) -> dict:
    """Load, check, normalise and slice one case; write its arrays under out/cases/<id>/.

    Returns its manifest record, or {"id", "problem"} for a bad case (CaseError); never raises for data.
    """
    import SimpleITK as sitk

    from diffma_cli.data.normalise import ct_to_unit, mr_scaling, mr_to_unit
    from diffma_cli.data.orientation import orientation_of, reorient
    from diffma_cli.data.slicing import plan_slicing, slice_volume
    from diffma_cli.data.synthrad import CaseError, load_case

    try:
        images = load_case(case)
    except CaseError as error:
        return {"id": case.id, "problem": error.detail}
    stored = orientation_of(images["ct"])
    # Slice in one axis layout whatever the files' (exact: axes permuted and flipped, never resampled).
    images = {modality: reorient(image, options.orientation) for modality, image in images.items()}
    ct_image = images["ct"]
    mask = sitk.GetArrayFromImage(images["mask"]) > 0
    mr = sitk.GetArrayFromImage(images["mr"])
    try:
        scaling = mr_scaling(mr, mask, options.mr_percentiles)
    except InputError as error:
        return {"id": case.id, "problem": error.problem}
    # The grid that was sliced (after reorientation) and the orientation the files were stored in.
    geometry = {"size_xyz": list(ct_image.GetSize()), "spacing_xyz": list(ct_image.GetSpacing()),
                "origin": list(ct_image.GetOrigin()), "direction": list(ct_image.GetDirection()),
                "stored_orientation": stored}
    record = plan_slicing(mask.shape, ct_image.GetSpacing(), mask, options.size, geometry)
    normalised = {"ct": ct_to_unit(sitk.GetArrayFromImage(ct_image), options.ct_window),
                  "mr": mr_to_unit(mr, scaling), "mask": mask.astype(np.float32)}
    del mr
    folder = out / "cases" / case.id
    folder.mkdir(parents=True)
    files = {}
    for modality, volume in normalised.items():
        interpolation = "nearest" if modality == "mask" else "linear"
        slices = slice_volume(volume, record, interpolation, FILL[modality])
        if modality == "mask":
            slices = np.rint(slices)
        np.save(folder / f"{modality}.npy", slices.astype(STORED_DTYPES[modality]))
        files[modality] = f"cases/{case.id}/{modality}.npy"
    return {"id": case.id, "anatomy": case.anatomy,
            "source": {m: str(Path(case.path(m)).absolute()) for m in ("ct", "mr", "mask")},
            "geometry": geometry,
            "normalisation": {"ct": {"window": [float(v) for v in options.ct_window]}, "mr": scaling},
            "slicing": record, "slices": len(record["slices"]), "files": files}


def _bad_cases_line(problems: dict[str, str]) -> str:
    first = next(iter(problems))
    line = f"case {first}: {problems[first]}"
    if len(problems) > 1:
        line += f" (and {len(problems) - 1} more bad case{'s' if len(problems) > 2 else ''}: " \
                + ", ".join(list(problems)[1:6]) + ("..." if len(problems) > 6 else "") + ")"
    return line


def _choose_cases(src, options: PrepareOptions):
    from diffma_cli.data.synthrad import find_cases

    cases = find_cases(src, options.anatomy)
    anatomies = sorted({case.anatomy for case in cases})
    if len(anatomies) > 1:
        raise InputError(f"holds cases of several anatomies ({', '.join(anatomies)})", path=src,
                         hint="choose one with --anatomy; a model is trained per anatomy")
    return cases, anatomies[0]


def _run_cases(cases, out: Path, options: PrepareOptions, progress: bool) -> list[dict]:
    """prepare_case over all cases (in worker processes if asked); bad cases come back as {"id", "problem"}
    records (the caller reports them all)."""
    from tqdm import tqdm

    results = []
    # disable=None: a bar only on a terminal, so logs and captured stderr hold just messages.
    bar = tqdm(total=len(cases), desc="prepare", unit="case", disable=None if progress else True)

    def collect(result):  # a bad case does not stop the others: every problem is reported at once
        results.append(result)
        bar.update()

    try:
        if options.workers <= 1:
            for case in cases:
                collect(prepare_case(case, out, options))
        else:
            with ProcessPoolExecutor(options.workers, mp_context=get_context("spawn")) as pool:
                pending = {pool.submit(prepare_case, case, out, options) for case in cases}
                try:
                    while pending:
                        done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                        for future in done:
                            collect(future.result())
                except BaseException:
                    for future in pending:
                        future.cancel()
                    raise
    finally:
        bar.close()
    return sorted(results, key=lambda result: result["id"])


def prepare(src: str | Path, out: str | Path, options: PrepareOptions | None = None, overwrite: bool = False,
            progress: bool = True) -> dict:
    """Prepare the cases under `src` into `out` (layout in the module docstring); returns the manifest."""
    from diffma_cli import __version__
    from diffma_cli.data.splits import read_split_file, split_cases
    from diffma_cli.data.synthrad import check_case
    from diffma_cli.io.atomic import atomic_dir, check_output

    options = options or PrepareOptions()
    check_output(out, overwrite)
    cases, anatomy = _choose_cases(src, options)
    # Header checks first (cheap): every problem is known before any slicing is done.
    problems = {case.id: found[0] for case in cases if (found := check_case(case))}
    if problems and not options.skip_bad:
        raise InputError(_bad_cases_line(problems),
                         hint="fix or remove them, or pass --skip-bad to leave bad cases out")
    good = [case for case in cases if case.id not in problems]
    if options.split_file:
        splits, unassigned = read_split_file(options.split_file, [case.id for case in cases])
    else:
        splits, unassigned = split_cases([case.id for case in good], options.fractions, options.seed), []
    wanted = {case_id for ids in splits.values() for case_id in ids}
    todo = [case for case in good if case.id in wanted]
    started = time.time()
    with atomic_dir(out, overwrite=overwrite) as temporary:
        results = _run_cases(todo, temporary, options, progress)
        problems.update({r["id"]: r["problem"] for r in results if "problem" in r})
        if problems and not options.skip_bad:
            raise InputError(_bad_cases_line(dict(sorted(problems.items()))),
                             hint="fix or remove them, or pass --skip-bad to leave bad cases out")
        records = {r["id"]: r for r in results if "problem" not in r}
        if not records:
            raise InputError("no usable case left after leaving out the bad ones", path=src,
                             hint=_bad_cases_line(problems) if problems else None)
        splits = {name: [i for i in splits[name] if i in records] for name in SPLITS}
        for name, ids in splits.items():
            for case_id in ids:
                records[case_id]["split"] = name
        manifest = {
            "format": MANIFEST_FORMAT, "diffma_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": round(time.time() - started, 1),
            "source": str(Path(src).absolute()), "anatomy": anatomy,
            "options": {**asdict(options), "fractions": list(options.fractions),
                        "ct_window": list(options.ct_window), "mr_percentiles": list(options.mr_percentiles)},
            "splits": splits,
            "slice_counts": {name: sum(records[i]["slices"] for i in ids) for name, ids in splits.items()},
            "cases": records,
            "skipped": [{"case": case_id, "problem": problem}
                        for case_id, problem in sorted(problems.items())],
            "unassigned": unassigned,
        }
        (temporary / "manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    return manifest
