"""What a diffusion training looks like while it runs: PNG previews in the run folder (docs/training.md).

Every `training.preview_every` optimiser steps (0 turns previews off) rank 0 writes

    previews/step-<N>.png   rows: PREVIEW_SLICES fixed slices of the val split (the train split when val is
                            empty), evenly spaced through it; columns source | generated | reference
                            (CT | generated MR | MR for ct->mr), each on prepare's [-1, 1] scale
    previews/loss.png       the logged loss (log.jsonl) against the step, log scale when all losses are > 0

The generated column is sampled with the current EMA backbone through `convert.sample_slices` (the
sampler `convert` uses, with PREVIEW_STEPS steps and a fixed seed, so previews of successive steps differ
only by the model). The frozen VAE and CLIP are loaded on the first preview. Sampling runs under a forked
RNG, so a run with previews trains exactly like one without.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from diffma_cli.config import Recipe
from diffma_cli.evaluation.scales import NORMALISED_RANGE, IntensityRange, to_uint8
from diffma_cli.io.atomic import atomic_file

if TYPE_CHECKING:  # torch is imported where sampling needs it: `diffma info` lists previews without it
    import torch

PREVIEWS = "previews"
LOSS_CURVE = "loss.png"
PREVIEW_SLICES = 4
PREVIEW_STEPS = 10  # DPM-Solver++ steps: enough to see anatomy, a few seconds per preview on a GPU
PREVIEW_SEED = 0
LABEL_HEIGHT = 14
GAP = 2


def preview_name(step: int) -> str:
    return f"step-{step:07d}.png"


def preview_files(run_dir: str | Path) -> list[Path]:
    """The previews of a run folder, loss curve last ([] when there are none)."""
    folder = Path(run_dir) / PREVIEWS
    if not folder.is_dir():
        return []
    steps = sorted(path for path in folder.glob("step-*.png"))
    return steps + [path for path in [folder / LOSS_CURVE] if path.is_file()]


def fixed_slices(data_dir: Path, count: int = PREVIEW_SLICES) -> tuple[list[dict], str]:
    """`count` slices evenly spaced through the val split (train when val is empty), and the split used."""
    from diffma_cli.data.dataset import PreparedSlices

    for split in ("val", "train"):
        slices = PreparedSlices(data_dir, split)
        if len(slices):
            picks = np.unique(np.linspace(0, len(slices) - 1, min(count, len(slices))).round().astype(int))
            return [slices[int(index)] for index in picks], split
    return [], "train"


def _save_png(image, path: Path) -> None:
    with atomic_file(path, overwrite=True) as temporary:
        image.save(temporary, format="PNG")


def grid(columns: list[tuple[str, np.ndarray]], scale: IntensityRange = NORMALISED_RANGE):
    """A PIL image: one row per slice, one labelled column per (label, (n, H, W) array on `scale`)."""
    from PIL import Image, ImageDraw

    count, height, width = columns[0][1].shape
    canvas = Image.new("L", (len(columns) * (width + GAP) - GAP, LABEL_HEIGHT + count * (height + GAP) - GAP))
    draw = ImageDraw.Draw(canvas)
    for number, (label, images) in enumerate(columns):
        left = number * (width + GAP)
        draw.text((left + 2, 1), label, fill=255)
        for row in range(count):
            top = LABEL_HEIGHT + row * (height + GAP)
            canvas.paste(Image.fromarray(to_uint8(images[row], scale)), (left, top))
    return canvas


def loss_curve(steps: list[int], losses: list[float], size: tuple[int, int] = (480, 240)):
    """A PIL image of the loss against the step: a polyline with the axis ranges written at the corners;
    log10 of the loss when every loss is > 0."""
    from PIL import Image, ImageDraw

    pairs = [(step, loss) for step, loss in zip(steps, losses, strict=True) if np.isfinite(loss)]
    image = Image.new("L", size, 255)
    draw = ImageDraw.Draw(image)
    margin = (44, 10, 10, 22)  # left, top, right, bottom
    left, top, right, bottom = margin[0], margin[1], size[0] - margin[2], size[1] - margin[3]
    draw.rectangle((left, top, right, bottom), outline=0)
    if not pairs:
        draw.text((left + 4, top + 4), "no loss logged yet", fill=0)
        return image
    x = np.array([step for step, _ in pairs], dtype=np.float64)
    y = np.array([loss for _, loss in pairs], dtype=np.float64)
    logarithmic = bool(np.all(y > 0))
    shown = np.log10(y) if logarithmic else y
    x_span = (x.min(), x.max() if x.max() > x.min() else x.min() + 1)
    y_span = (shown.min(), shown.max() if shown.max() > shown.min() else shown.min() + 1)
    points = [(left + (a - x_span[0]) / (x_span[1] - x_span[0]) * (right - left),
               bottom - (b - y_span[0]) / (y_span[1] - y_span[0]) * (bottom - top))
              for a, b in zip(x, shown, strict=True)]
    if len(points) > 1:
        draw.line(points, fill=0, width=1)
    else:
        draw.ellipse((points[0][0] - 2, points[0][1] - 2, points[0][0] + 2, points[0][1] + 2), fill=0)
    draw.text((2, top), f"{y.max():.3g}", fill=0)
    draw.text((2, bottom - 10), f"{y.min():.3g}", fill=0)
    draw.text((left, bottom + 6), f"step {int(x.min())}", fill=0)
    draw.text((right - 70, bottom + 6), f"step {int(x.max())}", fill=0)
    draw.text((left + 4, top + 2), "loss" + (" (log scale)" if logarithmic else ""), fill=0)
    return image


class TrainingPreviews:
    """The loop's `after_step` for diffusion training: previews every `every` steps (see the module)."""

    def __init__(self, run_dir: Path, data_dir: Path, recipe: Recipe, embedder: torch.nn.Module,
                 latent_scale: float, device: torch.device, every: int):
        self.run_dir, self.data_dir, self.recipe = Path(run_dir), Path(data_dir), recipe
        self.embedder, self.latent_scale, self.device, self.every = embedder, latent_scale, device, every
        self._encoders = None
        self._slices: tuple[list[dict], str] | None = None

    def __call__(self, step: int, total_steps: int, ema: torch.nn.Module) -> None:
        if self.every > 0 and step % self.every == 0:
            import torch

            with torch.random.fork_rng(devices=[]):
                self.write(step, ema)

    def encoders(self):
        """(VAE, CLIP) as training encoded with them, loaded once."""
        if self._encoders is None:
            from diffma_cli.encoders.clip import load_clip
            from diffma_cli.encoders.vae import load_vae

            offline = True if self.recipe.encoders.offline else None
            self._encoders = (load_vae(self.recipe.encoders.vae, offline=offline, device=self.device,
                                       scale=self.latent_scale),
                              load_clip(self.recipe.encoders.clip, offline=offline, device=self.device))
        return self._encoders

    def write(self, step: int, ema: torch.nn.Module) -> list[Path]:
        """Write the preview of `step` and the loss curve; returns their paths."""
        from diffma_cli.convert import ConversionModels, SamplingOptions, sample_slices
        from diffma_cli.train import run_log

        folder = self.run_dir / PREVIEWS
        folder.mkdir(exist_ok=True)
        if self._slices is None:
            self._slices = fixed_slices(self.data_dir)
        slices, _ = self._slices
        paths = []
        if slices:
            source_name, target_name = self.recipe.data.source, self.recipe.data.target
            source = np.stack([item[source_name][0].numpy() for item in slices])
            target = np.stack([item[target_name][0].numpy() for item in slices])
            vae, clip = self.encoders()
            models = ConversionModels(self.recipe, ema, self.embedder, vae, clip, self.device)
            options = SamplingOptions(sampler="dpm", steps=PREVIEW_STEPS, seed=PREVIEW_SEED,
                                      batch_size=len(slices)).resolved(self.recipe)
            was_training = ema.training
            ema.eval()
            try:
                generated = sample_slices(models, source, options, progress=False)[0]
            finally:
                ema.train(was_training)
            image = grid([(source_name.upper(), source), (f"generated (step {step})", generated),
                          (target_name.upper(), target)])
            paths.append(folder / preview_name(step))
            _save_png(image, paths[-1])
        records = [record for record in run_log.read_records(self.run_dir) if "loss" in record]
        curve = loss_curve([record["step"] for record in records],
                           [float("nan") if record["loss"] is None else record["loss"] for record in records])
        paths.append(folder / LOSS_CURVE)
        _save_png(curve, paths[-1])
        return paths
