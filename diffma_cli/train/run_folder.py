"""Run folders as training writes them: checks before a run, recipe.yaml and run.json at its start and end.

The layout and the reading side (`load_run`, `read_run_info`, `read_run_recipe`, the file names) are
diffma_cli/runs.py, which inference uses without importing train/.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from diffma_cli.config import Recipe, save_recipe
from diffma_cli.errors import InputError, OutputError
from diffma_cli.io.atomic import atomic_file, check_output
from diffma_cli.runs import RECIPE, RUN_INFO, local_encoder_paths, read_run_info


def prepare_run_folder(path: str | Path, *, overwrite: bool, resume: bool, create: bool = True) -> Path:
    """Check that `path` may be used as a run folder and (if `create`) make it ready.

    New (or empty) folder: created. Existing folder: needs `resume` (continue it) or `overwrite` (start
    again; the old contents are deleted, which is refused for a non-empty folder that is not a run
    folder). Call the check on every process (same answer everywhere) and `create` on rank 0 only.
    """
    path = Path(path)
    if resume and overwrite:
        raise InputError("--resume and --overwrite exclude each other",
                         hint="--resume continues the run, --overwrite starts it again")
    if resume:
        if not (path / RUN_INFO).is_file():
            raise InputError("is not a run folder to resume (no run.json)", path=path,
                             hint="start a new run without --resume")
        return path
    if path.exists() and not (path.is_dir() and not any(path.iterdir())):  # an empty folder is as new
        if not overwrite:
            raise OutputError("already exists", path=path,
                              hint="pass --resume to continue that run or --overwrite to start it again")
        if path.is_dir() and any(path.iterdir()) and not (path / RUN_INFO).is_file():
            raise OutputError("exists and is not a run folder; refusing to delete it", path=path,
                              hint="choose another output folder")
    check_output(path, overwrite=True)
    if create:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        path.mkdir(parents=True)
    return path


def write_json(path: Path, values: dict) -> None:
    from diffma_cli.train.run_log import finite_or_null

    text = json.dumps(finite_or_null(values), indent=1, sort_keys=True, default=str, allow_nan=False)
    with atomic_file(path, overwrite=True) as temporary:
        temporary.write_text(text + "\n", encoding="utf-8")


def start_run(path: Path, recipe: Recipe, info: dict, *, resume: bool) -> dict:
    """Write recipe.yaml and run.json for a new run (rank 0); on resume, keep the first start's record."""
    if resume:
        previous = read_run_info(path)
        previous.setdefault("resumed", []).append(time.strftime("%Y-%m-%dT%H:%M:%S"))
        previous["finished"] = False
        write_json(path / RUN_INFO, previous)
        return previous
    save_run_recipe(recipe, path)
    info = {**info, "encoder_paths": local_encoder_paths(recipe),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "finished": False}
    write_json(path / RUN_INFO, info)
    return info


def save_run_recipe(recipe: Recipe, run_dir: Path) -> None:
    """Write recipe.yaml with local encoder paths made relative to the run folder ("./x" or "../x"), so
    that the run reads the same encoders from any working directory and after moving it together with
    them."""
    from diffma_cli.config import apply_overrides

    changes = {}
    for key, path in local_encoder_paths(recipe).items():
        relative = os.path.relpath(path, Path(run_dir).resolve())
        changes[f"encoders.{key}"] = relative if relative.startswith(".") else f"./{relative}"
    save_recipe(apply_overrides(recipe, changes) if changes else recipe, Path(run_dir) / RECIPE)


def finish_run(path: Path, info: dict, **results) -> dict:
    info = {**info, **results, "finished": True, "ended": time.strftime("%Y-%m-%dT%H:%M:%S")}
    write_json(path / RUN_INFO, info)
    return info
