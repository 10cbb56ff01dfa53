"""CT volume -> synthetic MR volume (or MR -> CT when the run's recipe says so): the library behind
`diffma convert` (docs/convert.md).

Pipeline for one volume (`convert_volume`), arrays indexed (z, y, x) as SimpleITK gives them:

0. reorient the volume to the run's `data.orientation` (axes permuted/flipped, exact; undone at the end);
1. check the input (finite values; a CT must look like Hounsfield units) and find the body: the given body
   mask, else one computed from the image (CT: `body_mask_from_ct`; MR: the same steps at an Otsu threshold);
2. normalise as `diffma prepare` did, with the run's recipe: CT window -> [-1, 1], MR per-case percentiles
   inside the body -> [-1, 1];
3. slice: every axial slice that holds body, resampled to the recipe's image size (224²) as prepare did
   (`diffma_cli.data.slicing`); slices without body were never trained on and become background;
4. per batch of slices: VAE posterior MEAN of the slice (the released code used a posterior sample; the
   mean removes one source of randomness) times the latent scale, CLIP embedding (zeros without CLIP),
   embedder soft mask w and tokens y2; then sample the latent with the chosen sampler and decode it; the
   decoded image is the mean of the VAE's 3 output channels, clipped to [-1, 1];
5. undo the slicing onto the input grid (slices without body = -1, the normalised background), optionally
   smooth along z, MR -> CT models give HU (`ct_from_unit`);
6. members: steps 3-5 for every run of an ensemble x (with tta "flip") the slices and their left-right mirror
   image, mirrored back x `samples` samples (sample k uses seed + k); the output is their per-voxel mean or
   median and their standard deviation (ddof = 1);
7. `mask=True` sets voxels outside the body to the background (-1, or the window's floor in HU; std to 0).

Output scale: CT -> MR gives prepare's normalised MR scale [-1, 1] (what `diffma eval --modality mr`
scores); MR -> CT gives HU in the recipe's window. Geometry (size, spacing, origin, direction) is the
input's. `convert_path` does files, DICOM series folders and folders of volumes (resumable).
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from diffma_cli.config import Recipe
from diffma_cli.convert.models import ConversionModels
from diffma_cli.convert.options import COMBINE_MODES, SamplingOptions
from diffma_cli.data.latent_cache import clip_embedding
from diffma_cli.data.normalise import ct_from_unit, ct_to_unit, mr_scaling, mr_to_unit
from diffma_cli.data.slicing import (
    BODY_THRESHOLD_HU,
    body_mask_from_ct,
    plan_slicing,
    slice_volume,
    unslice_volume,
)
from diffma_cli.diffusion.samplers import draw_noise, sample
from diffma_cli.errors import InputError
from diffma_cli.models.backbone import regression_latents
from diffma_cli.profiling import stage

# prepare's value outside the body after normalisation (data/prepare.py FILL): air for CT, dark MR.
BACKGROUND = -1.0


# ---------------------------------------------------------------- checks and normalisation

def check_input(values: np.ndarray, modality: str, source: str | Path | None = None) -> None:
    """Raise InputError for NaN/Inf, and for a CT that does not look like Hounsfield units.

    A CT in HU always holds air (about -1000 HU) around the body or as the scanner's fill outside the field
    of view; a volume without any voxel below the body threshold (-500 HU) is raw unsigned scanner data
    (0..4095, rescale intercept not applied), an already normalised image or not a CT.
    """
    if not np.isfinite(values).all():
        count = int(values.size - np.isfinite(values).sum())
        raise InputError(f"holds {count} NaN or infinite voxel(s)", path=source,
                         hint="fix or re-export the volume")
    if modality == "ct" and float(values.min()) >= BODY_THRESHOLD_HU:
        raise InputError(
            f"does not look like a CT in Hounsfield units: values range from {float(values.min()):g} to "
            f"{float(values.max()):g} with no air (about -1000 HU)", path=source,
            hint="apply the DICOM rescale slope/intercept (HU = stored value x slope + intercept, the "
                 "intercept is usually -1024), or check that the file is a CT")


def body_from_image(values: np.ndarray, modality: str, spacing_xyz) -> np.ndarray:
    """Body mask (bool (z, y, x)) of an input that comes without one.

    CT: `body_mask_from_ct` (threshold -500 HU). MR has no absolute scale: the same steps (largest
    component, holes filled per slice, 5 mm dilation) at the volume's Otsu threshold.
    """
    if modality == "ct":
        return body_mask_from_ct(values, spacing_xyz)
    from skimage.filters import threshold_otsu

    return body_mask_from_ct(values, spacing_xyz, threshold_hu=float(threshold_otsu(values)))


def normalise_input(values: np.ndarray, modality: str, body: np.ndarray, recipe: Recipe,
                    source: str | Path | None = None) -> np.ndarray:
    """The input on prepare's [-1, 1] scale: CT through the recipe's window, MR by its in-body percentiles."""
    if modality == "ct":
        return ct_to_unit(values, tuple(recipe.data.ct_window_hu))
    try:
        scaling = mr_scaling(values, body, tuple(recipe.data.mr_percentiles))
    except InputError as error:
        raise InputError(error.problem, path=source, hint=error.hint) from None
    return mr_to_unit(values, scaling)


# ---------------------------------------------------------------- sampling

def starting_noise(shape: tuple[int, ...], noise: str, noise_correlation: float,
                   generator: torch.Generator) -> torch.Tensor:
    """(n, C, h, w) starting noise for n slices in z order (CPU float32; see `draw_noise`).

    independent: a fresh draw per slice; shared: one draw repeated on every slice (with a deterministic
    sampler, equal conditions then give equal slices); correlated: an AR(1) chain along z with coefficient
    `noise_correlation`, so each slice's noise stays standard normal.
    """
    if noise == "shared":
        return draw_noise((1, *shape[1:]), generator=generator).expand(shape).contiguous()
    correlation = noise_correlation if noise == "correlated" else 0.0
    return draw_noise(shape, generator=generator, z_correlation=correlation)


def _condition(models: ConversionModels, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """images (b, 1, S, S) in [-1, 1] -> y (b, E) CLIP embedding, y2 (b, T, D) tokens, w (b, T, 1) mask,
    source (b, C, h, w) CT latent (an input of the `latent` conditions)."""
    with stage("vae"):
        source = models.vae.encode(images).mean * models.vae.scale  # (b, 4, S/8, S/8)
    with stage("clip"):
        if models.clip.visual is None:  # no CLIP: the condition vector carries no image embedding
            y = torch.zeros(images.shape[0], models.backbone.config["hidden_size"], device=images.device)
        else:
            y = clip_embedding(models.clip, images)  # (b, E), resized to CLIP's input size as in training
    with stage("embedder"):
        w, y2 = models.embedder(source)
    return y, y2, w, source


def _denoiser(models: ConversionModels, y: torch.Tensor, y2: torch.Tensor, w: torch.Tensor,
              source: torch.Tensor):
    """model_fn(x_t, t) for the samplers: the backbone with this batch's conditions."""

    def model_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with stage("backbone"):
            return models.backbone(x_t, t, y, y2, w, source)  # (b, 2C, h, w): epsilon and variance value

    return model_fn


