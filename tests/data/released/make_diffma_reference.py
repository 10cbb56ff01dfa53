"""Make the DiffMa / embedder / scan-order reference tensors by running the released code (not stored here).

Usage (CPU; nothing of this runs in our tests):
    python tests/data/released/make_diffma_reference.py RELEASED_DIR MAMBA_SSM_SRC CAUSAL_CONV1D_SRC \
        EMBEDDER_PT OUT_DIR

RELEASED_DIR: checkout of wongzbb/DiffMa-Diffusion-Mamba; MAMBA_SSM_SRC / CAUSAL_CONV1D_SRC: the unpacked
sdists mamba_ssm-2.3.2.post1 and causal_conv1d-1.7.0 (folders holding the `mamba_ssm` / `causal_conv1d`
packages); EMBEDDER_PT: the released `brain_patch_size_2.pt`. einops must be importable.

The released code calls mamba-ssm's CUDA-only `mamba_inner_fn`. Here the mamba-ssm and causal-conv1d
sources are imported with empty stand-ins for their CUDA extensions, and their own pure-PyTorch
reference functions take the CUDA functions' places: `mamba_inner_ref` for `mamba_inner_fn`,
`selective_scan_ref` for `selective_scan_fn`, `causal_conv1d_ref` for `causal_conv1d_fn`. So the
reference is mamba-ssm's own reference path, independent of diffma's scan.

Writes:
- diffma_<case>.safetensors: a tiny released `DiffMa(block_type='spiral')` with every parameter but the
  fixed pos_embed overwritten by seeded random values (the released init zeroes the output layers);
  tensors `model.<key>` (the full state dict), `input.{x,t,y,y2,w}`, `output`; metadata `config` (JSON,
  the released constructor arguments) and `init_facts` (JSON, what the released init produced).
- embedder_brain_p2.safetensors: `ema.<key>` of the released checkpoint, `input.z` (1, 4, 28, 28),
  `output.weight`, `output.tokens` of the released `CT_Encoder` loaded with that EMA state.
- scan_orders.safetensors: `tools.spiral(n)` lists for n = 14, 7, 4: `spiral<n>.lists` (16, n²) and
  `spiral<n>.inverse` (16, n²); metadata `param_counts` (JSON): released parameter count of every
  DiffMa-<size>/<patch> name (built on the meta device) and of CT_Encoder(patch 2, width 512).
"""

import json
import sys
import types
from pathlib import Path

import torch
from safetensors.torch import save_file

CASES = {
    # depth 4: block 3 takes the long skip from block 0; n = 14 (even: the spiral leaves the grid)
    "p2": dict(input_size=28, patch_size=2, strip_size=2, hidden_size=32, depth=4),
    # depth 5: blocks 3 and 4 take skips; n = 7
    "p4": dict(input_size=28, patch_size=4, strip_size=4, hidden_size=16, depth=5),
    # n = 4, a different spiral start; depth 3 (block 2 takes the skip from block 0)
    "p7": dict(input_size=28, patch_size=7, strip_size=7, hidden_size=16, depth=3),
}


def install_released_environment(released_dir: str, mamba_src: str, conv_src: str):
    for name in ("selective_scan_cuda", "causal_conv1d_cuda"):
        sys.modules[name] = types.ModuleType(name)  # CUDA extensions: absent, never called
    package = types.ModuleType("mamba_ssm")  # skip mamba_ssm/__init__.py (it needs transformers)
    package.__path__ = [str(Path(mamba_src) / "mamba_ssm")]
    sys.modules["mamba_ssm"] = package
    sys.path[:0] = [mamba_src, conv_src, released_dir]

    import mamba_ssm.ops.selective_scan_interface as interface
    from causal_conv1d.causal_conv1d_interface import causal_conv1d_ref

    interface.causal_conv1d_fn = causal_conv1d_ref
    interface.selective_scan_fn = interface.selective_scan_ref
    interface.mamba_inner_fn = interface.mamba_inner_ref


