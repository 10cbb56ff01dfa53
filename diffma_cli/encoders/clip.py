"""The frozen BiomedCLIP image tower that gives DiffMa its (N, 512) CT condition `y`.

Only the visual tower is built — a timm ViT-B/16 with class-token pooling and no classifier, then a
bias-free Linear(768 → 512) — in open_clip's `TimmModel` layout, so the `visual.trunk.*` and
`visual.head.proj.weight` entries of an open_clip checkpoint load one to one. Building the whole open_clip
model would also fetch BiomedCLIP's PubMedBERT text config from the hub, even with local weights
(docs/reference.md §7). Weights come from the hub id, a local open_clip folder or a weights file; `"none"`
gives zeros (runs without CLIP) and `"tiny"` a small random stand-in for tests and the demo.

Input quirk of the released code, kept as the default (`normalize="released"`): the 3-channel CT slice in
[-1, 1] goes in as it is, without CLIP's mean/std normalisation. `normalize="clip"` applies it properly
(maps [-1, 1] to [0, 1], then the preprocessing mean/std of the checkpoint's open_clip config).
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import timm
import torch
from safetensors.torch import load_file
from torch import nn

from diffma_cli.encoders.source import (
    TINY,
    WEIGHT_SUFFIXES,
    freeze,
    hub_unreachable,
    offline_requested,
    source_kind,
    weights_fingerprint,
)
from diffma_cli.encoders.vae import to_three_channels
from diffma_cli.errors import InputError, UnsafeFileError

BIOMEDCLIP_HUB_ID = "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
NONE = "none"
WEIGHTS_FILE = "open_clip_pytorch_model.bin"
CONFIG_FILE = "open_clip_config.json"
NORMALIZE_CHOICES = ("released", "clip")

# BiomedCLIP's open_clip_config.json: vision_cfg and preprocess_cfg (OpenAI CLIP's mean/std).
BIOMEDCLIP_VISION = {"timm_model_name": "vit_base_patch16_224", "embed_dim": 512, "image_size": 224}
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# The stand-in: the same ViT family shrunk to ~125k parameters (width 32, 2 blocks, 32-pixel patches).
TINY_TRUNK = {"embed_dim": 32, "depth": 2, "num_heads": 2, "patch_size": 32}


class ClipVisual(nn.Module):
    """open_clip's TimmModel with pool '' and a linear projection: images (N, 3, S, S) -> (N, embed_dim)."""

    def __init__(self, timm_model_name: str, embed_dim: int, image_size: int,
                 trunk_overrides: dict | None = None):
        super().__init__()
        # num_classes=0 drops timm's head; the default global pool of a ViT is its class token.
        # trunk_overrides are timm arguments (its own `embed_dim` is the trunk width, not ours).
        self.trunk = timm.create_model(timm_model_name, pretrained=False, num_classes=0,
                                       img_size=image_size, **(trunk_overrides or {}))
        self.head = nn.Sequential()
        self.head.add_module("proj", nn.Linear(self.trunk.num_features, embed_dim, bias=False))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(images))  # (N, S, S) pixels -> (N, width) class token -> (N, embed_dim)


class FrozenClip(nn.Module):
    """Frozen CLIP image tower with DiffMa's input convention; `identity` says exactly what it computes."""

    def __init__(self, visual: ClipVisual | None, vision: dict, normalize: str, mean=OPENAI_CLIP_MEAN,
                 std=OPENAI_CLIP_STD, source: str = ""):
        super().__init__()
        if normalize not in NORMALIZE_CHOICES:
            raise InputError(f"unknown CLIP normalisation {normalize!r}",
                             hint=f"choose one of {', '.join(NORMALIZE_CHOICES)}")
        self.visual = None if visual is None else freeze(visual)
        self.embed_dim = int(vision["embed_dim"])
        self.image_size = int(vision["image_size"])
        self.normalize = normalize
        self.source = source
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.identity = {"encoder": "clip", "vision": vision, "normalize": normalize}
        if visual is None:
            self.identity["weights"] = NONE
        else:
            self.identity["weights_sha256"] = weights_fingerprint(visual)
            if normalize == "clip":
                self.identity["mean_std"] = [list(mean), list(std)]

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images (N, 1|3, S, S) in [-1, 1] (S = image_size, 224 for BiomedCLIP) -> float32 (N, embed_dim)
        on the tower's device."""
        images = to_three_channels(images).to(self.mean.device)
        if self.visual is None:
            return torch.zeros(images.shape[0], self.embed_dim, device=images.device)
        if tuple(images.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(f"CLIP expects {self.image_size}² images, got {tuple(images.shape[-2:])}")
        if self.normalize == "clip":
            images = ((images.float() + 1) / 2 - self.mean.float()) / self.std.float()
        dtype = next(self.visual.parameters()).dtype
        return self.visual(images.to(dtype)).float()


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        return load_file(path)
    try:
        # open_clip checkpoints are pickles: load tensors only, never arbitrary objects.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise UnsafeFileError("refusing to load: the file holds more than tensors", path=path,
                              hint="convert it to .safetensors on a trusted machine") from error
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise InputError("not a state dict of tensors", path=path)
    return state