def _decode(models: ConversionModels, latents: torch.Tensor) -> np.ndarray:
    """Diffusion latents (b, 4, h, w) -> (b, 8h, 8w) float32 images in [-1, 1] (mean of the 3 channels)."""
    with stage("vae"):
        images = models.vae.decode(latents)  # (b, 3, S, S), divided by the latent scale first
    return images.mean(dim=1).clamp_(-1.0, 1.0).cpu().numpy()


@torch.no_grad()
def sample_slices(models: ConversionModels, slices: np.ndarray, options: SamplingOptions, *,
                  progress: bool = True) -> np.ndarray:
    """Normalised source slices (n, S, S) in z order -> generated (samples, n, S, S) float32 in [-1, 1].

    Sample k draws from `torch.Generator().manual_seed(seed + k)` (CPU, so a seed gives the same noise on
    any device): first its starting noise for all n slices, then (ddpm) the ancestral noise batch by batch.
    bf16 autocast on CUDA.
    """
    from tqdm.auto import tqdm

    device = models.device
    latent_side = slices.shape[-1] // models.vae.downsample
    shape = (len(slices), models.backbone.in_channels, latent_side, latent_side)
    generators = [torch.Generator().manual_seed(options.seed + k) for k in range(options.samples)]
    noises = [starting_noise(shape, options.noise, options.noise_correlation, g) for g in generators]
    out = np.empty((options.samples, *slices.shape), np.float32)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    batches = range(0, len(slices), options.batch_size)
    bar = tqdm(total=len(batches) * options.samples, desc="sampling slices", unit="batch",
               disable=not progress, leave=False)
    with autocast, bar:
        for start in batches:
            stop = start + options.batch_size
            images = torch.from_numpy(slices[start:stop]).to(device)[:, None]  # (b, 1, S, S)
            conditions = _condition(models, images)
            if models.recipe.diffusion.objective == "regression":  # one deterministic pass, no sampling
                with stage("backbone"):
                    latents = regression_latents(models.backbone, *conditions)
                out[:, start:stop] = _decode(models, latents)
                bar.update(options.samples)
                continue
            model_fn = _denoiser(models, *conditions)
            for k in range(options.samples):
                initial = noises[k][start:stop].to(device)
                latents = sample(model_fn, tuple(initial.shape), sampler=options.sampler,
                                 steps=options.steps, generator=generators[k], initial_noise=initial,
                                 device=device, progress=False)
                out[k, start:stop] = _decode(models, latents)
                bar.update()
    return out


