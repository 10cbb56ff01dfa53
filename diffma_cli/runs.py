"""Run folders: their layout, and reading them back (`load_run` is what `diffma convert --model RUN` reads).

A run folder describes itself (docs/training.md lists its files):

    recipe.yaml            the resolved recipe (after --recipe, options and --set overrides)
    run.json               what was trained: kind, model config, data set and manifest, encoder identities,
                           embedder reference, world size, throughput, whether it finished
    log.jsonl              one JSON line per logged step (step, epoch, loss, images/s, ...)
    checkpoints/step-N/    resumable training state (see train/checkpoint.py)
    backbone.safetensors   diffusion runs: the EMA backbone (diffma weights file, config in its metadata)
    embedder.safetensors   embedder runs: the EMA embedder; diffusion runs: a copy of the embedder used

A run folder can be moved or copied: recipe.yaml names local encoder folders and files relative to the run
folder (hub ids and "tiny" stay as they are), run.json also keeps their absolute paths, and
`read_run_recipe` resolves them from the run folder, whatever directory a command runs in.

The writing side (checks before a run, recipe.yaml and run.json at its start and end) is
diffma_cli/train/run_folder.py; inference needs only this module.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from diffma_cli.config import Recipe, load_recipe
from diffma_cli.errors import InputError

RUN_INFO = "run.json"
RECIPE = "recipe.yaml"
BACKBONE = "backbone.safetensors"
EMBEDDER = "embedder.safetensors"


def read_run_info(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise InputError("no such run folder", path=path, hint="give the folder written by `diffma train`")
    if not path.is_dir():
        raise InputError("is a file, not a run folder", path=path,
                         hint="give the folder written by `diffma train` (it holds this file's weights, "
                              "recipe.yaml and run.json)")
    try:
        return json.loads((path / RUN_INFO).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError("is not a diffma run folder (no run.json)", path=path,
                         hint="give the folder written by `diffma train`") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"run.json is damaged ({error})", path=path) from None


ENCODER_KEYS = ("vae", "clip")


def _local(source: str) -> Path | None:
    """The local folder or file an encoder source names (absolute), or None for "tiny", "none" and hub ids."""
    if source in ("tiny", "none"):
        return None
    path = Path(source).expanduser()
    return path.resolve() if path.exists() else None


def local_encoder_paths(recipe: Recipe) -> dict:
    """{"vae": "/abs/path", ...} for the encoders that are local folders or files."""
    found = {key: _local(getattr(recipe.encoders, key)) for key in ENCODER_KEYS}
    return {key: str(path) for key, path in found.items() if path is not None}


def read_run_recipe(run_dir: str | Path, info: dict | None = None) -> Recipe:
    """A run's recipe.yaml with its local encoder paths resolved: relative to the run folder first, then
    the absolute path recorded at the start (run.json `encoder_paths`: a run copied elsewhere on the same
    machine), then as written (runs from before paths were stored relative to the run folder)."""
    from diffma_cli.config import apply_overrides

    run_dir = Path(run_dir)
    recipe = load_recipe(run_dir / RECIPE)
    recorded = (info if info is not None else _info_or_empty(run_dir)).get("encoder_paths") or {}
    changes = {}
    for key in ENCODER_KEYS:
        source = getattr(recipe.encoders, key)
        candidates = [run_dir / source] if not Path(source).is_absolute() else []
        candidates += [Path(recorded[key])] if key in recorded else []
        found = next((path for path in candidates if path.exists()), None)
        if found is not None:
            changes[f"encoders.{key}"] = str(found.resolve())
        elif key in recorded and not Path(source).expanduser().exists():
            raise InputError(f"the run's {key.upper()} is not found at {source} (relative to the run folder) "
                             f"nor at {recorded[key]}", path=run_dir,
                             hint=f"put the {key.upper()} folder back, or set encoders.{key} in "
                                  f"{run_dir / RECIPE} to where it is now")
    return apply_overrides(recipe, changes) if changes else recipe


def _info_or_empty(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / RUN_INFO).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


@dataclass
class LoadedRun:
    """A finished diffusion run, ready for sampling: models in eval mode on the CPU."""

    path: Path
    recipe: Recipe
    info: dict
    backbone: object
    embedder: object


def load_run(path: str | Path) -> LoadedRun:
    """Read a run folder written by `diffma train`: resolved recipe, EMA backbone and embedder.

    The frozen encoders are named by `recipe.encoders` (and identified in `info["encoders"]`).
    Raises InputError when the folder is not a diffusion run or its training did not finish (run.json
    `finished`).
    """
    from diffma_cli.weights import load_model

    path = Path(path)
    if not path.is_dir():
        raise InputError("no such run folder", path=path)
    info = read_run_info(path)
    if info.get("kind") != "diffusion":
        raise InputError(f"is a {info.get('kind')} run, not a diffusion run", path=path,
                         hint="give the folder written by `diffma train`")
    # A killed first run has no backbone yet; a killed resumed run still holds the earlier one, so the
    # `finished` flag (set last, after the weights are written) is what says the weights are final.
    if info.get("finished") and not (path / BACKBONE).is_file():
        raise InputError(f"is a finished run whose {BACKBONE} is missing", path=path,
                         hint="restore the file from where the run was copied from; --resume cannot "
                              "recreate it")
    if not (path / BACKBONE).is_file() or not info.get("finished"):
        raise InputError("is an unfinished run: its training stopped before the last step", path=path,
                         hint="continue it with `diffma train DATA -o RUN --resume`")
    recipe = read_run_recipe(path, info)
    backbone, embedder = load_model(path / BACKBONE), load_model(path / EMBEDDER)
    check_parts_fit(path, recipe, backbone.config, embedder.config)
    return LoadedRun(path=path, recipe=recipe, info=info, backbone=backbone, embedder=embedder)


def check_parts_fit(path: Path, recipe: Recipe, backbone: dict, embedder: dict) -> None:
    """InputError unless the backbone takes the embedder's tokens (same patch, width and latent side) and
    the latents of the recipe's slices (image_size / 8), so that a run folder whose files were swapped
    fails here with one line instead of deep inside sampling."""
    def shape(config: dict) -> str:
        return (f"{config['name']}: patch {config['patch_size']}, width {config['hidden_size']}, "
                f"latent {config['input_size']}")

    hint = "the run's files do not belong together: restore them or train again"
    if any(backbone[key] != embedder[key] for key in ("patch_size", "hidden_size", "input_size")):
        raise InputError(f"{BACKBONE} ({shape(backbone)}) does not fit {EMBEDDER} ({shape(embedder)})",
                         path=path, hint=hint)
    if backbone["input_size"] != recipe.data.image_size // 8:
        raise InputError(f"{BACKBONE} ({shape(backbone)}) does not take the latents of the recipe's "
                         f"{recipe.data.image_size}² slices ({recipe.data.image_size // 8}²)", path=path,
                         hint=hint)


def embedder_file(reference: str | Path) -> Path:
    """The embedder weights named by `--embedder`: a run folder (its embedder.safetensors) or a file
    (one of ours or a released .pt checkpoint such as pretrain_ct_vision_embedder/brain_patch_size_2.pt)."""
    reference = Path(reference)
    if reference.is_dir():
        candidate = reference / EMBEDDER
        if not candidate.is_file():
            raise InputError(f"has no {EMBEDDER}", path=reference,
                             hint="give a finished `diffma train-embedder` run folder or a weights file")
        return candidate
    if not reference.is_file():
        raise InputError("no such embedder run folder or weights file", path=reference,
                         hint="train one with `diffma train-embedder DATA -o RUN` and pass RUN")
    return reference
