"""End-to-end `diffma train` on synthetic data on GPUs: images/s and peak memory of the whole training step.

Offline on purpose (the GPU machine has no hub access): the VAE is the `tiny` stand-in and CLIP the `tiny`
ViT stand-in (512-d output like BiomedCLIP), so the numbers measure the backbone + embedder + loss + loop,
with the encoders' work done once in the latent cache as in every diffma training.

    source benchmarks/gpu/device_env.sh
    python benchmarks/train_gpu.py data WORK                       # synth + prepare + train-embedder
    python benchmarks/train_gpu.py train WORK --steps 60 --batch-size 32 --name b2-1gpu
    torchrun --standalone --nproc-per-node 2 benchmarks/train_gpu.py train WORK --steps 60 \
        --batch-size 32 --name b2-2gpu

`train` prints one JSON line (rank 0): model, GPUs, global batch, images/s after the first log window
(warm-up excluded), peak GPU memory of rank 0, final loss.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ENCODERS = {"encoders.vae": "tiny", "encoders.clip": "tiny", "encoders.offline": True}


def make_data(work: Path, cases: int) -> None:
    from diffma_cli.config import apply_overrides, load_recipe
    from diffma_cli.data.prepare import PrepareOptions, prepare
    from diffma_cli.data.synth import write_synthetic_tree
    from diffma_cli.train.api import train_embedder

    write_synthetic_tree(work / "synth", ("brain",), cases, size="small", overwrite=True)
    prepare(work / "synth" / "Task1", work / "data", PrepareOptions(), overwrite=True)
    recipe = apply_overrides(load_recipe("brain"), {**ENCODERS, "embedder.training.steps": 50})
    train_embedder(work / "data", work / "embedder", recipe, overwrite=True)


def train(work: Path, model: str, steps: int, batch_size: int, name: str, precision: str) -> None:
    from diffma_cli.config import apply_overrides, load_recipe
    from diffma_cli.devices import is_main_process
    from diffma_cli.runs import read_run_info
    from diffma_cli.train.api import train_diffusion
    from diffma_cli.train.run_log import read_records

    recipe = apply_overrides(load_recipe("brain"), {
        **ENCODERS, "model.name": model, "training.steps": steps, "training.global_batch_size": batch_size,
        "training.precision": precision, "training.log_every": 10, "training.num_workers": 4})
    run = work / "runs" / name
    train_diffusion(work / "data", run, recipe, work / "embedder", overwrite=True)
    if not is_main_process():
        return
    info = read_run_info(run)
    records = read_records(run)[1:]  # the first window holds start-up and kernel selection
    speed = sum(r["images_per_s"] for r in records) / len(records) if records else None
    print(json.dumps({"name": name, "model": model, "gpus": info["world_size"], "global_batch": batch_size,
                      "precision": precision, "steps": info["steps"], "images_per_s": speed,
                      "peak_gpu_memory_gib": info.get("peak_gpu_memory_gib"),
                      "final_loss": info["final_loss"]}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=("data", "train"))
    parser.add_argument("work", type=Path)
    parser.add_argument("--cases", type=int, default=6)
    parser.add_argument("--model", default="DiffMa-B/2")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    parser.add_argument("--name", default="run")
    args = parser.parse_args()
    if args.stage == "data":
        make_data(args.work, args.cases)
    else:
        train(args.work, args.model, args.steps, args.batch_size, args.name, args.precision)


if __name__ == "__main__":
    main()
