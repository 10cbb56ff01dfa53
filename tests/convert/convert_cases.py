"""Helpers of the convert tests: a tiny run folder (random weights, as `diffma train` lays it out) and
small CT volumes with anisotropic spacing and a non-identity direction, written with SimpleITK.

A module of its own (not conftest.py) so that `from convert_cases import ...` cannot pick up another
folder's conftest module when several test folders run in one process."""

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from diffma_cli.config import apply_overrides, load_recipe, save_recipe
from diffma_cli.encoders.clip import load_clip
from diffma_cli.encoders.vae import load_vae
from diffma_cli.models import create_model
from diffma_cli.runs import BACKBONE, EMBEDDER, RECIPE, RUN_INFO
from diffma_cli.weights import save_model

SHAPE = (7, 20, 26)  # (z, y, x)
SPACING = (0.8, 1.1, 2.5)  # (x, y, z) mm, anisotropic like pelvis
ORIGIN = (3.0, -40.0, 5.5)
DIRECTION = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # axes swapped in-plane: not the identity
BODY_SLICES = range(1, 6)  # z indices with body; 0 and 6 are air only
IMAGE_SIZE, LATENT = 64, 8  # slice side (pixels) and latent side (the VAE downsamples by 8)


def tiny_run(path: Path, direction: str = "ct->mr") -> Path:
    """A finished diffusion run folder: demo recipe shrunk to 64² slices (8² latents), DiffMa-S/2 with 1
    block of width 32, the tiny VAE stand-in, no CLIP, 2 DPM-Solver steps by default. The pipeline reads the
    slice size from the recipe, so 64² exercises the same code as 224² at a tenth of the cost."""
    path.mkdir(parents=True)
    recipe = apply_overrides(load_recipe("demo"), {
        "data.direction": direction, "data.image_size": IMAGE_SIZE, "model.name": "DiffMa-S/2",
        "model.depth": 1, "model.hidden_size": 32, "embedder.patch_size": 2,
        "embedder.embed_dim": 32, "sampling.steps": 2, "sampling.batch_size": 4})
    save_recipe(recipe, path / RECIPE)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        backbone = create_model("DiffMa-S/2", input_size=LATENT, depth=1, hidden_size=32)
        # The final layer starts at zero (released init): perturb it so the output depends on the input.
        for parameter in backbone.final_layer.parameters():
            parameter.data.normal_(0, 0.02)
        save_model(backbone, path / BACKBONE)
        save_model(create_model("embedder/2", input_size=LATENT, hidden_size=32), path / EMBEDDER)
    # run.json records the encoders as training does (their identities and the latent scale used).
    vae, clip = load_vae(recipe.encoders.vae), load_clip(recipe.encoders.clip)
    encoders = {"vae": vae.identity, "clip": clip.identity, "latent_scale": vae.scale}
    (path / RUN_INFO).write_text(json.dumps({"kind": "diffusion", "finished": True, "encoders": encoders}),
                                 encoding="utf-8")
    return path


def body_of(shape=SHAPE) -> np.ndarray:
    """Bool (z, y, x): an ellipse in the slices BODY_SLICES."""
    z, y, x = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    ellipse = ((y - shape[1] / 2) / 7) ** 2 + ((x - shape[2] / 2) / 9) ** 2 < 1
    return ellipse & (z >= BODY_SLICES.start) & (z < BODY_SLICES.stop)


def ct_array(shape=SHAPE) -> np.ndarray:
    """int16 HU: air -1000 outside the body, soft tissue with a bone rim inside."""
    body = body_of(shape)
    z, y, x = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    ct = np.where(body, 40 + 30 * np.sin(x / 3.0 + z), -1000)
    ct[body & (np.abs(y - shape[1] / 2) > 5)] = 900
    return ct.astype(np.int16)


def as_image(array: np.ndarray):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN)
    image.SetDirection(DIRECTION)
    return image


def write(array: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(as_image(array), str(path))
    return path


def write_dicom_series(array, folder, extra_tags=()):
    """An int16 CT series, one file per axial slice, with position/orientation/spacing tags."""
    folder.mkdir()
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN)
    image.SetDirection(DIRECTION)
    direction = image.GetDirection()
    orientation = "\\".join(f"{v:.6f}" for v in (*direction[0::3], *direction[1::3]))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for z in range(image.GetDepth()):
        plane = image[:, :, z]
        position = image.TransformIndexToPhysicalPoint((0, 0, z))
        for tag, value in [("0008|0060", "CT"), ("0020|000d", "1.2.826.0.1.3680043.2.1125.1"),
                           ("0020|000e", "1.2.826.0.1.3680043.2.1125.1.2"), ("0020|0037", orientation),
                           ("0020|0032", "\\".join(f"{v:.6f}" for v in position)), ("0020|0013", str(z + 1)),
                           ("0028|0030", f"{SPACING[1]:.6f}\\{SPACING[0]:.6f}"),
                           ("0018|0050", f"{SPACING[2]:.6f}"), ("0028|1052", "0"), ("0028|1053", "1"),
                           *extra_tags]:
            plane.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{z:03d}.dcm"))
        writer.Execute(plane)