def randomise(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Seeded values for every parameter but pos_embed; A_log stays near log(1..N) so A < 0."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name == "pos_embed":
                continue
            noise = torch.randn(param.shape, generator=generator)
            if name.endswith("A_log"):
                param.add_(0.1 * noise)
            elif name.endswith(("norm1.weight", "attention_network.0.weight")):
                param.copy_(1 + 0.1 * noise)
            else:
                param.copy_(0.15 * noise)


def init_facts(model: torch.nn.Module) -> dict:
    """What the released initialisation leaves in place (for docs/architecture.md)."""
    block = model.blocks[0]
    return {
        "dt_proj_bias_all_zero": bool((block.mamba1.dt_proj.bias == 0).all()),
        "attention_network_1_weight_abs_mean": block.attention_network[1].weight.abs().mean().item(),
        "attention_network_3_weight_all_zero": bool((block.attention_network[3].weight == 0).all()),
        "adaLN_all_zero": bool((block.adaLN_modulation[-1].weight == 0).all()),
    }


def diffma_case(model_module, config: dict, seed: int) -> tuple[dict, dict]:
    torch.manual_seed(seed)
    model = model_module.DiffMa(**config, block_type="spiral")
    facts = init_facts(model)
    generator = torch.Generator().manual_seed(seed)
    randomise(model, generator)
    model.eval()
    tokens = (config["input_size"] // config["patch_size"]) ** 2
    width = config["hidden_size"]
    inputs = {
        "x": torch.randn(2, 4, config["input_size"], config["input_size"], generator=generator),
        "t": torch.tensor([3.0, 871.0]),
        "y": torch.randn(2, width, generator=generator),
        "y2": torch.randn(2, tokens, width, generator=generator),
        "w": torch.rand(2, tokens, 1, generator=generator),
    }
    with torch.no_grad():
        output = model(**inputs)
    tensors = {f"model.{k}": v.contiguous() for k, v in model.state_dict().items()}
    tensors.update({f"input.{k}": v for k, v in inputs.items()})
    tensors["output"] = output
    return tensors, facts


def main(released_dir, mamba_src, conv_src, embedder_pt, out_dir):
    install_released_environment(released_dir, mamba_src, conv_src)
    import model as model_module
    from block.CT_encoder import CT_Encoder
    from tools import spiral

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for index, (case, config) in enumerate(CASES.items()):
        tensors, facts = diffma_case(model_module, config, seed=100 + index)
        metadata = {"config": json.dumps(config), "init_facts": json.dumps(facts)}
        save_file(tensors, out / f"diffma_{case}.safetensors", metadata=metadata)

    # The released embedder checkpoint, read with the released code's own loading (plain torch.load).
    checkpoint = torch.load(embedder_pt, map_location="cpu", weights_only=False)
    encoder = CT_Encoder(img_size=28, patch_size=2, in_channels=4, embed_dim=512, contain_mask_token=True)
    encoder.load_state_dict(checkpoint["ema"])
    encoder.eval()
    z = torch.randn(1, 4, 28, 28, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        weight, tokens = encoder(z)
    tensors = {f"ema.{k}": v.contiguous() for k, v in checkpoint["ema"].items()}
    tensors.update({"input.z": z, "output.weight": weight, "output.tokens": tokens})
    save_file(tensors, out / "embedder_brain_p2.safetensors")

    tensors = {}
    for n in (14, 7, 4):
        lists, inverse = spiral(n)
        tensors[f"spiral{n}.lists"] = torch.tensor(lists, dtype=torch.int16)
        tensors[f"spiral{n}.inverse"] = torch.tensor(inverse, dtype=torch.int16)
    counts = {}
    for name, factory in model_module.DiffMa_models.items():
        if name.startswith("DiffMa-"):
            with torch.device("meta"):
                counts[name] = sum(p.numel() for p in factory().parameters())
    with torch.device("meta"):
        embedder = CT_Encoder(img_size=28, patch_size=2, in_channels=4, embed_dim=512)
    counts["embedder/2"] = sum(p.numel() for p in embedder.parameters())
    save_file(tensors, out / "scan_orders.safetensors", metadata={"param_counts": json.dumps(counts)})


if __name__ == "__main__":
    if len(sys.argv) != 6:
        sys.exit(__doc__)
    main(*sys.argv[1:])
