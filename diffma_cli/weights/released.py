"""Checkpoints of the authors' released implementation (`wongzbb/DiffMa-Diffusion-Mamba`).

Both of its training scripts save `{"model": state_dict, "ema": state_dict, "opt": optimizer state,
"args": options}` with `torch.save`; `args` is an `argparse.Namespace` (embedder pre-training) or an
OmegaConf `DictConfig` (diffusion training, whose `model` entry names the backbone, e.g. "DiffMa-L/2").
The file is read with `torch_checkpoint.read_torch_checkpoint`, which never runs code from it.

A state dict says which network it belongs to through its key names and shapes (released `model.py`,
`block/mamba_block.py`, `block/CT_encoder.py`):

| keys | network |
|---|---|
| `vision_embedding.proj.weight` (D, C, p, p), `fc.0.weight` (T/14, T) | CT Vision Embedder `embedder/p` |
| `blocks.i.mamba1.*`, `blocks.i.mamba2.*`, `blocks.i.attention_network.*` | DiffMa backbone |
| `blocks.i.attn.qkv.*`, `blocks.i.mlp.*` | DiT backbone |
| `blocks.i.mamba.*` | ZigMa, ViM, VMamba or EMamba (same keys and shapes: `args.model` or the user tells) |

Backbones: `x_embedder.proj.weight` (D, C, p, p) gives width D, latent channels C and patch p; `pos_embed`
(1, T, D) the token grid (input size = √T·p); the number of `blocks.i` the depth; `final_layer.linear.weight`
(p²·C_out, D) whether the variance is learned (C_out = 2C); a Mamba mixer's `A_log` (Di, N) the state
size N. Checkpoints with Mamba blocks were trained with the released token orders: scan = "released".
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffma_cli.errors import InputError
from diffma_cli.weights.torch_pickle import StoredTensor, plain_data, read_torch_checkpoint

#: Depth of each released size letter (`model.py`): S 4, B 8, L 16, XL 28, XXL 56, and the 13-layer "BL"
#: baselines and 7-layer "SB" DiT the paper compares at matched parameter counts.
SIZE_OF_DEPTH = {4: "S", 7: "SB", 8: "B", 13: "BL", 16: "L", 28: "XL", 56: "XXL"}

#: The released baselines whose blocks hold one Mamba mixer under `blocks.i.mamba`.
SINGLE_MIXER_FAMILIES = ("ZigMa", "ViM", "VMamba", "EMamba")

_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.")


@dataclass
class ReleasedCheckpoint:
    """What a released `.pt` holds: `content` is the unpickled top-level object, tensors not yet read."""

    path: Path
    content: Any

    @classmethod
    def read(cls, path: str | Path) -> ReleasedCheckpoint:
        path = Path(path)
        return cls(path, read_torch_checkpoint(path))

    @property
    def is_training_checkpoint(self) -> bool:
        """True for the released {model, ema, opt, args} layout, False for a bare state dict."""
        return isinstance(self.content, dict) and ("model" in self.content or "ema" in self.content)

    def stored_weights(self, ema: bool = True) -> dict[str, StoredTensor]:
        """The EMA state dict (default) or the raw `model` one; a bare state dict is returned as it is."""
        if self.is_training_checkpoint:
            which = "ema" if ema else "model"
            if which not in self.content:
                raise InputError(f"has no `{which}` weights (it holds: {', '.join(map(str, self.content))})",
                                 path=self.path, hint="use --raw for the `model` weights" if ema else None)
            weights = self.content[which]
        else:
            weights = self.content
        if not (isinstance(weights, dict) and weights
                and all(isinstance(key, str) and isinstance(value, StoredTensor)
                        for key, value in weights.items())):
            raise InputError("does not hold a state dict of tensors where the released code puts its weights",
                             path=self.path)
        return dict(weights)

    def args(self) -> dict[str, Any] | None:
        """The training options as plain data (Namespace/DictConfig -> dict), or None if absent."""
        if not self.is_training_checkpoint or "args" not in self.content:
            return None
        args = plain_data(self.content["args"])
        return args if isinstance(args, dict) else {"args": args}


def _shape(weights: Mapping[str, Any], key: str, path: Path) -> tuple[int, ...]:
    if key not in weights:
        raise InputError(f"is not a released DiffMa checkpoint: it has no `{key}`", path=path)
    return tuple(weights[key].shape)


def recognise_embedder(weights: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """Config of a released CT Vision Embedder state dict: {"name": "embedder/p", ...}."""
    hidden_size, in_channels, patch_size, _ = _shape(weights, "vision_embedding.proj.weight", path)
    tokens = _shape(weights, "fc.0.weight", path)[1]
    return {"name": f"embedder/{patch_size}", "hidden_size": hidden_size, "in_channels": in_channels,
            "input_size": _grid_side(tokens, path) * patch_size}


def _grid_side(tokens: int, path: Path) -> int:
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise InputError(f"has {tokens} tokens, not a square grid", path=path)
    return side


def _family(weights: Mapping[str, Any], model_name: str | None, path: Path) -> str:
    if "blocks.0.mamba1.in_proj.weight" in weights:
        return "DiffMa"
    if "blocks.0.attn.qkv.weight" in weights:
        return "DiT"
    if "blocks.0.mamba.in_proj.weight" in weights:
        family = str(model_name or "").split("-")[0]
        if family in SINGLE_MIXER_FAMILIES:
            return family
        raise InputError(
            f"holds single-mixer Mamba blocks, which {', '.join(SINGLE_MIXER_FAMILIES)} share with identical "
            "keys and shapes, and its options do not say which", path=path,
            hint="name the model, e.g. --model ZigMa-BL/2 (Python: load_model(path, name='ZigMa-BL/2'))")
    raise InputError("is not a released DiffMa checkpoint: its `blocks.0.*` keys match no known block "
                     "(DiffMa, DiT, ZigMa, ViM, VMamba, EMamba)", path=path)


def recognise_backbone(weights: Mapping[str, Any], path: Path,
                       model_name: str | None = None) -> dict[str, Any]:
    """Config of a released diffusion backbone state dict: name, depth, width, patch, grid, channels."""
    hidden_size, in_channels, patch_size, _ = _shape(weights, "x_embedder.proj.weight", path)
    tokens = _shape(weights, "pos_embed", path)[1]
    depth = 1 + max((int(match.group(1)) for key in weights if (match := _BLOCK_KEY.match(key))), default=-1)
    if depth == 0:
        raise InputError("is not a released DiffMa checkpoint: it has no `blocks.*`", path=path)
    out_channels = _shape(weights, "final_layer.linear.weight", path)[0] // (patch_size * patch_size)
    family = _family(weights, model_name, path)
    if not (model_name and model_name.split("-")[0] == family):  # else keep the name the user or file gave
        model_name = f"{family}-{SIZE_OF_DEPTH.get(depth, 'B')}/{patch_size}"
    config = {
        "name": model_name,
        "depth": depth, "hidden_size": hidden_size, "patch_size": patch_size, "in_channels": in_channels,
        "input_size": _grid_side(tokens, path) * patch_size, "learn_sigma": out_channels == 2 * in_channels,
    }
    if family != "DiT":  # Mamba blocks: trained with the released token orders; A_log (Di, N) gives N
        config["scan"] = "released"
        mixer = "mamba1" if family == "DiffMa" else "mamba"
        config["d_state"] = _shape(weights, f"blocks.0.{mixer}.A_log", path)[1]
    return config


def recognise(weights: Mapping[str, Any], path: Path, model_name: str | None = None) -> dict[str, Any]:
    """The config (create_model name and settings) of a released state dict; see the module docstring.

    `model_name` (the user's choice or the checkpoint's `args.model`) tells the single-mixer baselines apart.
    """
    if "vision_embedding.proj.weight" in weights:
        return recognise_embedder(weights, path)
    return recognise_backbone(weights, path, model_name)
