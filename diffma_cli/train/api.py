"""Training entry points: the Python API behind `diffma train-vae`, `train-embedder` and `train`.

Each function runs in one process or in every process started by `torchrun` (DDP), writes its run folder
from rank 0 and returns the run folder's path. The same functions are what the CLI and the demo call.
"""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from diffma_cli import __version__, runs
from diffma_cli.config import Recipe, TrainingConfig, apply_overrides
from diffma_cli.errors import InputError
from diffma_cli.io.hashing import file_sha256
from diffma_cli.train import run_folder
from diffma_cli.train.distributed import Processes, barrier, from_main, processes
from diffma_cli.train.loop import FitResult, batch_sizes, fit


def data_reference(data_dir: Path) -> dict:
    """Which prepared data set a run used: its folder, the sha256 of its manifest and its normalisation."""
    from diffma_cli.data.dataset import load_manifest

    manifest = load_manifest(data_dir)
    options = manifest.get("options", {})
    return {"path": str(Path(data_dir).resolve()), "manifest": "manifest.json",
            "manifest_sha256": file_sha256(Path(data_dir) / "manifest.json"),
            "ct_window": options.get("ct_window"), "mr_percentiles": options.get("mr_percentiles"),
            "orientation": options.get("orientation"), "image_size": options.get("size"),
            "slice_counts": manifest.get("slice_counts")}


def with_data_normalisation(recipe: Recipe, reference: dict) -> Recipe:
    """The recipe with the CT window, MR percentiles and orientation the data was actually prepared with, so
    that the run's recipe.yaml tells `convert` how to orient and normalise new scans the same way (data
    prepared before orientations were recorded keeps the recipe's). InputError when the data's slice size
    is not the recipe's data.image_size."""
    changes = {key: reference[name] for key, name in (("data.ct_window_hu", "ct_window"),
                                                       ("data.mr_percentiles", "mr_percentiles"),
                                                       ("data.orientation", "orientation"))
               if reference.get(name) is not None}
    size = reference.get("image_size")
    if size is not None and size != recipe.data.image_size:
        # The models' input size follows data.image_size (latents of image_size / 8): the slices must match.
        raise InputError(f"the prepared slices are {size}² but the recipe's data.image_size is "
                         f"{recipe.data.image_size}", path=reference.get("path"),
                         hint=f"prepare with --image-size {recipe.data.image_size}, or train with "
                              f"--set data.image_size={size}")
    return apply_overrides(recipe, changes)


def open_slices(data_dir: Path, split: str):
    """The prepared 224x224 slices of one split (diffma_cli.data.dataset.PreparedSlices)."""
    from diffma_cli.data.dataset import PreparedSlices

    return PreparedSlices(data_dir, split)


def _train(kind: str, run_dir: str | Path, recipe: Recipe, settings: TrainingConfig, *,
           build: Callable[[Processes], object], export: Callable[[object, FitResult, Path], dict],
           info: Callable[[object], dict], device: str, resume: bool, overwrite: bool,
           progress: bool, start: Callable[[object, Path], None] | None = None,
           after_step: Callable[[object, Path, Processes], Callable | None] | None = None) -> Path:
    """What all trainings share: folder checks, processes, seeds, fit, export and run.json (rank 0).

    `start(task, run_dir)` runs on rank 0 once a new run folder exists (not when resuming);
    `after_step(task, run_dir, where)` gives the loop's per-step callback (previews), or None.
    """
    run_dir = Path(run_dir)
    with processes(device) as where:
        # Check the output first (every process: same answer), build the task (encoders, latent cache,
        # models: where most user errors show up), and only then create the folder, so that a failed start
        # leaves nothing behind.
        run_folder.prepare_run_folder(run_dir, overwrite=overwrite, resume=resume, create=False)
        if resume:
            previous = runs.read_run_info(run_dir)
            if previous.get("kind") != kind:
                raise InputError(f"is a {previous.get('kind')} run; cannot resume it as a {kind} run",
                                 path=run_dir)
            same_model_as_before(kind, run_dir, recipe)
        # The same initial weights on every process (DDP would also broadcast rank 0's).
        torch.manual_seed(settings.seed)
        task = build(where)
        batch_sizes(settings, where, len(task.dataset))  # a batch larger than the data fails here, not in fit
        barrier(where)  # every process has checked and built before rank 0 deletes an old run
        if where.is_main and not resume:
            run_folder.prepare_run_folder(run_dir, overwrite=overwrite, resume=resume)
        barrier(where)
        with _removed_unless_started(run_dir, where.is_main and not resume):
            _start_fit_export(kind, run_dir, recipe, settings, where, task, export, info, resume, progress,
                              start, after_step)
        barrier(where)
    return run_dir


