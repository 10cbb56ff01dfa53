"""The reliability tests' world of good and bad inputs (built once per session by conftest.py's `world`).

Everything is tiny (7x20x26 volumes, a DiffMa-S/2 of one block of width 32 on 64² slices, the tiny VAE
stand-in, no CLIP) so that a command fails or succeeds in well under a second. The run folder is laid out
as `diffma train` writes it (train/run_folder.py), with random weights: the matrix checks refusals, not
image quality.
"""

import argparse
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

SHAPE = (7, 20, 26)  # (z, y, x) voxels
SPACING = (0.9, 1.1, 2.5)  # (x, y, z) mm
IMAGE_SIZE, LATENT = 64, 8  # slice side (pixels) and latent side (the VAE downsamples by 8)
RELEASED_EMBEDDER = Path(__file__).parents[1] / "data" / "released-embedder" / "brain_patch_size_2.pt"


def body() -> np.ndarray:
    """Bool (z, y, x): an ellipse in slices 1..5 (0 and 6 are air only)."""
    z, y, x = np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij")
    return (((y - SHAPE[1] / 2) / 7) ** 2 + ((x - SHAPE[2] / 2) / 9) ** 2 < 1) & (z >= 1) & (z <= 5)


def ct_hu() -> np.ndarray:
    """int16 HU: air -1000 outside the body, soft tissue 40 HU with a bone rim of 900 HU inside."""
    inside = body()
    y = np.arange(SHAPE[1])[None, :, None]
    ct = np.where(inside, 40, -1000)
    ct[inside & (np.abs(y - SHAPE[1] / 2) > 5)] = 900
    return ct.astype(np.int16)


def mr_like() -> np.ndarray:
    """float32 on prepare's normalised MR scale [-1, 1]: -1 outside the body, a gradient inside."""
    x = np.arange(SHAPE[2])[None, None, :]
    return np.where(body(), -0.5 + x / SHAPE[2], -1.0).astype(np.float32)


