"""mamba-ssm's CUDA scan against our PyTorch scan inside a whole DiffMa model: outputs, gradients, time.

Usage (on the GPU machine, after `source .dev/device-env.sh` so that mamba-ssm imports):
    python3 benchmarks/scan_backends_gpu.py                        # DiffMa-B/2, batch 4, fp32 and bf16
    python3 benchmarks/scan_backends_gpu.py --model DiffMa-S/2 --batch 8

The model gets the released initialisation plus N(0, 0.02²) noise on every trainable parameter (the
released init zeroes the gates, which would hide the blocks). One forward and one backward of a fixed
random projection of the output per backend; "bf16" is autocast with float32 weights, "fp32" disables TF32.
Errors are relative: ‖ours − theirs‖ / ‖theirs‖ for the output, and the largest such ratio over all
parameter gradients (with the parameter's name). Times: median of --repeat forward+backward passes.
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from diffma_cli.models import create_model
from diffma_cli.models.ops.selective_scan import mamba_ssm_scan_fn, scan_backend


def run(model, inputs, projection, backend: str, dtype: str):
    model.zero_grad(set_to_none=True)
    with scan_backend(backend), torch.autocast("cuda", torch.bfloat16, enabled=dtype == "bf16"):
        out = model(*inputs)
    (out.float() * projection).sum().backward()
    grads = {name: p.grad.detach().float().clone()
             for name, p in model.named_parameters() if p.grad is not None}
    return out.detach().float(), grads


def time_ms(model, inputs, projection, backend: str, dtype: str, repeat: int) -> float:
    times = []
    for _ in range(repeat + 1):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run(model, inputs, projection, backend, dtype)
        stop.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times[1:])


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp(min=1e-30)).item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="DiffMa-B/2")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    if mamba_ssm_scan_fn() is None:
        raise SystemExit("mamba-ssm does not import here: source .dev/device-env.sh first")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    model = create_model(args.model).cuda()
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.02 * torch.randn_like(param))
    size, tokens, width = model.grid_size * model.patch_size, model.grid_size**2, model.pos_embed.shape[-1]
    g = torch.Generator(device="cuda").manual_seed(1)
    inputs = (torch.randn(args.batch, 4, size, size, device="cuda", generator=g),
              torch.randint(0, 1000, (args.batch,), device="cuda", generator=g).float(),
              torch.randn(args.batch, width, device="cuda", generator=g),
              torch.randn(args.batch, tokens, width, device="cuda", generator=g),
              torch.rand(args.batch, tokens, 1, device="cuda", generator=g))
    projection = torch.randn(args.batch, 8, size, size, device="cuda", generator=g)
    results = []
    for dtype in ("fp32", "bf16"):
        ours, our_grads = run(model, inputs, projection, "torch", dtype)
        theirs, their_grads = run(model, inputs, projection, "mamba_ssm", dtype)
        worst = max(their_grads, key=lambda name: relative(our_grads[name], their_grads[name]))
        results.append({
            "model": args.model, "batch": args.batch, "dtype": dtype,
            "output_rel_error": relative(ours, theirs),
            "grad_rel_error_max": relative(our_grads[worst], their_grads[worst]), "grad_worst_param": worst,
            "ms_torch": time_ms(model, inputs, projection, "torch", dtype, args.repeat),
            "ms_mamba_ssm": time_ms(model, inputs, projection, "mamba_ssm", dtype, args.repeat),
            "device": torch.cuda.get_device_name(0),
        })
        print(json.dumps(results[-1]), flush=True)


if __name__ == "__main__":
    main()
