"""Training entry points: the Python API behind `diffma train-vae`, `train-embedder` and `train`.

Each function runs in one process or in every process started by `torchrun` (DDP), writes its run folder
from rank 0 and returns the run folder's path. The same functions are what the CLI and the demo call.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from diffma_cli import __version__
from diffma_cli.config import Recipe, TrainingConfig, save_recipe
from diffma_cli.errors import InputError
from diffma_cli.train import run_folder
from diffma_cli.train.distributed import Processes, barrier, processes
from diffma_cli.train.loop import FitResult, fit


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def data_reference(data_dir: Path) -> dict:
    """Which prepared data set a run used: its folder and the fingerprint of its manifest."""
    from diffma_cli.data.dataset import MANIFEST

    manifest = Path(data_dir) / MANIFEST
    return {"path": str(Path(data_dir).resolve()), "manifest": MANIFEST,
            "manifest_sha256": file_sha256(manifest) if manifest.is_file() else None}


def open_slices(data_dir: Path, split: str):
    """The prepared 224x224 slices of one split (diffma_cli.data.dataset.PreparedSlices)."""
    from diffma_cli.data.dataset import PreparedSlices

    return PreparedSlices(data_dir, split)


def _train(kind: str, run_dir: str | Path, recipe: Recipe, settings: TrainingConfig, *,
           build: Callable[[Processes], object], export: Callable[[object, FitResult, Path], dict],
           info: Callable[[object], dict], device: str, resume: bool, overwrite: bool,
           progress: bool) -> Path:
    """What all trainings share: folder checks, processes, seeds, fit, export and run.json (rank 0)."""
    run_dir = Path(run_dir)
    with processes(device) as where:
        run_folder.prepare_run_folder(run_dir, overwrite=overwrite, resume=resume, create=False)
        barrier(where)  # every process has checked before rank 0 deletes anything
        if where.is_main and not resume:
            run_folder.prepare_run_folder(run_dir, overwrite=overwrite, resume=resume)
        if resume:
            previous = run_folder.read_run_info(run_dir)
            if previous.get("kind") != kind:
                raise InputError(f"is a {previous.get('kind')} run; cannot resume it as a {kind} run",
                                 path=run_dir)
        barrier(where)
        # The same initial weights on every process (DDP would also broadcast rank 0's).
        torch.manual_seed(settings.seed)
        task = build(where)
        record = None
        if where.is_main:
            record = run_folder.start_run(run_dir, recipe, {
                "kind": kind, "diffma_version": __version__, "command": sys.argv, **info(task),
                "world_size": where.world_size, "device": str(where.device)}, resume=resume)
            if resume:  # the resolved recipe now includes this session's overrides (e.g. more steps)
                save_recipe(recipe, run_dir / run_folder.RECIPE)
        result = fit(task, settings, run_dir, where, resume=resume, progress=progress, description=kind)
        if where.is_main:
            results = export(task, result, run_dir)
            run_folder.finish_run(run_dir, record, steps=result.state.step, epochs_done=result.state.epoch,
                                  final_loss=result.losses[-1] if result.losses else None,
                                  images_per_second=round(result.images_per_second, 3), **results)
        barrier(where)
    return run_dir


# ---------------------------------------------------------------- train-vae

def train_vae(data_dir: str | Path, out_dir: str | Path, recipe: Recipe, *, device: str = "auto",
              resume: bool = False, overwrite: bool = False, progress: bool = True) -> Path:
    """Train the small AutoencoderKL of `recipe.vae` on the train split's CT and MR slices.

    `out_dir` becomes a run folder that is also a diffusers AutoencoderKL folder (config.json,
    diffusion_pytorch_model.safetensors): pass it wherever a VAE is asked for (`encoders.vae`).
    run.json holds the reconstruction PSNR on the val split and the measured latent scale.
    """
    from diffma_cli.train.vae import SlicesOfBothModalities, VAETask, latent_std, reconstruction_psnr

    data_dir = Path(data_dir)

    def build(where: Processes) -> VAETask:
        return VAETask(recipe.vae, SlicesOfBothModalities(open_slices(data_dir, "train")),
                       recipe.data.image_size)

    def info(task: VAETask) -> dict:
        return {"data": data_reference(data_dir), "model": {"class": "AutoencoderKL",
                                                            **_plain(task.model.vae.config)}}

    def export(task: VAETask, result: FitResult, run_dir: Path) -> dict:
        vae = result.ema.vae
        device = next(vae.parameters()).device
        scale = 1.0 / latent_std(vae, task.dataset, device)
        vae.register_to_config(scaling_factor=scale)
        _save_pretrained(vae, run_dir)
        val = open_slices(data_dir, "val")
        psnr = reconstruction_psnr(vae, val, device) if len(val) else {}
        return {"scaling_factor": scale, "val_psnr_db": psnr, "val_slices": len(val)}

    return _train("vae", out_dir, recipe, recipe.vae.training, build=build, export=export, info=info,
                  device=device, resume=resume, overwrite=overwrite, progress=progress)


def _plain(config) -> dict:
    return {key: value for key, value in dict(config).items() if not key.startswith("_")}


def _save_pretrained(vae, run_dir: Path) -> None:
    """save_pretrained into a temporary folder, then move its files into the run folder one by one (each
    move is atomic), so a crash never leaves a half-written weights file under its final name."""
    temporary = run_dir / f".partial-{os.getpid()}-vae"
    shutil.rmtree(temporary, ignore_errors=True)
    try:
        vae.to("cpu").save_pretrained(temporary, safe_serialization=True)
        for file in temporary.iterdir():
            os.replace(file, run_dir / file.name)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