# ---------------------------------------------------------------- whole volumes

def smooth_along_z(volume: np.ndarray, sigma: float, z_range: tuple[int, int]) -> np.ndarray:
    """Gaussian filter of width `sigma` voxels along z over the slices z_range[0]..z_range[1] (inclusive),
    edges repeated, so the background slices beyond the body do not bleed in. sigma 0 returns `volume`."""
    if sigma <= 0:
        return volume
    from scipy.ndimage import gaussian_filter1d

    first, last = z_range
    volume = volume.copy()
    volume[first:last + 1] = gaussian_filter1d(volume[first:last + 1], sigma, axis=0, mode="nearest")
    return volume


def _geometry_matches(image, other, tolerance: float = 1e-3) -> bool:
    return (image.GetSize() == other.GetSize()
            and np.allclose(image.GetSpacing(), other.GetSpacing(), atol=tolerance)
            and np.allclose(image.GetOrigin(), other.GetOrigin(), atol=tolerance)
            and np.allclose(image.GetDirection(), other.GetDirection(), atol=tolerance))


def _output_image(values: np.ndarray, like):
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(values.astype(np.float32, copy=False))
    image.CopyInformation(like)
    return image


def combine_volumes(volumes, count: int, combine: str = "mean") -> tuple[np.ndarray, np.ndarray | None]:
    """Per-voxel mean or median and standard deviation (ddof 1; None for one volume) of `count` float32
    volumes, in float64 arithmetic. The mean streams (one volume in memory besides the sums); the median
    stacks them all."""
    if combine not in COMBINE_MODES:
        raise InputError(f"unknown combination {combine!r}", hint=f"choose one of {', '.join(COMBINE_MODES)}")
    if count == 1:
        return next(iter(volumes)), None
    if combine == "median":
        stack = np.stack([np.asarray(volume, np.float32) for volume in volumes])
        return (np.median(stack, axis=0).astype(np.float32),
                stack.std(axis=0, ddof=1, dtype=np.float64).astype(np.float32))
    total = squares = None
    for volume in volumes:
        volume = volume.astype(np.float64)
        total = volume if total is None else total + volume
        squares = volume**2 if squares is None else squares + volume**2
    variance = (squares - total**2 / count) / (count - 1)
    return (total / count).astype(np.float32), np.sqrt(np.clip(variance, 0.0, None)).astype(np.float32)


def prepare_slices(values: np.ndarray, spacing_xyz, models: ConversionModels, body: np.ndarray | None = None,
                   source: str | Path | None = None) -> tuple[np.ndarray, dict, np.ndarray]:
    """Steps 1-3: check, find the body, normalise and slice -> ((n, S, S) slices, slicing record, body)."""
    source_modality = models.recipe.data.source
    values = np.asarray(values, dtype=np.float32)
    check_input(values, source_modality, source)
    body = body_from_image(values, source_modality, spacing_xyz) if body is None else np.asarray(body, bool)
    if body.shape != values.shape:
        raise InputError(f"the body mask's shape {body.shape} differs from the input's {values.shape}",
                         path=source)
    if not body.any():
        raise InputError("no body found in the volume (an empty body mask)", path=source,
                         hint="check the input, or give its body mask")
    unit = normalise_input(values, source_modality, body, models.recipe, source)
    record = plan_slicing(values.shape, spacing_xyz, body, models.recipe.data.image_size)
    return slice_volume(unit, record, "linear", BACKGROUND), record, body


def _in_output_units(volume: np.ndarray, models: ConversionModels) -> np.ndarray:
    """A generated volume on prepare's [-1, 1] scale -> the output's units (HU through the window for CT)."""
    if models.recipe.data.target == "ct":
        return ct_from_unit(volume, tuple(models.recipe.data.ct_window_hu))
    return volume


def _member_volumes(values: np.ndarray, spacing_xyz, ensemble: list[ConversionModels], body: np.ndarray,
                    options: SamplingOptions, progress: bool, source):
    """Yield the volume of every member: each run x (the slices, their mirror image for --tta flip) x each
    sample, in the output's units on the input grid (z filter applied)."""
    for models in ensemble:
        with stage("prepare"):
            slices, record, _ = prepare_slices(values, spacing_xyz, models, body, source)
        z_range = (record["slices"][0], record["slices"][-1])
        for flip in (False, True) if options.tta == "flip" else (False,):
            # Left-right: the slice's columns (array x), mirrored in, sampled, and mirrored back. Mirroring
            # the slices equals slicing the mirrored volume: the square field of view is centred.
            source_slices = np.ascontiguousarray(slices[..., ::-1]) if flip else slices
            generated = sample_slices(models, source_slices, options, progress=progress)
            if flip:
                generated = generated[..., ::-1]
            for one in generated:
                with stage("finish"):
                    volume = unslice_volume(one, record, "linear", BACKGROUND)
                    volume = _in_output_units(smooth_along_z(volume, options.smooth_z, z_range), models)
                yield volume


