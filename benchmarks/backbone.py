"""Backbone throughput on one GPU: training steps and forward passes, ours and (optionally) the released code.

Usage (on a GPU machine; benchmarks/gpu/README.md sets up one without a package registry):

    python3 benchmarks/backbone.py                          # the default grid, prints one table
    python3 benchmarks/backbone.py --models DiffMa-B/2 --batches 32 --modes train --dtypes bf16
    python3 benchmarks/backbone.py --released PATH   # the authors' code beside ours
    python3 benchmarks/backbone.py --models DiffMa-B/2 --mixer fused_triton   # the fused mixer kernels

Timing: CUDA events around each step after warm-up, median of `--repeat` steps; peak memory from
torch.cuda.max_memory_allocated. A training step is forward + MSE loss + backward + AdamW step (lr 1e-4,
the released optimiser); "forward" is a no-grad forward; "graph" replays that forward captured in a CUDA
graph (how a sampler can run it). Inputs are drawn at random once per configuration (never zeros). `fp32`
allows TF32 matrix units (as the released numbers in docs/reference.md §4 were taken); `bf16` is autocast with
float32 weights.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch

GRID = {
    "models": ["DiffMa-B/2", "DiT-B/2", "ZigMa-BL/2", "VMamba-BL/2"],
    "batches": [8, 32, 64],
    "resolutions": [224, 512],
    "dtypes": ["fp32", "bf16"],
    "modes": ["train", "forward", "graph"],
}


def make_inputs(model, batch: int, latent: int, device):
    patch = model.config.get("patch_size", 2)
    hidden = model.config.get("hidden_size", 512)
    tokens = (latent // patch) ** 2
    generator = torch.Generator(device=device).manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, device=device, generator=generator)

    x = randn(batch, 4, latent, latent)
    t = torch.randint(0, 1000, (batch,), device=device, generator=generator)
    return x, t, randn(batch, 512), randn(batch, tokens, hidden), torch.rand(batch, tokens, 1, device=device)


def tile_overrides(text: str) -> dict:
    """argparse type of a scan-tile override, "chunk=1,subchunks=8" -> {"chunk": 1, "subchunks": 8} (the
    keys of `selective_scan_triton.default_config`); "" -> {}. benchmarks/triton_registers.py uses it too."""
    overrides = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        if key not in ("block_d", "chunk", "num_warps", "subchunks") or not value.isdigit() or int(value) < 1:
            raise argparse.ArgumentTypeError(f"{item!r}: expected block_d, chunk, num_warps or subchunks "
                                             "= a positive integer")
        overrides[key] = int(value)
    return overrides


def time_steps(step, warmup: int, repeat: int, give_up_ms: float | None = None) -> list[float]:
    """Milliseconds of `repeat` calls of `step` (CUDA events around each), after `warmup` untimed calls.
    With `give_up_ms`, stop after two calls that both took longer (a reference path of seconds per call).
    benchmarks/scan_kernels_gpu.py times its kernels with this too."""
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
        if give_up_ms is not None and len(times) == 2 and min(times) > give_up_ms:
            break
    return times


def benchmark(model, *, batch, latent, dtype, mode, warmup, repeat):
    device = torch.device("cuda")
    inputs = make_inputs(model, batch, latent, device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=(dtype == "bf16"))
    if mode == "train":
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0)
        target = torch.randn(batch, 8, latent, latent, device=device)

        def step():
            with autocast:
                out = model(*inputs)
            loss = torch.nn.functional.mse_loss(out.float(), target)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    elif mode == "forward":
        model.eval()

        def step():
            with torch.no_grad(), autocast:
                model(*inputs)
    else:  # "graph": the forward captured once in a CUDA graph and replayed (how a sampler can run it)
        model.eval()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.no_grad(), autocast:
            for _ in range(3):
                model(*inputs)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), torch.no_grad(), autocast:
            model(*inputs)
        step = graph.replay

    torch.cuda.reset_peak_memory_stats()
    times = time_steps(step, warmup, repeat)
    ms = statistics.median(times)
    return {"ms": ms, "img_per_s": batch / ms * 1e3, "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
            "spread_ms": max(times) - min(times)}


def build_ours(name: str, latent: int, scan: str | None = None):
    from diffma_cli.models import create_model

    overrides = {"input_size": latent}
    if scan and name.startswith("DiffMa"):
        overrides["scan"] = scan
    return create_model(name, **overrides)


def build_released(path: str, name: str, latent: int):
    """The authors' DiffMa from a checkout of their repository (never part of ours)."""
    sys.path.insert(0, path)
    import model as released  # noqa: PLC0415  (their model.py)

    factory = {"DiffMa-B/2": "DiffMa_B_2", "DiT-B/2": "DiT_B_2"}[name]
    net = getattr(released, factory)(input_size=latent)
    net.config = {"patch_size": 2, "hidden_size": 512}
    return net


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for key, default in GRID.items():
        parser.add_argument(f"--{key}", default=",".join(map(str, default)))
    parser.add_argument("--released", help="checkout of the released DiffMa code to time beside ours")
    parser.add_argument("--scan", choices=["released", "spiral"], help="scan mode of our DiffMa models")
    parser.add_argument("--compile", action="store_true", help="torch.compile our models first")
    parser.add_argument("--conv", choices=["auto", "torch", "causal_conv1d"], default="auto",
                        help="convolution backend of our Mamba mixers (diffma_cli/models/ops/causal_conv.py)")
    parser.add_argument("--mixer", choices=["auto", "unfused", "fused_triton"], default="auto",
                        help="our Mamba mixers' path: fused_triton reads and merges the orders inside Triton "
                             "kernels (diffma_cli/models/ops/mixer_triton.py)")
    parser.add_argument("--fused-grid", choices=["auto", "serial", "split"], default="auto",
                        help="fused_triton: the scan kernel's grid (mixer_triton.SPLIT_ORDERS)")
    parser.add_argument("--fused-tile", type=tile_overrides, default={},
                        help="fused_triton: overrides of the scan kernels' tile, e.g. chunk=1,subchunks=8 or "
                             "num_warps=1,block_d=32 (mixer_triton.TILE_OVERRIDE)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--json", help="write all rows to this file")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks/backbone.py needs a CUDA GPU", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    card = torch.cuda.get_device_name(0)
    from diffma_cli.models.mamba import mixer_backend
    from diffma_cli.models.ops.causal_conv import conv_backend

    mixer = args.mixer
    if args.mixer == "fused_triton":
        from diffma_cli.models.ops import mixer_triton

        mixer_triton.SPLIT_ORDERS = args.fused_grid
        mixer_triton.TILE_OVERRIDE = args.fused_tile
        tile = ",".join(f"{key}={value}" for key, value in args.fused_tile.items()) or "default"
        mixer = f"fused_triton (grid {args.fused_grid}, tile {tile})"
    with conv_backend(args.conv), mixer_backend(args.mixer):
        rows = run_grid(args, card, mixer)
    header = "| code | model | res | mode | dtype | batch | ms/step | img/s | peak GiB |"
    print(f"\n{header}   ({card}; conv {args.conv}; mixer {mixer})")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['code']} | {r['model']} | {r['resolution']} | {r['mode']} | {r['dtype']} | "
              f"{r['batch']} | {r['ms']:.1f} | {r['img_per_s']:.0f} | {r['peak_gib']:.2f} |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(rows, handle, indent=1)
    return 0


