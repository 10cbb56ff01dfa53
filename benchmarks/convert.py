"""`diffma convert` speed: seconds per 200-slice volume end to end (disk excluded), split by stage.

Usage (on a GPU machine; benchmarks/gpu/README.md sets up one without a package registry):

    python3 benchmarks/convert.py                                  # DiffMa-B/2, 20 and 50 steps, bf16
    python3 benchmarks/convert.py --steps 20 --batch-sizes 16,32,64 --noise shared
    python3 benchmarks/convert.py --tiny --device cpu              # smoke test with tiny stand-ins

What runs is the library's own `convert_array` (convert_volume without SimpleITK, which the GPU machine
lacks) on an in-memory CT (an ellipse body on every one of `--slices` axial slices of `--side`² voxels,
HU), so the time includes normalising, slicing to 224², encoding, sampling, decoding and undoing the
slicing, but no file I/O. Models have RANDOM weights of the
real sizes (no download is possible on the GPU machine): the DiffMa backbone and `embedder/2` from our
registry, an AutoencoderKL with the SD VAE's architecture (block_out_channels 128/256/512/512, 2 layers
per block, docs/reference.md §7) and BiomedCLIP's visual tower (timm ViT-B/16 + 768->512 projection).
Random weights cost the same time as trained ones. `--tiny`: tiny VAE/CLIP stand-ins and a one-block
DiffMa-S/7, for a CPU smoke test of this script.

Stages come from `diffma_cli.profiling.StageTimer` observing the pipeline's stages (CUDA events around
each call, summed): prepare (input check, body mask, normalisation, slicing; CPU), vae (encode + decode),
clip, embedder, backbone (network evaluations only), finish (undoing the slicing, mean/std; CPU);
"rest" = total - stages (scheduler arithmetic, copies).
One warm-up conversion of a few slices runs first (cuDNN autotuning, mamba-ssm kernels load).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

STAGES = ("prepare", "vae", "clip", "embedder", "backbone", "finish")
# The SD VAE (stabilityai/sd-vae-ft-ema) architecture: docs/reference.md §7.
SD_VAE_CONFIG = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                     up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
                     layers_per_block=2, latent_channels=4, norm_num_groups=32, sample_size=256)


def build_models(args, device: torch.device):
    """ConversionModels with random weights of the real sizes (or tiny stand-ins with --tiny)."""
    from diffusers import AutoencoderKL

    from diffma_cli.config import apply_overrides, load_recipe
    from diffma_cli.convert import ConversionModels
    from diffma_cli.encoders.clip import BIOMEDCLIP_VISION, ClipVisual, FrozenClip, load_clip
    from diffma_cli.encoders.vae import FrozenVAE, load_vae
    from diffma_cli.models import create_model

    torch.manual_seed(0)
    if args.tiny:
        model, embedder = "DiffMa-S/7", "embedder/7"
        backbone = create_model(model, depth=1)
        vae, clip = load_vae("tiny"), load_clip("tiny")
    else:
        model, embedder = args.model, f"embedder/{args.model.rsplit('/', 1)[1]}"
        backbone = create_model(model, scan=args.scan)
        vae = FrozenVAE(AutoencoderKL(**SD_VAE_CONFIG), source="random SD-VAE-sized AutoencoderKL")
        clip = FrozenClip(ClipVisual(**BIOMEDCLIP_VISION), dict(BIOMEDCLIP_VISION), "released",
                          source="random ViT-B/16")
    recipe = apply_overrides(load_recipe("brain"), {"model.name": model})
    return ConversionModels(recipe, backbone.to(device).eval(), create_model(embedder).to(device).eval(),
                            vae.to(device), clip.to(device), device)


def phantom_ct(slices: int, side: int) -> np.ndarray:
    """(slices, side, side) int16 CT in HU with body on every slice: a soft-tissue ellipse with a bone ring,
    air around it (converted on a 1 mm grid)."""
    y, x = np.mgrid[:side, :side]
    radius = ((y - side / 2) / (0.42 * side)) ** 2 + ((x - side / 2) / (0.36 * side)) ** 2
    plane = np.where(radius < 1, 40.0, -1000.0)
    plane[(radius > 0.8) & (radius < 1)] = 1200.0
    return np.repeat(plane[None], slices, axis=0).astype(np.int16)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_once(models, ct: np.ndarray, *, steps, batch_size, args):
    """(total seconds, {stage: seconds}) of one conversion of the CT array (1 mm voxels)."""
    from diffma_cli.convert import SamplingOptions, convert_array
    from diffma_cli.profiling import StageTimer, observe_stages

    options = SamplingOptions(sampler=args.sampler, steps=steps, batch_size=batch_size, seed=0,
                              noise=args.noise)
    timer = StageTimer(models.device)
    synchronize(models.device)
    began = time.perf_counter()
    with observe_stages(timer):
        convert_array(ct, (1.0, 1.0, 1.0), models, options, progress=False)
    synchronize(models.device)
    return time.perf_counter() - began, timer.seconds()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="DiffMa-B/2")
    parser.add_argument("--scan", default="spiral", choices=("spiral", "released"))
    parser.add_argument("--steps", default="20,50", help="comma-separated sampler steps")
    parser.add_argument("--batch-sizes", default="32", help="comma-separated slices per forward pass")
    parser.add_argument("--sampler", default="dpm", choices=("ddpm", "ddim", "dpm"))
    parser.add_argument("--noise", default="independent", choices=("independent", "shared", "correlated"))
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--side", type=int, default=256, help="in-plane voxels of the phantom CT")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--tiny", action="store_true", help="tiny stand-ins: a CPU smoke test of the script")
    args = parser.parse_args(argv)

    from diffma_cli.devices import resolve_device
    from diffma_cli.models.ops.selective_scan import resolve_backend

    device = resolve_device(args.device)
    if device.type != "cuda" and not args.tiny:
        print("benchmarks/convert.py: no CUDA here; use --tiny for a CPU smoke test", file=sys.stderr)
        return 2
    models = build_models(args, device)
    image = phantom_ct(args.slices, args.side)
    steps_list = [int(s) for s in args.steps.split(",")]
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    run_once(models, phantom_ct(min(args.slices, 2 * batch_sizes[0]), args.side), steps=2,
             batch_size=batch_sizes[0], args=args)  # warm-up
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    scan = resolve_backend(None, torch.zeros(1, device=device))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rows = []
    for steps in steps_list:
        for batch_size in batch_sizes:
            total, stages = run_once(models, image, steps=steps, batch_size=batch_size, args=args)
            rows.append((steps, batch_size, total, stages))
            print(f"steps {steps} batch {batch_size}: {total:.2f} s", file=sys.stderr)
    peak = (f"{torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB" if device.type == "cuda"
            else "not measured")
    model = "DiffMa-S/7 (1 block), tiny VAE/CLIP" if args.tiny else f"{args.model} ({args.scan} scan)"
    print(f"\n{model}, {args.sampler}, noise {args.noise}, {args.slices} slices of {args.side}² -> 224², "
          f"{'bf16 autocast' if device.type == 'cuda' else 'fp32'}, scan backend {scan}, {card}, "
          f"torch {torch.__version__}, peak memory {peak}")
    print("| steps | batch | total s | s/slice | prepare s | VAE s | CLIP s | embedder s | backbone s "
          "| finish s | rest s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for steps, batch_size, total, stages in rows:
        parts = [stages.get(stage, 0.0) for stage in STAGES]
        print(f"| {steps} | {batch_size} | {total:.2f} | {total / args.slices:.4f} | "
              + " | ".join(f"{value:.2f}" for value in parts) + f" | {total - sum(parts):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