@contextlib.contextmanager
def _removed_unless_started(run_dir: Path, created_here: bool):
    """Remove a run folder this call created if training fails before its first checkpoint: nothing in it
    could be resumed, and under its final name it would block the corrected command ("already exists")."""
    from diffma_cli.train.checkpoint import latest_checkpoint

    try:
        yield
    except BaseException:
        if created_here and latest_checkpoint(run_dir) is None:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


# The recipe sections that fix the weights' shapes, by run kind: --resume must not change them.
MODEL_SECTIONS = {"diffusion": ("model", "diffusion"),
                  "embedder": ("embedder.patch_size", "embedder.embed_dim"), "vae": ("vae",)}


def same_model_as_before(kind: str, run_dir: Path, recipe: Recipe) -> None:
    """InputError when a resumed run's recipe describes another model than the run's recipe.yaml (e.g.
    --resume --size B on an S run): the checkpoint's weights keep their size."""
    from diffma_cli.config import recipe_to_dict

    saved_path = run_dir / runs.RECIPE
    if not saved_path.is_file():
        return
    before, now = recipe_to_dict(runs.read_run_recipe(run_dir)), recipe_to_dict(recipe)
    for key in MODEL_SECTIONS[kind]:
        old, new = before, now
        for part in key.split("."):
            old, new = old[part], new[part]
        if isinstance(old, dict):  # a section: training settings may change on resume, the model not
            old = {k: v for k, v in old.items() if k != "training"}
            new = {k: v for k, v in new.items() if k != "training"}
            changed = [k for k in old if old[k] != new.get(k)]
            if changed:
                key, old, new = f"{key}.{changed[0]}", old[changed[0]], new[changed[0]]
        if old != new:
            raise InputError(f"--resume cannot change the model: the run has {key}={old}, now {new}",
                             path=run_dir, hint="resume with the run's own settings, or train a new run")


def _start_fit_export(kind, run_dir, recipe, settings, where, task, export, info, resume, progress,
                      start, after_step) -> None:
    """Write run.json (and the start files), train, export the weights and mark the run finished."""
    record = None
    if where.is_main:
        record = run_folder.start_run(run_dir, recipe, {
            "kind": kind, "diffma_version": __version__, "command": sys.argv, **info(task),
            "world_size": where.world_size, "device": str(where.device)}, resume=resume)
        if resume:  # the resolved recipe now includes this session's overrides (e.g. more steps)
            run_folder.save_run_recipe(recipe, run_dir)
        elif start is not None:
            start(task, run_dir)
    if where.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(where.device)
    result = fit(task, settings, run_dir, where, resume=resume, progress=progress, description=kind,
                 after_step=None if after_step is None else after_step(task, run_dir, where))
    if where.is_main:
        peak = torch.cuda.max_memory_allocated(where.device) if where.device.type == "cuda" else 0
        results = export(task, result, run_dir)
        if peak:  # of training on this GPU (rank 0), before the export
            results["peak_gpu_memory_gib"] = round(peak / 2**30, 3)
        run_folder.finish_run(run_dir, record, steps=result.state.step, epochs_done=result.state.epoch,
                              final_loss=result.losses[-1] if result.losses else None,
                              images_per_second=round(result.images_per_second, 3), **results)


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
    data = data_reference(data_dir)
    recipe = with_data_normalisation(recipe, data)

    def build(where: Processes) -> VAETask:
        return VAETask(recipe.vae, SlicesOfBothModalities(open_slices(data_dir, "train")),
                       recipe.data.image_size)

    def info(task: VAETask) -> dict:
        return {"data": data, "model": {"class": "AutoencoderKL", **_plain(task.model.vae.config)}}

    def export(task: VAETask, result: FitResult, run_dir: Path) -> dict:
        vae = result.ema.vae
        device = next(vae.parameters()).device
        scale = 1.0 / latent_std(vae, task.dataset, device)
        vae.register_to_config(scaling_factor=scale)
        val = open_slices(data_dir, "val")
        psnr = reconstruction_psnr(vae, val, device) if len(val) else {}
        _save_pretrained(vae, run_dir)  # last: it moves the VAE to the CPU
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


