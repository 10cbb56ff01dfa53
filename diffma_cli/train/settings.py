"""The recipe a training runs with, from what its caller chose: the same rules for the command line and for
Python callers.

Precedence, most specific last: the named recipe (or, when resuming, the run's own recipe.yaml), then the
typed choices (steps, epochs, batch size, model name parts, scan, condition), then `section.key=value`
overrides (`--set`). `epochs` without `steps` clears the recipe's step count, so that the epochs count.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from diffma_cli.config import Recipe, apply_overrides, load_recipe
from diffma_cli.errors import InputError
from diffma_cli.runs import RECIPE, read_run_recipe

# Lower-case backbone names -> registry family prefixes (diffma_cli.models.MODEL_NAMES).
BACKBONES = {"diffma": "DiffMa", "dit": "DiT", "zigma": "ZigMa", "vim": "ViM", "vmamba": "VMamba",
             "emamba": "EMamba"}
# Where each training's schedule lives in a recipe.
SCHEDULES = {"vae": "vae.training", "embedder": "embedder.training", "diffusion": "training"}


def base_recipe(recipe: str | Path | None, run_dir: Path, resume: bool) -> Recipe:
    """The recipe file or name (default brain); when resuming without one (or with the run's own file), the
    run's recipe.yaml with its encoder paths read relative to the run folder."""
    run_dir = Path(run_dir)
    own = resume and (run_dir / RECIPE).is_file()
    if recipe is None or (own and Path(recipe).resolve() == (run_dir / RECIPE).resolve()):
        return read_run_recipe(run_dir) if own else load_recipe("brain")
    return load_recipe(recipe)


def schedule_overrides(kind: str, steps: int | None, epochs: int | None, batch_size: int | None) -> dict:
    """steps / epochs / global batch size as overrides of the `kind` training's section (None: unchanged)."""
    section = SCHEDULES[kind]
    typed = {f"{section}.steps": steps, f"{section}.epochs": epochs,
             f"{section}.global_batch_size": batch_size}
    if epochs is not None and steps is None:
        typed[f"{section}.steps"] = 0  # steps > 0 would take precedence over the epochs asked for
    return typed


def model_name(current: str, backbone: str | None, size: str | None, patch: int | None) -> str | None:
    """The registry name from a backbone family, size and patch, the parts not given taken from `current`
    (e.g. "DiffMa-B/2"); None when none is given. InputError names the sizes a family comes in."""
    if backbone is None and size is None and patch is None:
        return None
    from diffma_cli.models import MODEL_NAMES

    family, _, rest = current.partition("-")
    current_size, _, current_patch = rest.partition("/")
    if backbone is not None:
        if backbone.lower() not in BACKBONES:
            raise InputError(f"--backbone {backbone!r} is not one of: {', '.join(BACKBONES)}")
        family = BACKBONES[backbone.lower()]
    name = f"{family}-{size or current_size}/{patch or current_patch}"
    if name not in MODEL_NAMES:
        sizes = sorted({n.split("-")[1] for n in MODEL_NAMES if n.startswith(family + "-")})
        raise InputError(f"there is no model {name}",
                         hint=f"{family} comes in {', '.join(sizes)} (name-size/patch)")
    return name


def training_recipe(kind: str, run_dir: str | Path, recipe: str | Path | None = None, *, resume: bool = False,
                    steps: int | None = None, epochs: int | None = None, batch_size: int | None = None,
                    patch: int | None = None, backbone: str | None = None, size: str | None = None,
                    scan: str | None = None, condition: str | None = None,
                    sets: Sequence[str] = ()) -> Recipe:
    """The resolved recipe of a `kind` ("vae", "embedder" or "diffusion") training into `run_dir`.

    `patch` sets the embedder's patch size for "embedder" and the backbone's for "diffusion"; `backbone`,
    `size`, `scan` and `condition` are the backbone's (diffusion only). Unknown values are InputErrors.
    """
    from diffma_cli.config import SCANS
    from diffma_cli.models.conditioning import CONDITIONS

    if kind not in SCHEDULES:
        raise ValueError(f"unknown training {kind!r}; one of {', '.join(SCHEDULES)}")
    if kind != "diffusion" and any(value is not None for value in (backbone, size, scan, condition)):
        raise ValueError("backbone, size, scan and condition belong to the diffusion training")
    if scan is not None and scan not in SCANS:
        raise InputError(f"--scan {scan!r} is not one of: {', '.join(SCANS)}")
    if condition is not None and condition not in CONDITIONS:
        raise InputError(f"--condition {condition!r} is not one of: {', '.join(CONDITIONS)}")
    typed = schedule_overrides(kind, steps, epochs, batch_size)
    if kind == "embedder":
        typed["embedder.patch_size"] = patch
    if kind == "diffusion":
        typed.update({"model.scan": scan, "model.condition": condition})
    resolved = base_recipe(recipe, Path(run_dir), resume)
    resolved = apply_overrides(resolved, {key: value for key, value in typed.items() if value is not None})
    resolved = apply_overrides(resolved, list(sets))
    if kind == "diffusion":
        name = model_name(resolved.model.name, backbone, size, patch)
        if name is not None:
            resolved = apply_overrides(resolved, {"model.name": name})
    return resolved