def _visual_state(state: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """The visual tower's entries without open_clip's `visual.` prefix (from a full CLIP or the tower)."""
    visual = {k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")}
    if not visual:
        visual = {k: v for k, v in state.items() if k.startswith(("trunk.", "head."))}
    if not visual:
        raise InputError("no CLIP image tower in this file (no 'visual.trunk.*' entries)", path=path)
    return visual


def _read_config(folder: Path) -> tuple[dict, tuple, tuple]:
    """vision settings and mean/std from an open_clip_config.json in `folder` (BiomedCLIP's if absent)."""
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        return dict(BIOMEDCLIP_VISION), OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    config = json.loads(config_path.read_text(encoding="utf-8"))
    model_cfg, preprocess = config.get("model_cfg", {}), config.get("preprocess_cfg", {})
    vision_cfg = model_cfg.get("vision_cfg", {})
    vision = {
        "timm_model_name": vision_cfg.get("timm_model_name", BIOMEDCLIP_VISION["timm_model_name"]),
        "embed_dim": model_cfg.get("embed_dim", BIOMEDCLIP_VISION["embed_dim"]),
        "image_size": vision_cfg.get("image_size", BIOMEDCLIP_VISION["image_size"]),
    }
    mean = tuple(preprocess.get("mean", OPENAI_CLIP_MEAN))
    std = tuple(preprocess.get("std", OPENAI_CLIP_STD))
    return vision, mean, std


def _hub_files(hub_id: str, offline: bool) -> tuple[Path, Path]:
    """(config folder, weights file) of an open_clip hub repo: only these two files are fetched."""
    from huggingface_hub import hf_hub_download

    try:
        weights = Path(hf_hub_download(hub_id, WEIGHTS_FILE, local_files_only=offline))
        config = Path(hf_hub_download(hub_id, CONFIG_FILE, local_files_only=offline))
    except Exception as error:  # network, missing cache entry, unknown repo: all mean "not reachable"
        raise hub_unreachable(hub_id, offline, "BiomedCLIP", error) from error
    return config.parent, weights


def _locate(source: str, offline: bool) -> tuple[Path, Path]:
    """(folder that may hold open_clip_config.json, weights file) for a folder, file or hub source."""
    kind = source_kind(source)
    if kind == "hub":
        return _hub_files(source, offline)
    path = Path(source).expanduser()
    if kind == "file":
        return path.parent, path
    candidates = [path / WEIGHTS_FILE] + sorted(p for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES)
    for candidate in candidates:
        if candidate.is_file():
            return path, candidate
    raise InputError(f"no CLIP weights in this folder (expected {WEIGHTS_FILE})", path=path)


def load_clip(source: str = BIOMEDCLIP_HUB_ID, *, offline: bool | None = None, normalize: str = "released",
              device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> FrozenClip:
    """Load the frozen CLIP image tower from "none", "tiny", a hub id, an open_clip folder or a weights file.

    Raises EnvironmentProblem when hub weights are not reachable (offline: `offline` or HF_HUB_OFFLINE),
    InputError / UnsafeFileError for files that are not a usable CLIP image tower.
    """
    source = source.removeprefix("hf-hub:")  # open_clip's spelling of a hub id
    if source == NONE:
        clip = FrozenClip(None, dict(BIOMEDCLIP_VISION), normalize, source=source)
    elif source == TINY:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            visual = ClipVisual(**BIOMEDCLIP_VISION, trunk_overrides=TINY_TRUNK)
        vision = {**BIOMEDCLIP_VISION, "trunk_overrides": TINY_TRUNK}
        clip = FrozenClip(visual, vision, normalize, source=source)
    else:
        folder, weights = _locate(source, offline_requested(offline))
        state = _visual_state(_read_state_dict(weights), weights)
        vision, mean, std = _read_config(folder)
        visual = ClipVisual(**vision)
        try:
            visual.load_state_dict(state)
        except RuntimeError as error:  # missing, unexpected or wrongly shaped entries
            first_lines = " ".join(str(error).split("\n")[:3])
            raise InputError(f"CLIP weights do not fit {vision['timm_model_name']}: {first_lines}",
                             path=weights) from error
        clip = FrozenClip(visual, vision, normalize, mean, std, source=source)
    clip.identity["dtype"] = str(dtype).removeprefix("torch.")
    return clip.to(device=device, dtype=dtype)
