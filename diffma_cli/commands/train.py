"""`diffma train-vae`, `diffma train-embedder` and `diffma train` (library: diffma_cli.train.api).

Every command reads a recipe (`--recipe brain|pelvis|demo|PATH`), applies its typed options and then the
`--set section.key=value` overrides, and trains in one process or, under `torchrun`, in several.
"""

from __future__ import annotations

from pathlib import Path

import typer

from diffma_cli.errors import InputError

RECIPE_HELP = ("Recipe: brain, pelvis, pelvis-512, demo or a YAML file. Default: brain (with --resume: "
               "the run's own).")
SET_HELP = "Override any recipe key, e.g. --set training.lr=2e-4 (repeatable; values are read as YAML)."
DEVICE_HELP = "auto (CUDA if available), cpu, cuda or cuda:N. Under torchrun: each process's LOCAL_RANK GPU."


def _say(text: str) -> None:
    """Print once, from the main process of a torchrun job."""
    from diffma_cli.devices import is_main_process

    if is_main_process():
        typer.echo(text)


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
    from diffma_cli.devices import is_main_process
    from diffma_cli.runs import read_run_info
    from diffma_cli.train.api import train_vae as run
    from diffma_cli.train.settings import training_recipe

    resolved = training_recipe("vae", out, recipe, resume=resume, steps=steps, epochs=epochs,
                               batch_size=batch_size, sets=sets)
    folder = run(data, out, resolved, device=device, resume=resume, overwrite=overwrite)
    if not is_main_process():  # only the main process writes (and so may read) the run's files
        return
    info = read_run_info(folder)
    psnr = ", ".join(f"{m.upper()} {v:.2f} dB" for m, v in info.get("val_psnr_db", {}).items())
    typer.echo(f"wrote {folder}: AutoencoderKL after {info['steps']} steps; val reconstruction PSNR "
               f"{psnr or 'n/a (empty val split)'}; latent scale {info['scaling_factor']:.5g}")
    typer.echo(f"use it with: --set encoders.vae={folder}")


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
    from diffma_cli.train.settings import training_recipe

    resolved = training_recipe("embedder", out, recipe, resume=resume, steps=steps, epochs=epochs,
                               batch_size=batch_size, patch=patch, sets=sets)
    folder = run(data, out, resolved, device=device, resume=resume, overwrite=overwrite)
    _say(f"wrote {folder}/embedder.safetensors; train the backbone with: diffma train DATA -o RUN "
         f"--embedder {folder}")


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
    from diffma_cli.train.api import train_diffusion
    from diffma_cli.train.settings import training_recipe

    resolved = training_recipe("diffusion", out, recipe, resume=resume, steps=steps, epochs=epochs,
                               batch_size=batch_size, patch=patch, backbone=backbone, size=size, scan=scan,
                               condition=condition, sets=sets)
    if embedder is None and not resume:  # a resumed run uses its own copy
        raise InputError("--embedder is required", hint="give the run folder of `diffma train-embedder` "
                         "or an embedder weights file")
    folder = train_diffusion(data, out, resolved, embedder, device=device, resume=resume, overwrite=overwrite)
    _say(f"wrote {folder}: {resolved.model.name} EMA weights; convert with: diffma convert CT -o MR "
         f"--model {folder}")