def run_grid(args, card: str, mixer: str) -> list[dict]:
    """One row per model, resolution, mode, dtype and batch of the command line."""
    rows = []
    builders = [("ours", lambda name, latent: build_ours(name, latent, args.scan))]
    if args.released:
        builders.append(("released", lambda name, latent: build_released(args.released, name, latent)))
    for code, build in builders:
        for name in args.models.split(","):
            for resolution in map(int, args.resolutions.split(",")):
                latent = resolution // 8
                try:
                    model = build(name, latent).cuda()
                except (KeyError, ValueError) as error:
                    print(f"skip {code} {name}: {error}", file=sys.stderr)
                    continue
                params = sum(p.numel() for p in model.parameters()) / 1e6
                if args.compile and code == "ours":
                    model = torch.compile(model)
                for mode in args.modes.split(","):
                    for dtype in args.dtypes.split(","):
                        for batch in map(int, args.batches.split(",")):
                            try:
                                result = benchmark(model, batch=batch, latent=latent, dtype=dtype, mode=mode,
                                                   warmup=args.warmup, repeat=args.repeat)
                            except torch.cuda.OutOfMemoryError:
                                result = {"ms": float("nan"), "img_per_s": float("nan"),
                                          "peak_gib": float("nan"), "spread_ms": float("nan")}
                                torch.cuda.empty_cache()
                            rows.append({"code": code, "model": name, "params_m": round(params, 3),
                                         "resolution": resolution, "mode": mode, "dtype": dtype,
                                         "batch": batch, **result, "card": card, "conv": args.conv,
                                         "mixer": mixer})
                            r = rows[-1]
                            print(f"{code:8s} {name:12s} {resolution:4d} {mode:7s} {dtype:4s} b{batch:<3d} "
                                  f"{r['ms']:8.2f} ms {r['img_per_s']:8.0f} img/s {r['peak_gib']:6.2f} GiB",
                                  flush=True)
                del model
                torch.cuda.empty_cache()
    return rows


if __name__ == "__main__":
    sys.exit(main())
