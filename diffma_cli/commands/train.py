"""`diffma train-vae`, `diffma train-embedder` and `diffma train` (library: diffma_cli.train.api).

Every command reads a recipe (`--recipe brain|pelvis|demo|PATH`), applies its typed options and then the
`--set section.key=value` overrides, and trains in one process or, under `torchrun`, in several.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

from diffma_cli.errors import InputError

# Lower-case --backbone values -> registry family prefixes (diffma_cli.models.MODEL_NAMES).
BACKBONES = {"diffma": "DiffMa", "dit": "DiT", "zigma": "ZigMa", "vim": "ViM", "vmamba": "VMamba",
             "emamba": "EMamba"}
SCANS = ("released", "spiral")

RECIPE_HELP = ("Recipe: brain, pelvis, pelvis-512, demo or a YAML file. Default: brain (with --resume: "
               "the run's own).")
SET_HELP = "Override any recipe key, e.g. --set training.lr=2e-4 (repeatable; values are read as YAML)."
DEVICE_HELP = "auto (CUDA if available), cpu, cuda or cuda:N. Under torchrun: each process's LOCAL_RANK GPU."


def _is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"


def _say(text: str) -> None:
    if _is_main_process():
        typer.echo(text)


def _resolve_recipe(recipe: str | None, run_dir: Path, resume: bool, typed: dict, sets: list[str]):
    """Recipe file or name (default brain; the run's recipe.yaml when resuming), then typed options,
    then --set overrides (the most specific wins)."""
    from diffma_cli.config import apply_overrides, load_recipe
    from diffma_cli.train.run_folder import RECIPE, read_run_recipe

    own = resume and (run_dir / RECIPE).is_file()
    if recipe is None or (own and Path(recipe).resolve() == (run_dir / RECIPE).resolve()):
        # the run's own recipe, with its encoder paths read relative to the run folder
        resolved = read_run_recipe(run_dir) if own else load_recipe("brain")
    else:
        resolved = load_recipe(recipe)
    resolved = apply_overrides(resolved, {key: value for key, value in typed.items() if value is not None})
    return apply_overrides(resolved, sets)


def _schedule(section: str, steps: int | None, epochs: int | None, batch_size: int | None) -> dict:
    """--steps / --epochs / --batch-size as overrides of `section` (--epochs alone clears steps)."""
    typed = {f"{section}.steps": steps, f"{section}.epochs": epochs,
             f"{section}.global_batch_size": batch_size}
    if epochs is not None and steps is None:
        typed[f"{section}.steps"] = 0
    return typed


def train_vae(
    data: Path = typer.Argument(..., help="Prepared data folder (output of `diffma prepare`)."),
    out: Path = typer.Option(..., "-o", "--out", help="VAE folder to create (a diffusers AutoencoderKL "
                             "folder that is also a run folder)."),
    recipe: str | None = typer.Option(None, "--recipe", help=RECIPE_HELP),
    sets: list[str] = typer.Option([], "--set", help=SET_HELP),
    steps: int | None = typer.Option(None, "--steps", min=1, help="Optimiser steps (overrides epochs)."),
    epochs: int | None = typer.Option(None, "--epochs", min=1, help="Epochs over the CT and MR slices."),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1, help="Global batch size (images)."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in OUT from its last checkpoint "
                                "(the model cannot change)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Delete the run in OUT and start again."),
) -> None:
    """Train a small VAE (diffusers AutoencoderKL, 8x downsampling, 4 latent channels) on CT and MR slices.

    It replaces the Stable Diffusion VAE where that cannot be downloaded.
    Reports the reconstruction PSNR on the val split.
    Pass the folder as the VAE of later steps: --set encoders.vae=VAE_DIR.

    Examples:

      diffma train-vae DATA -o vae

      diffma train-vae DATA -o vae --recipe demo --steps 200
    """
    from diffma_cli.train.api import train_vae as run

    typed = _schedule("vae.training", steps, epochs, batch_size)
    resolved = _resolve_recipe(recipe, out, resume, typed, sets)
    folder = run(data, out, resolved, device=device, resume=resume, overwrite=overwrite)
    if _is_main_process():
        from diffma_cli.train.run_folder import read_run_info

        info = read_run_info(folder)
        psnr = ", ".join(f"{m.upper()} {v:.2f} dB" for m, v in info.get("val_psnr_db", {}).items())
        _say(f"wrote {folder}: AutoencoderKL after {info['steps']} steps; val reconstruction PSNR "
             f"{psnr or 'n/a (empty val split)'}; latent scale {info['scaling_factor']:.5g}")
        _say(f"use it with: --set encoders.vae={folder}")


def train_embedder(
    data: Path = typer.Argument(..., help="Prepared data folder (output of `diffma prepare`)."),
    out: Path = typer.Option(..., "-o", "--out", help="Run folder to create."),
    recipe: str | None = typer.Option(None, "--recipe", help=RECIPE_HELP),
    patch: int | None = typer.Option(None, "--patch", help="Patch size (2, 4 or 7): must equal the "
                                     "backbone's. Default: the recipe's embedder.patch_size."),
    sets: list[str] = typer.Option([], "--set", help=SET_HELP),
    steps: int | None = typer.Option(None, "--steps", min=1, help="Optimiser steps (overrides epochs)."),
    epochs: int | None = typer.Option(None, "--epochs", min=1, help="Epochs over the train slices."),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1, help="Global batch size (slices); "
                                          "InfoNCE contrasts each slice with the others of the batch."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in OUT from its last checkpoint "
                                "(the model cannot change)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Delete the run in OUT and start again."),
) -> None:
    """Pre-train the CT Vision Embedder with InfoNCE (tau 0.07) on VAE latents of the CT slices.

    The frozen encoders' outputs are cached in DATA/latent_cache/ on first use.
    Several GPUs: torchrun --standalone --nproc-per-node 2 -m diffma_cli train-embedder ...

    Examples:

      diffma train-embedder DATA -o runs/embedder --recipe brain

      diffma train-embedder DATA -o runs/embedder --recipe demo --set encoders.vae=vae
    """
    from diffma_cli.train.api import train_embedder as run

    typed = {**_schedule("embedder.training", steps, epochs, batch_size), "embedder.patch_size": patch}
    resolved = _resolve_recipe(recipe, out, resume, typed, sets)
    folder = run(data, out, resolved, device=device, resume=resume, overwrite=overwrite)
    _say(f"wrote {folder}/embedder.safetensors; train the backbone with: diffma train DATA -o RUN "
         f"--embedder {folder}")


def _model_name(current: str, backbone: str | None, size: str | None, patch: int | None) -> str | None:
    """The registry name from --backbone/--size/--patch, the rest taken from the recipe's model.name."""
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


def train(
    data: Path = typer.Argument(..., help="Prepared data folder (output of `diffma prepare`)."),
    out: Path = typer.Option(..., "-o", "--out", help="Run folder to create (what `convert --model` takes)."),
    embedder: Path | None = typer.Option(None, "--embedder", help="The frozen CT Vision Embedder: a "
                                         "`train-embedder` run folder, a diffma .safetensors file or a "
                                         "released .pt (e.g. brain_patch_size_2.pt). With --resume: the "
                                         "run's own copy."),
    recipe: str | None = typer.Option(None, "--recipe", help=RECIPE_HELP),
    size: str | None = typer.Option(None, "--size", help="Model size: S, B, L, XL, XXL for DiffMa (the "
                                    "baselines also have BL, SB). Default: from the recipe's model.name."),
    patch: int | None = typer.Option(None, "--patch", help="Patch size: 2, 4 or 7."),
    backbone: str | None = typer.Option(None, "--backbone", help="diffma (default), or a baseline of the "
                                        "paper: dit, zigma, vim, vmamba, emamba."),
    scan: str | None = typer.Option(None, "--scan", help="DiffMa scan order: spiral (the paper's spiral; "
                                    "default for new models) or released (the released code's order)."),
    condition: str | None = typer.Option(None, "--condition", help="How the CT reaches the backbone: "
                                         "latent+tokens (the recipes' default, the mode that follows the CT "
                                         "best, docs/quality.md), latent (the CT latent as input channels), "
                                         "tokens (the paper's Eq. 6: embedder tokens per token) or released "
                                         "(the released code's token mean, for its checkpoints)."),
    sets: list[str] = typer.Option([], "--set", help=SET_HELP),
    steps: int | None = typer.Option(None, "--steps", min=1, help="Optimiser steps (overrides epochs)."),
    epochs: int | None = typer.Option(None, "--epochs", min=1, help="Epochs over the train slices."),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1, help="Global batch size (slices "
                                          "per optimiser step over all GPUs and accumulation steps)."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in OUT from its last checkpoint "
                                "(the model cannot change)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Delete the run in OUT and start again."),
) -> None:
    """Train the DiffMa diffusion backbone (or a baseline) to turn CT into MR latents.

    Trains on cached VAE latents, conditioned on the frozen embedder's tokens and soft mask.
    Saves EMA weights, the resolved recipe and a copy of the embedder in OUT:
    `diffma convert --model OUT` needs only that folder.
    Every training.preview_every steps (default 5000; 0 = off) it writes OUT/previews/step-N.png
    (CT | generated | MR of four fixed val slices) and OUT/previews/loss.png.
    Several GPUs: torchrun --standalone --nproc-per-node 4 -m diffma_cli train DATA -o RUN ...

    Examples:

      diffma train DATA -o runs/brain-B2 --embedder runs/embedder --size B --patch 2

      diffma train DATA -o runs/dit --embedder runs/embedder --backbone dit --set training.lr=2e-4

      diffma train DATA -o runs/brain-B2 --resume --steps 200000
    """
    from diffma_cli.models.conditioning import CONDITIONS
    from diffma_cli.train.api import train_diffusion

    if scan is not None and scan not in SCANS:
        raise InputError(f"--scan {scan!r} is not one of: {', '.join(SCANS)}")
    if condition is not None and condition not in CONDITIONS:
        raise InputError(f"--condition {condition!r} is not one of: {', '.join(CONDITIONS)}")
    typed = {**_schedule("training", steps, epochs, batch_size), "model.scan": scan,
             "model.condition": condition}
    resolved = _resolve_recipe(recipe, out, resume, typed, sets)
    name = _model_name(resolved.model.name, backbone, size, patch)
    if name is not None:
        from diffma_cli.config import apply_overrides

        resolved = apply_overrides(resolved, {"model.name": name})
    if embedder is None and not resume:  # a resumed run uses its own copy
        raise InputError("--embedder is required", hint="give the run folder of `diffma train-embedder` "
                         "or an embedder weights file")
    folder = train_diffusion(data, out, resolved, embedder, device=device, resume=resume, overwrite=overwrite)
    _say(f"wrote {folder}: {resolved.model.name} EMA weights; convert with: diffma convert CT -o MR "
         f"--model {folder}")