def write(array: np.ndarray, path: Path, origin=(0.0, 0.0, 0.0)) -> Path:
    """A volume file (format from the suffix) with SPACING and `origin` (for 3-D arrays)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(array, isVector=False)  # a 4-D array is 4-D, not 3-D with components
    if image.GetDimension() == 3:
        image.SetSpacing(SPACING)
        image.SetOrigin(origin)
    sitk.WriteImage(image, str(path))
    return path


def truncate(source: Path, target: Path) -> Path:
    """A copy of `source` cut to three quarters of its bytes (an interrupted copy or download)."""
    raw = source.read_bytes()
    target.write_bytes(raw[: len(raw) * 3 // 4])
    return target


def write_case(folder: Path, ct: np.ndarray | None = None, mask: np.ndarray | None = None,
               suffix: str = ".nii.gz") -> Path:
    """A SynthRAD-style case folder {ct,mr,mask}<suffix> on one grid (CT and mask replaceable)."""
    write(ct_hu() if ct is None else ct, folder / f"ct{suffix}")
    write(mr_like(), folder / f"mr{suffix}")
    write(body().astype(np.uint8) if mask is None else mask, folder / f"mask{suffix}")
    return folder


@dataclass
class World:
    """Good and bad inputs shared by the matrix (read-only for the tests: outputs go to tmp folders)."""

    root: Path
    ct: Path
    mr: Path
    mask: Path
    volumes: dict[str, Path]  # bad volume files by problem
    trees: dict[str, Path]  # SynthRAD Task1 trees with one bad case, by problem
    data: Path  # prepared data (3 cases)
    run: Path  # a finished tiny diffusion run
    runs: dict[str, Path]  # broken runs by problem
    embedder: Path  # embedder weights that fit the train command's backbone
    weights: dict[str, Path]  # bad weights files by problem


def tiny_run(path: Path) -> Path:
    """A finished diffusion run folder of the demo recipe shrunk to 64² slices and a 1-block DiffMa-S/2."""
    from diffma_cli.config import apply_overrides, load_recipe, save_recipe
    from diffma_cli.encoders.clip import load_clip
    from diffma_cli.encoders.vae import load_vae
    from diffma_cli.models import create_model
    from diffma_cli.runs import BACKBONE, EMBEDDER, RECIPE, RUN_INFO
    from diffma_cli.weights import save_model

    path.mkdir(parents=True)
    recipe = apply_overrides(load_recipe("demo"), {
        "data.image_size": IMAGE_SIZE, "model.name": "DiffMa-S/2", "model.depth": 1, "model.hidden_size": 32,
        "embedder.patch_size": 2, "embedder.embed_dim": 32, "sampling.steps": 1, "sampling.batch_size": 8})
    save_recipe(recipe, path / RECIPE)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        save_model(create_model("DiffMa-S/2", input_size=LATENT, depth=1, hidden_size=32), path / BACKBONE)
        save_model(create_model("embedder/2", input_size=LATENT, hidden_size=32), path / EMBEDDER)
    vae, clip = load_vae(recipe.encoders.vae), load_clip(recipe.encoders.clip)
    encoders = {"vae": vae.identity, "clip": clip.identity, "latent_scale": vae.scale}
    (path / RUN_INFO).write_text(json.dumps({"kind": "diffusion", "finished": True, "encoders": encoders}),
                                 encoding="utf-8")
    return path


def _broken_runs(run: Path, root: Path) -> dict[str, Path]:
    from diffma_cli.models import create_model
    from diffma_cli.runs import BACKBONE, RUN_INFO
    from diffma_cli.weights import save_model

    runs = {}
    unfinished = shutil.copytree(run, root / "unfinished")  # a resumed run killed mid-way: old weights
    info = json.loads((unfinished / RUN_INFO).read_text(encoding="utf-8"))
    (unfinished / RUN_INFO).write_text(json.dumps({**info, "finished": False}), encoding="utf-8")
    runs["unfinished"] = unfinished
    truncated = shutil.copytree(run, root / "truncated-weights")
    truncate(run / BACKBONE, truncated / BACKBONE)
    runs["truncated weights"] = truncated
    # The backbone of another model size (width 64) next to the recipe and embedder of width 32.
    other = shutil.copytree(run, root / "other-size")
    save_model(create_model("DiffMa-S/2", input_size=LATENT, depth=1, hidden_size=64), other / BACKBONE,
               overwrite=True)
    runs["other model size"] = other
    return runs


def build_world(root: Path) -> World:
    from diffma_cli.data.prepare import PrepareOptions, prepare
    from diffma_cli.models import create_model
    from diffma_cli.weights import save_model

    trees = _bad_trees(root / "trees")
    data = root / "data"
    prepare(trees["good"], data, PrepareOptions(fractions=(0.34, 0.33, 0.33)), progress=False)
    run = tiny_run(root / "run")
    embedder = root / "embedder.safetensors"
    save_model(create_model("embedder/7", input_size=28, hidden_size=32), embedder)
    case = trees["good"] / "brain" / "1BA001"
    return World(root=root, ct=case / "ct.nii.gz", mr=case / "mr.nii.gz", mask=case / "mask.nii.gz",
                 volumes=_bad_volumes(root / "volumes"), trees=trees, data=data, run=run,
                 runs=_broken_runs(run, root / "runs"), embedder=embedder,
                 weights=_bad_weights(root / "weights", run))


def _bad_volumes(root: Path) -> dict[str, Path]:
    ct = ct_hu()
    volumes = {
        "missing": root / "absent.nii.gz",
        "text named .nii.gz": root / "notes.nii.gz",
        "truncated": truncate(write(ct, root / "full.nii.gz"), root / "truncated.nii.gz"),
        "2-D": write(ct[3], root / "slice.nii.gz"),
        "4-D": write(np.stack([ct, ct]), root / "series4d.nii.gz"),
        "NaN": write(np.where(body(), np.nan, -1000).astype(np.float32), root / "nan.nii.gz"),
        "Inf": write(np.where(body(), np.inf, -1000).astype(np.float32), root / "inf.nii.gz"),
        "not HU": write((ct.astype(np.int32) + 1024).astype(np.uint16), root / "uint.nii.gz"),
        "empty mask": write(np.zeros(SHAPE, np.uint8), root / "empty_mask.nii.gz"),
        "other geometry": write(body().astype(np.uint8), root / "moved_mask.nii.gz", origin=(5.0, 0.0, 0.0)),
    }
    volumes["text named .nii.gz"].write_text("patient notes, not an image\n", encoding="utf-8")
    return volumes


def _bad_trees(root: Path) -> dict[str, Path]:
    """Task1 trees of three good brain cases and a fourth, 1BA004, with one problem."""
    good = root / "good" / "Task1"
    for case in ("1BA001", "1BA002", "1BA003"):
        write_case(good / "brain" / case)
    ct = ct_hu()
    damages = {
        "truncated": lambda case: truncate(write(ct, case / "full.nii.gz"), case / "ct.nii.gz"),
        "2-D": lambda case: write(ct[3], case / "ct.nii.gz"),
        "4-D": lambda case: write(np.stack([ct, ct]), case / "ct.nii.gz"),
        "Inf": lambda case: write(np.where(body(), np.inf, -1000).astype(np.float32), case / "mr.nii.gz"),
        "not HU": lambda case: write((ct.astype(np.int32) + 1024).astype(np.uint16), case / "ct.nii.gz"),
    }
    trees = {}
    for problem, damage in damages.items():
        tree = shutil.copytree(good, root / problem.replace(" ", "-") / "Task1")
        case = write_case(tree / "brain" / "1BA004")
        damage(case)
        (case / "full.nii.gz").unlink(missing_ok=True)
        trees[problem] = tree
    trees["good"] = good
    return trees


def _bad_weights(root: Path, run: Path) -> dict[str, Path]:
    from diffma_cli.models import create_model
    from diffma_cli.runs import EMBEDDER
    from diffma_cli.weights import save_model

    root.mkdir(parents=True)
    weights = {"truncated safetensors": truncate(run / EMBEDDER, root / "truncated.safetensors")}
    # An embedder of another model size than the train command's backbone (width 64, not 32).
    weights["other model size"] = root / "wide-embedder.safetensors"
    save_model(create_model("embedder/7", input_size=28, hidden_size=64), weights["other model size"])
    # A released checkpoint with a key the released embedder does not have (a modified or foreign file).
    with torch.serialization.safe_globals([argparse.Namespace]):  # our own test file: safe to load
        checkpoint = torch.load(RELEASED_EMBEDDER, map_location="cpu", weights_only=True)
    for key in ("model", "ema"):
        if key in checkpoint:
            checkpoint[key]["extra_head.weight"] = torch.zeros(3, 3)
    weights["released .pt with unexpected keys"] = root / "unexpected_keys.pt"
    torch.save(checkpoint, weights["released .pt with unexpected keys"])
    weights["text named .pt"] = root / "notes.pt"
    weights["text named .pt"].write_text("not a checkpoint\n", encoding="utf-8")
    weights["truncated .pt"] = truncate(RELEASED_EMBEDDER, root / "truncated.pt")
    return weights