def as_ensemble(models) -> list[ConversionModels]:
    """One run or several -> a list; InputError when the runs convert different directions."""
    ensemble = [models] if isinstance(models, ConversionModels) else list(models)
    if not ensemble:
        raise InputError("no model given")
    directions = sorted({member.direction for member in ensemble})
    if len(directions) > 1:
        raise InputError(f"the runs convert different directions ({', '.join(directions)})",
                         hint="combine runs of one direction")
    return ensemble


def convert_array(values: np.ndarray, spacing_xyz, models, options: SamplingOptions | None = None, *,
                  body: np.ndarray | None = None, mask: bool = False, progress: bool = True,
                  source: str | Path | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """The array core of `convert_volume` (no SimpleITK): values (z, y, x) of the source modality with voxel
    spacing (x, y, z) mm, optional bool body (z, y, x) -> (float32 mean or median (z, y, x), std or None).

    `models`: one `ConversionModels` or a list of them (an ensemble of runs of one direction; options left
    to the recipe come from the first). tta "flip" adds the mirror image (array x) of every slice; combine
    "mean" or "median" over all members (runs x flips x samples), the std over all of them. Its stages
    (diffma_cli.profiling): prepare, vae, clip, embedder, backbone, finish."""
    ensemble = as_ensemble(models)
    options = (options or SamplingOptions()).resolved(ensemble[0].recipe)
    with stage("prepare"):  # the body once for all members (prepare_slices checks it)
        values = np.asarray(values, dtype=np.float32)
        source_modality = ensemble[0].recipe.data.source
        check_input(values, source_modality, source)
        if body is None:
            body = body_from_image(values, source_modality, spacing_xyz)
    volumes = _member_volumes(values, spacing_xyz, ensemble, body, options, progress, source)
    centre, std = combine_volumes(volumes, options.members(len(ensemble)), options.combine)
    if mask:
        body = np.asarray(body, bool)
        centre[~body] = float(_in_output_units(np.float32(BACKGROUND), ensemble[0]))
        if std is not None:
            std[~body] = 0.0
    return centre, std


def convert_volume(image, models, options: SamplingOptions | None = None, *, body_mask=None,
                   mask: bool = False, progress: bool = True, source: str | Path | None = None):
    """Convert one volume; returns (generated `SimpleITK.Image`, standard-deviation image or None).

    image: the source modality of the run (CT in HU for ct->mr, MR in scanner units for mr->ct), any
    geometry: converted in the runs' `data.orientation` (diffma_cli.data.orientation) and put back on the
    input's grid. models: a `ConversionModels` or a list of them (an ensemble). options: `SamplingOptions`
    (default: the recipe's sampler, steps, seed and batch size, one sample); sample k uses seed + k; tta
    "flip" also converts the left-right mirror image and mirrors the result back. The output is the
    per-voxel mean (or median: combine) of all members (runs x flips x samples) and, with more than one
    member, their standard deviation (ddof 1). body_mask: optional `SimpleITK.Image` on the same grid
    (voxels > 0 = body), else computed. mask: voxels outside the body -> background.
    Both outputs are float32 on the input's grid: [-1, 1] for MR, HU for CT (std in the same units).
    `source` names the input in error messages.
    """
    import SimpleITK as sitk

    from diffma_cli.data.orientation import reorient, restore

    ensemble = as_ensemble(models)
    orientations = sorted({member.recipe.data.orientation for member in ensemble})
    if len(orientations) > 1:
        raise InputError(f"the runs were trained in different orientations ({', '.join(orientations)})",
                         hint="combine runs of one data.orientation")
    body = None
    if body_mask is not None:
        if not _geometry_matches(image, body_mask):
            raise InputError("the body mask's grid (size, spacing, origin, direction) differs from the "
                             "input's", path=source, hint="give the mask that belongs to this volume")
        body = sitk.GetArrayFromImage(reorient(body_mask, orientations[0])) > 0
    # Convert in the frame the runs were trained in (axes permuted/flipped exactly), then back.
    oriented = reorient(image, orientations[0])
    mean, std = convert_array(sitk.GetArrayFromImage(oriented), oriented.GetSpacing(), ensemble, options,
                              body=body, mask=mask, progress=progress, source=source)

    def on_input_grid(values):
        return restore(_output_image(values, oriented), image)

    return on_input_grid(mean), None if std is None else on_input_grid(std)
