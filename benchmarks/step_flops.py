"""Matrix-product work of one training image: DiffMa-B/2 against DiT-B/2 and ZigMa-BL/2, on any machine.

Usage (CPU, no GPU needed; a few minutes, most of it DiffMa at 1024²):

    python3 benchmarks/step_flops.py [--resolutions 224,512,1024] [--models DiffMa-B/2,DiT-B/2,ZigMa-BL/2]

Each model runs one forward and backward of batch 1 on the `meta` device (shapes only, no arithmetic)
under `torch.utils.flop_counter.FlopCounterMode`, which counts the matrix products (aten.mm, addmm, bmm)
and attention. Convolutions are left out: the counter charges the depthwise convolution's backward as a
dense one (1 024 times its work), and the real cost of the patch embedding and of the mixers' convolutions
is well under 1 % of the total.

DiffMa's mixers apply `out_proj` to each of the K scan orders before merging them on the default path
(moving D instead of 2D values per token through the merge, models/mamba.py); the fused mixer merges first
and projects once. The "fused" column removes the (K - 1) / K of every mixer's `out_proj` work that this
saves, from the same count. A FLOP count bounds nothing by itself (the step is not compute-bound at these
sizes: docs/benchmarks.md); it says what work a kernel cannot avoid.
"""

from __future__ import annotations

import argparse

import torch

MATMULS = ("aten.mm", "aten.addmm", "aten.bmm", "aten._scaled_dot_product")


def matmul_flops(counts: dict) -> float:
    return sum(value for op, value in counts.items() if str(op).startswith(MATMULS))


def training_flops(name: str, resolution: int) -> dict:
    """GFLOP of matrix products for one image: forward, forward + backward, and what the fused mixer
    saves (DiffMa only)."""
    from torch.utils.flop_counter import FlopCounterMode

    from diffma_cli.models import create_model
    from diffma_cli.models.mamba import MultiOrderMamba

    latent = resolution // 8
    with torch.device("meta"):
        model = create_model(name, input_size=latent)
        patch, width = model.config["patch_size"], model.config["hidden_size"]
        tokens = (latent // patch) ** 2
        inputs = (torch.randn(1, 4, latent, latent), torch.zeros(1, dtype=torch.long), torch.randn(1, 512),
                  torch.randn(1, tokens, width), torch.rand(1, tokens, 1))
    with FlopCounterMode(display=False, depth=None) as counter:
        out = model(*inputs)
        forward = matmul_flops(counter.get_flop_counts()["Global"])
        out.float().square().mean().backward()
    counts = counter.get_flop_counts()
    total = matmul_flops(counts["Global"])
    saved = 0.0
    orders = {path: module.orders.shape[0] for path, module in model.named_modules()
              if isinstance(module, MultiOrderMamba) and module.fusable}
    for path, k in orders.items():
        out_proj = matmul_flops(counts.get(f"{type(model).__name__}.{path}.out_proj", {}))
        saved += out_proj * (k - 1) / k
    return {"forward": forward / 1e9, "train": total / 1e9, "fused_train": (total - saved) / 1e9,
            "tokens": tokens}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolutions", default="224,512,1024", help="slice sizes, comma-separated")
    parser.add_argument("--models", default="DiffMa-B/2,DiT-B/2,ZigMa-BL/2",
                        help="registry names, comma-separated; the ratio column needs DiT-B/2 among them")
    args = parser.parse_args(argv)
    models = args.models.split(",")
    print("| model | res | tokens | forward GFLOP/image | training GFLOP/image | with the fused mixer | "
          "training / DiT-B/2's |")
    print("|---|---|---|---|---|---|---|")
    for resolution in map(int, args.resolutions.split(",")):
        rows = {name: training_flops(name, resolution) for name in models}
        reference = rows.get("DiT-B/2", {}).get("train")
        for name, row in rows.items():
            fused = f"{row['fused_train']:.1f}" if row["fused_train"] < row["train"] else "–"
            ratio = f"{row['fused_train'] / reference:.2f}" if reference else "–"  # = train where none saved
            print(f"| {name} | {resolution}² | {row['tokens']} | {row['forward']:.1f} | {row['train']:.1f} | "
                  f"{fused} | {ratio} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
