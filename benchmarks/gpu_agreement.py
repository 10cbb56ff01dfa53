"""How closely the CUDA fast path agrees with our PyTorch path, for a whole DiffMa-B/2 on the GPU.

Usage (GPU machine, see benchmarks/gpu/README.md):  python3 benchmarks/gpu_agreement.py

For float32 and for bf16 autocast it runs one forward and backward of DiffMa-B/2 (batch 4, random inputs and
weights, every adaLN/final layer re-initialised at random so that the output depends on every block) once
with the mamba-ssm scan kernel and once with our PyTorch scan, and prints ‖a − b‖ / ‖b‖ for the output and
for the gradients of all parameters together. It also compares our bf16 fast path with our float32 path.
"""

from __future__ import annotations

import sys

import torch


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def randomise(model: torch.nn.Module, seed: int = 0) -> None:
    """Give the zero-initialised layers (adaLN, fusion, final) random weights: an all-zero output compares
    nothing."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() >= 1 and not name.endswith("A_log") and "pos_embed" not in name:
                if torch.count_nonzero(parameter) == 0:
                    parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.02)


def forward_backward(model, inputs, backend: str, bf16: bool):
    from diffma_cli.models.ops.selective_scan import scan_backend

    model.zero_grad(set_to_none=True)
    with scan_backend(backend), torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
        out = model(*inputs)
    out.float().square().mean().backward()
    grads = torch.cat([p.grad.flatten().float() for p in model.parameters() if p.grad is not None])
    return out.detach().float(), grads


def agreement(name: str = "DiffMa-B/2", batch: int = 4) -> list[dict]:
    from diffma_cli.models import create_model

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    model = create_model(name)
    randomise(model)
    model = model.cuda()
    tokens = (model.config["input_size"] // model.config["patch_size"]) ** 2
    device = torch.device("cuda")
    inputs = (torch.randn(batch, 4, 28, 28, device=device), torch.randint(0, 1000, (batch,), device=device),
              torch.randn(batch, 512, device=device), torch.randn(batch, tokens, 512, device=device),
              torch.rand(batch, tokens, 1, device=device))
    rows = []
    results = {}
    for bf16 in (False, True):
        for backend in ("torch", "mamba_ssm"):
            results[backend, bf16] = forward_backward(model, inputs, backend, bf16)
        (out_fast, grad_fast), (out_ref, grad_ref) = results["mamba_ssm", bf16], results["torch", bf16]
        rows.append({"comparison": f"mamba_ssm vs torch scan, {'bf16' if bf16 else 'fp32'}",
                     "output": relative_error(out_fast, out_ref),
                     "grads": relative_error(grad_fast, grad_ref)})
    (out_bf16, grad_bf16), (out_fp32, grad_fp32) = results["mamba_ssm", True], results["torch", False]
    rows.append({"comparison": "fast path bf16 vs torch fp32", "output": relative_error(out_bf16, out_fp32),
                 "grads": relative_error(grad_bf16, grad_fp32)})
    return rows


def main() -> int:
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    print(f"| {torch.cuda.get_device_name(0)}, DiffMa-B/2, batch 4 | output rel. err. | grads rel. err. |")
    print("|---|---|---|")
    for row in agreement():
        print(f"| {row['comparison']} | {row['output']:.2e} | {row['grads']:.2e} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