# ---------------------------------------------------------------- latent cache

def latent_dataset(data_dir: Path, recipe: Recipe, split: str, where: Processes, progress: bool):
    """The latent cache of one split (built by rank 0 if missing or made by other encoders), read by all.

    Returns (LatentCache, latent scale): the recipe's `encoders.latent_scale` or else the VAE's own.
    """
    from diffma_cli.data.latent_cache import LatentCache, default_cache_file

    cache_file = default_cache_file(data_dir, split)
    scale = None
    # Building the cache draws from the global RNG (DataLoader seeds); fork it so that the models created
    # next get the same initial weights whether or not the cache had to be built.
    with torch.random.fork_rng(devices=[]):
        if where.is_main:
            scale = _ensure_cache(data_dir, recipe, split, cache_file, where, progress)
    scale = from_main(scale, where)  # collective: the other ranks also wait here for the cache
    return LatentCache(cache_file, recipe.data.direction), scale


def _ensure_cache(data_dir: Path, recipe: Recipe, split: str, cache_file: Path, where: Processes,
                  progress: bool) -> float:
    """Build the cache if it is missing or stale (rank 0); returns the latent scale of the VAE."""
    from diffma_cli.data.latent_cache import ensure_latent_cache
    from diffma_cli.encoders.clip import load_clip
    from diffma_cli.encoders.vae import load_vae

    offline = True if recipe.encoders.offline else None  # False: as HF_HUB_OFFLINE says
    vae = load_vae(recipe.encoders.vae, offline=offline, device=where.device,
                   scale=recipe.encoders.latent_scale)
    clip = load_clip(recipe.encoders.clip, offline=offline, device=where.device)
    source = recipe.data.source
    ensure_latent_cache(open_slices(data_dir, split), cache_file, vae, clip, clip_of=source,
                        data_key=file_sha256(data_dir / "manifest.json"), device=where.device,
                        progress=progress)
    # The cache file's stored scale may come from an earlier build with another setting: use the VAE's.
    return vae.scale


def _encoder_record(cache, scale: float) -> dict:
    return {"vae": cache.key.get("vae"), "clip": cache.key.get("clip"), "latent_scale": scale}


# ---------------------------------------------------------------- train-embedder

