"""Files and folders for `diffma convert`: which volumes to convert, where each result goes, resuming.

INPUT is one of
- a volume file (any SimpleITK format) or a DICOM series folder -> OUTPUT is a volume file;
- a folder of volumes -> OUTPUT is a folder. Its cases are the volume files directly in it (case = file
  name without suffix), its subfolders that hold the run's source modality as `ct.<suffix>` (or
  `mr.<suffix>` for an MR -> CT run), SynthRAD's layout (case = folder name; a `mask.<suffix>` beside it is
  used as the body mask), and its subfolders that hold one DICOM series (case = folder name). Each case is
  written as `OUTPUT/<case><suffix>`, the input's suffix, a DICOM series case as the series `OUTPUT/<case>/`.

Output format: a volume file in the format its suffix names, or (`output_format="dicom"`, or "auto" with a
DICOM series folder in and an OUTPUT without a volume suffix) a DICOM series folder on the input's frame of
reference (diffma_cli.io.dicom_series); in folder mode `OUTPUT/<case>/`.

With --samples K > 1 the standard-deviation map goes beside its volume as `<name>_std<suffix>` (eval
ignores files not named after a case), or as the series folder `<name>_std`. Every file is written
atomically, and a volume file is read back before it gets its name. A folder run resumes: cases whose
outputs all exist (volume files: and read back as complete volumes) are skipped unless `overwrite`; a case
left half-done (one of its files missing or damaged) is redone, replacing its own leftover file.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from diffma_cli.convert.cohort import cohort_group, gather, split, this_share, wait_for_all
from diffma_cli.convert.options import SamplingOptions
from diffma_cli.errors import InputError, OutputError
from diffma_cli.io.atomic import check_output
from diffma_cli.io.volumes import (
    VOLUME_SUFFIXES,
    is_volume_file,
    read_volume,
    volume_file_problem,
    write_volume,
)

STD_SUFFIX = "_std"
# Written into OUTPUT by a folder run of several processes (torchrun).
SUMMARY = "convert-summary.json"
SUMMARY_FORMAT = "diffma-convert-summary/1"
OUTPUT_FORMATS = ("auto", "dicom")


@dataclass(frozen=True)
class Job:
    """One volume to convert: its name (case id), input, outputs and optional body mask file."""

    name: str
    input: Path
    output: Path
    std_output: Path | None
    body_mask: Path | None = None
    dicom: bool = False  # write DICOM series folders instead of volume files

    @property
    def outputs(self) -> list[Path]:
        return [self.output] + ([self.std_output] if self.std_output else [])


@dataclass
class ConvertResult:
    """What `convert_path` did: files written (by every process) and outputs skipped because they were
    already finished; this process's rank among `processes`, and the summary file rank 0 wrote (several
    processes only)."""

    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    rank: int = 0
    processes: int = 1
    summary: Path | None = None


def split_suffix(name: str) -> tuple[str, str]:
    """`1BA001.nii.gz` -> ("1BA001", ".nii.gz"); ("name", "") when no volume suffix matches."""
    for suffix in VOLUME_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)], name[-len(suffix):]
    return name, ""


def std_path(output: Path) -> Path:
    """Where the standard-deviation map of `output` goes: `<stem>_std<suffix>` beside it."""
    stem, suffix = split_suffix(output.name)
    return output.with_name(f"{stem}{STD_SUFFIX}{suffix}")


def _find_named(folder: Path, stem: str) -> Path | None:
    candidates = (folder / f"{stem}{suffix}" for suffix in VOLUME_SUFFIXES)
    found = [path for path in candidates if is_volume_file(path)]
    if len(found) > 1:
        names = ", ".join(path.name for path in found)
        raise InputError(f"holds {len(found)} '{stem}' volumes ({names})", path=folder,
                         hint="keep one per case folder")
    return found[0] if found else None


def _holds_dicom_series(folder: Path) -> bool:
    import SimpleITK as sitk

    return bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))


def folder_cases(folder: Path, source_modality: str) -> list[tuple[str, Path, Path | None]]:
    """(case, input volume, body mask or None) for the cases of a folder of volumes (module docstring)."""
    cases = []
    for entry in sorted(folder.iterdir()):
        if is_volume_file(entry):
            cases.append((split_suffix(entry.name)[0], entry, None))
        elif entry.is_dir() and not entry.name.startswith("."):
            volume = _find_named(entry, source_modality)
            if volume is not None:
                cases.append((entry.name, volume, _find_named(entry, "mask")))
            elif _holds_dicom_series(entry):
                cases.append((entry.name, entry, None))
    names = [name for name, _, _ in cases]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise InputError(f"case {duplicates[0]} appears twice (a file and a folder, or two suffixes)",
                         path=folder, hint="keep one volume per case")
    return cases


def plan_jobs(input_path: str | Path, output: str | Path, source_modality: str, members: int,
              body_mask: str | Path | None = None, output_format: str = "auto") -> tuple[list[Job], bool]:
    """The conversions INPUT -> OUTPUT asks for, and whether this is folder mode (module docstring).
    `members`: how many volumes each result combines (a standard-deviation map for more than one)."""
    input_path, output = Path(input_path), Path(output)
    if output_format not in OUTPUT_FORMATS:
        raise InputError(f"unknown output format {output_format!r}",
                         hint=f"choose one of {', '.join(OUTPUT_FORMATS)}")
    if not input_path.exists():
        raise InputError("no such file or folder", path=input_path)
    cases = folder_cases(input_path, source_modality) if input_path.is_dir() else []
    dicom = output_format == "dicom"
    if not cases:  # a volume file or a DICOM series folder
        stem, suffix = split_suffix(output.name)
        if dicom and suffix:
            raise InputError("a DICOM series is written into a folder, so the output must not have a volume "
                             "suffix", path=output, hint=f"name a folder, e.g. {stem}/")
        if not suffix and not dicom and input_path.is_dir():
            dicom = True  # a DICOM series in, a folder out: a DICOM series out
        if not suffix and not dicom:
            raise InputError("the output needs a volume suffix", path=output,
                             hint=f"name it e.g. {output.name}.nii.gz (any of {', '.join(VOLUME_SUFFIXES)}), "
                                  "or pass --output-format dicom for a DICOM series folder")
        std = std_path(output) if members > 1 else None
        mask = Path(body_mask) if body_mask is not None else None
        jobs = [Job(stem, input_path, output, std, mask, dicom)]
        refuse_overwriting_inputs(jobs)
        return jobs, False
    if body_mask is not None:
        raise InputError("--body-mask is for one volume; in a folder each case's mask.<suffix> is used",
                         path=body_mask)
    if output.exists() and not output.is_dir():
        raise InputError("the input is a folder of volumes, so the output must be a folder; this is a file",
                         path=output)
    if output.resolve() == input_path.resolve():
        raise InputError("the output folder is the input folder", path=output, hint="choose another folder")
    jobs = []
    for name, volume, mask in cases:
        series = dicom or volume.is_dir()  # a DICOM series case gives a DICOM series (auto)
        target = output / (name if series else f"{name}{split_suffix(volume.name)[1]}")
        jobs.append(Job(name, volume, target, std_path(target) if members > 1 else None, mask, series))
    refuse_overwriting_inputs(jobs)
    return jobs, True


def _same_file(one: Path, other: Path) -> bool:
    """Whether two paths name one file: the same path once links are resolved, or (hard links) the same
    inode."""
    if one.resolve() == other.resolve():
        return True
    try:
        return one.exists() and other.exists() and one.samefile(other)
    except OSError:
        return False


def refuse_overwriting_inputs(jobs: list[Job]) -> None:
    """InputError when an output (a volume or its `_std` companion) would replace an input or a body mask,
    directly, through a symbolic link or as a hard link: --overwrite replaces outputs, never inputs."""
    inputs = [path for job in jobs for path in (job.input, job.body_mask) if path is not None]
    for job in jobs:
        for output in job.outputs:
            for source in inputs:
                if _same_file(output, source):
                    what = "this output" if output == job.output else f"this output's {STD_SUFFIX} map"
                    raise InputError(f"{what} would replace the input {source}", path=job.output,
                                     hint="choose another output name; --overwrite never replaces inputs")


def convert_path(input_path: str | Path, output: str | Path, run_dir, options: SamplingOptions | None = None,
                 *, device: str = "auto", overwrite: bool = False, body_mask: str | Path | None = None,
                 mask: bool = False, output_format: str = "auto", progress: bool = True) -> ConvertResult:
    """Convert a volume file, DICOM series folder or folder of volumes with the run in `run_dir` (or the
    ensemble of runs in a list of run folders; sampling defaults from the first).

    `options`: `SamplingOptions` (what it leaves None comes from the first run's recipe). `mask`,
    `body_mask`: see `convert_volume` (a body-mask file is for one volume); a standard-deviation map is
    written when more than one volume is combined. `output_format`: "auto" (volume files; a DICOM series
    for a DICOM series in and an output without a volume suffix) or "dicom" (module docstring). Options,
    outputs and (for one volume) the input are checked before the models load: an existing output without
    `overwrite` raises OutputError (one volume) or is skipped (folder mode: resuming).
    """
    from diffma_cli.devices import resolve_device
    from diffma_cli.runs import read_run_info, read_run_recipe

    run_dirs = [Path(path) for path in ([run_dir] if isinstance(run_dir, (str, Path)) else run_dir)]
    if not run_dirs:
        raise InputError("no --model given")
    recipes = []
    for path in run_dirs:
        info = read_run_info(path)  # a clear error for a folder that is not a run, before anything else
        recipes.append(read_run_recipe(path, info))
    directions = sorted({recipe.data.direction for recipe in recipes})
    if len(directions) > 1:
        raise InputError(f"the runs convert different directions ({', '.join(directions)})",
                         hint="combine runs of one direction")
    options = (options or SamplingOptions()).resolved(recipes[0])
    jobs, folder_mode = plan_jobs(input_path, output, recipes[0].data.source, options.members(len(run_dirs)),
                                  body_mask, output_format)
    share = this_share()
    if share.distributed and not folder_mode:
        raise InputError(f"{share.world_size} processes were started for one volume", path=input_path,
                         hint="processes share a folder of cases; convert one volume without torchrun")
    result = ConvertResult(rank=share.rank, processes=share.world_size)
    started = time.time()
    with cohort_group(share):
        todo = _pending(jobs, folder_mode, overwrite, result)
        wait_for_all(share)  # every process has looked for finished cases before any writes one
        mine = split(todo, share.rank, share.world_size)
        done = {}
        if mine:
            where = str(resolve_device(device, share.local_rank))  # torchrun: this process's own GPU
            done = _convert_jobs(mine, folder_mode, run_dirs, where, result, options, overwrite=overwrite,
                                 mask=mask, progress=progress and share.rank == 0)
        if share.distributed:
            reports = gather({"rank": share.rank, "cases": done, "written": result.written}, share)
            result.written = [path for report in reports for path in report["written"]]
            if share.rank == 0:
                result.summary = _write_summary(Path(output), reports, result, time.time() - started)
    return result


def _convert_jobs(jobs: list[Job], folder_mode: bool, run_dirs: list[Path], device: str,
                  result: ConvertResult, options: SamplingOptions, *, overwrite: bool, mask: bool,
                  progress: bool) -> dict:
    """Load the runs on `device`, convert and write `jobs`; returns {case: seconds, device, files}."""
    from tqdm.auto import tqdm

    from diffma_cli.convert.models import load_models
    from diffma_cli.convert.pipeline import convert_volume

    first = None if folder_mode else _read(jobs[0])  # one volume: input errors before the models load
    ensemble = [load_models(path, device) for path in run_dirs]
    provenance = _provenance(run_dirs, ensemble, options)
    replace = overwrite or folder_mode
    data = ensemble[0].recipe.data
    modalities = (data.source, data.target)
    done = {}
    for job in tqdm(jobs, desc="volumes", unit="volume", disable=not (progress and folder_mode)):
        began = time.perf_counter()
        image, mask_image = first if first is not None else _read(job)
        generated, std = convert_volume(image, ensemble, options, body_mask=mask_image, mask=mask,
                                        progress=progress, source=job.input)
        files = []
        if std is not None:
            files.append(_write(std, job, job.std_output, replace, modalities, provenance, True))
        files.append(_write(generated, job, job.output, replace, modalities, provenance))
        result.written.extend(files)
        done[job.name] = {"seconds": round(time.perf_counter() - began, 2), "device": device,
                          "files": [str(path) for path in files]}
    return done


def _pending(jobs: list[Job], folder_mode: bool, overwrite: bool, result: ConvertResult) -> list[Job]:
    """The jobs still to do (finished cases of a folder go to result.skipped); refuses existing outputs."""
    todo = []
    for job in jobs:
        # A volume file counts as finished only if it reads back whole; a DICOM series folder (written
        # atomically as a whole) if it exists.
        finished = [path.is_dir() if job.dicom else volume_file_problem(path) is None for path in job.outputs]
        if folder_mode and not overwrite and all(finished):
            result.skipped.append(job.output)
            continue
        for path in job.outputs:
            # Folder mode: the leftover file of a half-done case is ours to replace.
            check_output(path, overwrite or (folder_mode and path.exists()))
            if not job.dicom and path.is_dir():
                raise OutputError("is a folder; the output is a volume file", path=path,
                                  hint="give a file name such as mr.nii.gz")
        todo.append(job)
    return todo


def _write_summary(output: Path, reports: list[dict], result: ConvertResult, seconds: float) -> Path:
    """OUTPUT/convert-summary.json of a run of several processes: who converted which case, in how long."""
    import json

    from diffma_cli import __version__
    from diffma_cli.io.atomic import atomic_file

    cases = {name: {"process": report["rank"], **case} for report in reports
             for name, case in report["cases"].items()}
    summary = {"format": SUMMARY_FORMAT, "diffma_version": __version__, "processes": len(reports),
               "seconds": round(seconds, 1), "converted": dict(sorted(cases.items())),
               "skipped": sorted(split_suffix(path.name)[0] for path in result.skipped)}
    path = output / SUMMARY
    with atomic_file(path, overwrite=True) as temporary:
        temporary.write_text(json.dumps(summary, indent=1), encoding="utf-8")
    return path


def _provenance(run_dirs, ensemble, options: SamplingOptions) -> tuple[str, str]:
    """What made a result, for DICOM descriptions: ("run (model) + ...", the sampling and combination)."""
    runs = " + ".join(f"{path.name} ({models.recipe.model.name})"
                      for path, models in zip(run_dirs, ensemble, strict=True))
    text = f"{options.sampler} {options.steps} steps, seed {options.seed}, {options.samples} sample(s)"
    if options.tta != "none":
        text += f", test-time augmentation {options.tta}"
    if options.members(len(ensemble)) > 1:
        text += f", {options.combine} of the members"
    return runs, text


def _write(image, job: Job, path: Path, overwrite: bool, modalities: tuple[str, str],
           provenance: tuple[str, str], std: bool = False) -> Path:
    """Write one result as a volume file or, for DICOM jobs, as a series on the input's frame of reference."""
    if not job.dicom:
        return write_volume(image, path, overwrite=overwrite)
    from diffma_cli import __version__
    from diffma_cli.io.dicom_series import source_tags, write_dicom_series

    source, target = (modality.upper() for modality in modalities)
    what = f"SYNTHETIC {target}" + (" STD" if std else "")
    model, sampling = provenance
    comments = (f"{what}: {'standard deviation of ' if std else ''}{target} generated from {source} by "
                f"diffma {__version__}, model {model}, {sampling}; not an acquired image. "
                + ("Values on the normalised MR scale [-1, 1]." if target == "MR" else "Values in HU."))
    return write_dicom_series(image, path, tags=source_tags(job.input), modality=target,
                              description=f"{what} diffma {__version__} {model}", comments=comments,
                              series_number=1001 if std else 1000, overwrite=overwrite)


def _read(job: Job):
    """(image, body mask image or None) of a job."""
    import SimpleITK as sitk

    image = read_volume(job.input)
    mask = read_volume(job.body_mask) if job.body_mask is not None else None
    if mask is not None and not (sitk.GetArrayViewFromImage(mask) > 0).any():
        raise InputError("the body mask is empty (no voxel > 0)", path=job.body_mask,
                         hint="give the body mask of this volume, or leave it out to find the body")
    return image, mask
