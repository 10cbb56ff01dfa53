"""Make the baseline reference tensors by running the released DiffMa code (not stored here) on CPU.

Usage: python tests/data/released/make_baselines_reference.py /path/to/DiffMa OUT_DIR

The released code imports mamba-ssm, whose CUDA extension is not available on a CPU, so this script puts
a small stand-in module on the path first: `mamba_inner_fn` written out in plain PyTorch from mamba-ssm's
`mamba_inner_ref` (causal depthwise conv + SiLU, x_proj, dt_proj, a step-loop selective scan, SiLU(z)
gate, out_proj). It is independent of diffma's own scan. For every baseline family it builds a tiny
model with the released `DiffMa(..., block_type=...)`, fills every parameter but the fixed `pos_embed`
with seeded random values (the released initialisation zeroes the output layers), runs one forward and
writes `baselines_<family>.safetensors`: weights `model.<key>`, inputs `input.{x,t,y,y2,w}`, `output`
(float32) and `output_float64` (the same weights and inputs in float64), and the configuration as JSON in
the metadata.
"""

import json
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file


def _selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus=True):
    """h_t = exp(Δ_t A) h_{t−1} + Δ_t B_t u_t, y_t = C_t·h_t + D u_t, times SiLU(z); (b, d, l) layout."""
    delta = delta + delta_bias[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for t in range(u.shape[2]):
        step = delta[:, :, t, None]
        h = torch.exp(step * A) * h + step * B[:, None, :, t] * u[:, :, t, None]
        ys.append((h * C[:, None, :, t]).sum(-1))
    y = torch.stack(ys, dim=2) + u * D[:, None]
    return y * F.silu(z)


def _mamba_inner_fn(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, out_proj_weight,
                    out_proj_bias, A, B=None, C=None, D=None, delta_bias=None, delta_softplus=True, **_):
    batch, _, length = xz.shape
    rank, state = delta_proj_weight.shape[1], A.shape[1]
    x, z = xz.chunk(2, dim=1)
    width = conv1d_weight.shape[-1]
    x = F.silu(F.conv1d(x, conv1d_weight, conv1d_bias, padding=width - 1, groups=x.shape[1])[..., :length])
    x_dbl = F.linear(x.transpose(1, 2), x_proj_weight)  # (b, l, rank + 2N)
    delta = F.linear(x_dbl[..., :rank], delta_proj_weight).transpose(1, 2)  # (b, d, l), bias added in scan
    B = x_dbl[..., rank:rank + state].transpose(1, 2)
    C = x_dbl[..., rank + state:].transpose(1, 2)
    y = _selective_scan(x, delta, A, B, C, D, z, delta_bias, delta_softplus)
    return F.linear(y.transpose(1, 2), out_proj_weight, out_proj_bias)


def _install_stand_ins() -> None:
    modules = {
        "mamba_ssm": {},
        "mamba_ssm.ops": {},
        "mamba_ssm.ops.selective_scan_interface": {"mamba_inner_fn": _mamba_inner_fn,
                                                   "selective_scan_fn": _selective_scan},
        "causal_conv1d": {"causal_conv1d_fn": None, "causal_conv1d_update": None},
        "block.mamba2": {"Mamba2": None},  # Mamba-2 variant, unused by the baselines
    }
    for name, attributes in modules.items():
        module = types.ModuleType(name)
        module.__dict__.update(attributes)
        sys.modules[name] = module


#: family -> released constructor arguments (tiny: width 16, 4–9 blocks, grids 4×4 to 7×7).
CASES = {
    "dit": dict(block_type="DiT", input_size=8, patch_size=2, hidden_size=16, depth=4),
    "zigma": dict(block_type="zig", input_size=12, patch_size=2, hidden_size=16, depth=9),
    "vim": dict(block_type="vim", input_size=16, patch_size=4, hidden_size=16, depth=4),
    "vmamba": dict(block_type="vmamba", input_size=14, patch_size=2, hidden_size=16, depth=4),
    "emamba": dict(block_type="efficientVMamba", input_size=12, patch_size=2, hidden_size=16, depth=4),
}


def main(released_dir: str, out_dir: str) -> None:
    _install_stand_ins()
    sys.path.insert(0, released_dir)
    import model as released  # noqa: PLC0415 (the released model.py, found through sys.path)

    def timestep_forward(self, t):  # as released, but the float32 frequencies cast to the MLP's dtype
        frequencies = self.timestep_embedding(t, self.frequency_embedding_size)
        return self.mlp(frequencies.to(self.mlp[0].weight.dtype))

    released.TimestepEmbed.forward = timestep_forward  # a no-op in float32; lets the float64 run through

    torch.manual_seed(0)
    for family, args in CASES.items():
        net = released.DiffMa(strip_size=args["patch_size"], **args).eval()
        with torch.no_grad():
            for key, param in sorted(net.named_parameters()):
                if key != "pos_embed":
                    param.copy_(0.3 * torch.randn(param.shape))
        n, d = 2, args["hidden_size"]
        tokens = (args["input_size"] // args["patch_size"]) ** 2
        inputs = {
            "x": torch.randn(n, 4, args["input_size"], args["input_size"]),
            "t": torch.tensor([3.0, 870.0]),
            "y": torch.randn(n, d),
            "y2": torch.randn(n, tokens, d),
            "w": torch.rand(n, tokens, 1),
        }
        with torch.no_grad():
            out = net(*inputs.values())
            # The same weights and inputs in float64: a reference free of float32 rounding, whose size
            # depends on the CPU's kernels (tests compare our float64 forward with it).
            out64 = net.double()(*[v.double() for v in inputs.values()])
            net.float()
        tensors = {f"model.{k}": v.contiguous() for k, v in net.state_dict().items()}
        tensors.update({f"input.{k}": v for k, v in inputs.items()})
        tensors["output"] = out.contiguous()
        tensors["output_float64"] = out64.contiguous()
        path = Path(out_dir) / f"baselines_{family}.safetensors"
        save_file(tensors, str(path), metadata={"config": json.dumps(args), "torch": torch.__version__})
        print(path, tuple(out.shape), f"{path.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main(*sys.argv[1:3])