def embedder_name(recipe: Recipe) -> tuple[str, dict]:
    """Registry name and overrides of the embedder the recipe describes."""
    return (f"embedder/{recipe.embedder.patch_size}",
            {"input_size": recipe.data.image_size // 8, "hidden_size": recipe.embedder.embed_dim})


def train_embedder(data_dir: str | Path, run_dir: str | Path, recipe: Recipe, *, device: str = "auto",
                   resume: bool = False, overwrite: bool = False, progress: bool = True) -> Path:
    """Pre-train the CT Vision Embedder with InfoNCE on VAE latents of the train split's source slices.

    Writes `run_dir/embedder.safetensors` (EMA weights), the input of `train --embedder run_dir`.
    """
    from diffma_cli.models import create_model
    from diffma_cli.models.embedder import info_nce_loss
    from diffma_cli.train.tasks import EmbedderTask
    from diffma_cli.weights import save_model

    data_dir = Path(data_dir)
    data = data_reference(data_dir)
    recipe = with_data_normalisation(recipe, data)
    extras: dict = {}

    def build(where: Processes) -> EmbedderTask:
        cache, scale = latent_dataset(data_dir, recipe, "train", where, progress)
        extras.update(encoders=_encoder_record(cache, scale))
        name, overrides = embedder_name(recipe)
        return EmbedderTask(create_model(name, **overrides), cache, scale, recipe.embedder.tau, info_nce_loss)

    def info(task: EmbedderTask) -> dict:
        return {"data": data, "model": task.model.config, **extras}

    def export(task: EmbedderTask, result: FitResult, run_dir: Path) -> dict:
        save_model(result.ema, run_dir / runs.EMBEDDER, overwrite=True,
                   provenance={"trained_by": "diffma train-embedder", "run": str(run_dir.resolve()),
                               "steps": result.state.step, "weights": "ema"})
        return {"weights": runs.EMBEDDER}

    return _train("embedder", run_dir, recipe, recipe.embedder.training, build=build, export=export,
                  info=info, device=device, resume=resume, overwrite=overwrite, progress=progress)


# ---------------------------------------------------------------- train (the diffusion backbone)

def backbone_overrides(recipe: Recipe) -> dict:
    """create_model overrides for `recipe.model` (scan and soft mask only for DiffMa: the baselines have
    their own orders and do not use the soft mask; the condition for every backbone)."""
    overrides = {"input_size": recipe.data.image_size // 8, "condition": recipe.model.condition}
    for key in ("depth", "hidden_size"):
        if getattr(recipe.model, key) is not None:
            overrides[key] = getattr(recipe.model, key)
    if recipe.model.name.startswith("DiffMa-"):
        overrides["scan"] = recipe.model.scan
        overrides["soft_mask"] = recipe.model.soft_mask
    return overrides


def _check_fit(backbone, embedder, cache, embedder_path: Path) -> None:
    """The embedder's tokens and the CLIP embedding must have the backbone's token count and width."""
    b, e = backbone.config, embedder.config
    if not str(e.get("name", "")).startswith("embedder/"):
        raise InputError(f"holds a {e.get('name')} model, not a CT Vision Embedder", path=embedder_path,
                         hint="pass a `diffma train-embedder` run folder or its embedder.safetensors")
    if (b["patch_size"], b["hidden_size"], b["input_size"]) != (e["patch_size"], e["hidden_size"],
                                                                e["input_size"]):
        raise InputError(f"the embedder ({e['name']}, width {e['hidden_size']}, latent {e['input_size']}) "
                         f"does not fit {b['name']} (patch {b['patch_size']}, width {b['hidden_size']}, "
                         f"latent {b['input_size']})", path=embedder_path,
                         hint="train an embedder with the same patch size and width (embedder.patch_size, "
                              "embedder.embed_dim)")
    if "clip" in cache.tensors and cache.tensors["clip"].shape[1] != b["hidden_size"]:
        raise InputError(f"the CLIP embedding has width {cache.tensors['clip'].shape[1]} but {b['name']} "
                         f"has width {b['hidden_size']} (the embedding is added to the timestep embedding)",
                         hint="use encoders.clip=none or a backbone of that width")


def train_diffusion(data_dir: str | Path, run_dir: str | Path, recipe: Recipe, embedder: str | Path | None, *,
                    device: str = "auto", resume: bool = False, overwrite: bool = False,
                    progress: bool = True) -> Path:
    """Train the diffusion backbone `recipe.model` with the frozen embedder `embedder` (a train-embedder
    run folder, one of our weights files or a released .pt checkpoint).

    Copies the embedder into `run_dir/embedder.safetensors` at the start and writes the EMA backbone as
    `run_dir/backbone.safetensors` at the end: `load_run(run_dir)` gives both with the resolved recipe.
    When resuming, the run's own copy is used; `embedder` may be None or must hold the same weights.
    """
    from diffma_cli.diffusion.gaussian import GaussianDiffusion, linear_betas, released_betas
    from diffma_cli.models import create_model
    from diffma_cli.models.conditioning import concatenates_latent
    from diffma_cli.train.tasks import DiffusionTask
    from diffma_cli.weights import load_model, save_model

    data_dir = Path(data_dir)
    data = data_reference(data_dir)
    recipe = with_data_normalisation(recipe, data)
    if recipe.diffusion.noise_schedule != "linear" or not recipe.diffusion.learn_sigma:
        raise InputError("only diffusion.noise_schedule=linear with learn_sigma=true (the released setting) "
                         "is implemented")
    if recipe.diffusion.objective == "regression" and not concatenates_latent(recipe.model.condition):
        raise InputError(f"diffusion.objective=regression needs the CT latent as an input, but "
                         f"model.condition is {recipe.model.condition}",
                         hint="use model.condition=latent or latent+tokens")
    min_snr = recipe.diffusion.mse_weighting == "min-snr"
    if min_snr and recipe.diffusion.objective == "regression":
        raise InputError("diffusion.mse_weighting=min-snr weights the denoising loss, which "
                         "diffusion.objective=regression does not train",
                         hint="use diffusion.mse_weighting=uniform")
    if resume:
        run_folder.prepare_run_folder(run_dir, overwrite=overwrite, resume=True, create=False)
        embedder = _same_embedder(Path(run_dir), embedder)
    elif embedder is None:
        raise InputError("no embedder given",
                         hint="pass a `diffma train-embedder` run folder or an embedder weights file")
    embedder_path = runs.embedder_file(embedder)
    embedder_record = {"source": str(Path(embedder).resolve()), "file": str(embedder_path.resolve()),
                       "sha256": file_sha256(embedder_path), "copy": runs.EMBEDDER}
    extras: dict = {}

    def build(where: Processes) -> DiffusionTask:
        cache, scale = latent_dataset(data_dir, recipe, "train", where, progress)
        extras.update(encoders=_encoder_record(cache, scale))
        frozen = load_model(embedder_path).requires_grad_(False)
        backbone = create_model(recipe.model.name, **backbone_overrides(recipe))
        _check_fit(backbone, frozen, cache, embedder_path)
        steps = recipe.diffusion.num_timesteps
        # The released code builds its 1000-step chain by respacing (betas differ by <= 2e-16).
        betas = released_betas() if steps == 1000 else linear_betas(steps)
        task = DiffusionTask(backbone, frozen, GaussianDiffusion(betas), cache, scale,
                             clip_width=backbone.config["hidden_size"], objective=recipe.diffusion.objective,
                             min_snr_gamma=recipe.diffusion.min_snr_gamma if min_snr else None)
        return task.to(where.device)

    def info(task: DiffusionTask) -> dict:
        return {"data": data, "model": task.model.config, "embedder": embedder_record,
                "encoders": extras["encoders"]}

    def start(task: DiffusionTask, run_dir: Path) -> None:
        # The copy makes the run folder self-contained from its first step (convert, resume).
        save_model(copy.deepcopy(task.embedder).cpu(), run_dir / runs.EMBEDDER, overwrite=True,
                   provenance={"copied_from": embedder_record["file"], "sha256": embedder_record["sha256"]})

    def export(task: DiffusionTask, result: FitResult, run_dir: Path) -> dict:
        save_model(result.ema, run_dir / runs.BACKBONE, overwrite=True,
                   provenance={"trained_by": "diffma train", "run": str(run_dir.resolve()),
                               "steps": result.state.step, "weights": "ema"})
        return {"weights": runs.BACKBONE}

    def previews(task: DiffusionTask, run_dir: Path, where: Processes):
        from diffma_cli.train.previews import TrainingPreviews

        every = recipe.training.preview_every
        if every <= 0 or not where.is_main:
            return None
        return TrainingPreviews(run_dir, data_dir, recipe, task.embedder, task.scale, where.device, every)

    return _train("diffusion", run_dir, recipe, recipe.training, build=build, export=export, info=info,
                  device=device, resume=resume, overwrite=overwrite, progress=progress, start=start,
                  after_step=previews)


def _same_embedder(run_dir: Path, given: str | Path | None) -> Path:
    """The run's own embedder copy; a given `--embedder` must hold the same weights (else InputError)."""
    from diffma_cli.weights import load_model

    own = runs.embedder_file(run_dir)
    if given is None or Path(given).resolve() in (run_dir.resolve(), own.resolve()):
        return own
    theirs = load_model(runs.embedder_file(given)).state_dict()
    ours = load_model(own).state_dict()
    if theirs.keys() != ours.keys() or any(not torch.equal(theirs[k], ours[k]) for k in ours):
        raise InputError("is not the embedder this run was trained with", path=given,
                         hint="leave --embedder out when resuming: the run folder holds its own copy")
    return own
