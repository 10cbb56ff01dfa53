"""Latent cache: the frozen encoders' outputs for every prepared slice, computed once per split.

The VAE and CLIP never change during training, so instead of pushing every slice through them at every
step (as the released code does) we store, per slice, the VAE posterior (mean and std, unscaled, of CT and
MR) and the CLIP embedding of the conditioning image. Training draws a fresh latent sample
(mean + std · ε) · scale from them each time, so it sees the same distribution as the released code.

One safetensors file per split (default DATA/latent_cache/<split>.safetensors):
    ct_mean, ct_std, mr_mean, mr_std   (N, 4, h, w) float32, h = w = slice size / 8 (224 / 8 = 28)
    clip                               (N, E) float32, CLIP embedding of the `clip_of` modality (absent for
                                       `clip: none`; slices of another size than CLIP's are resized for it,
                                       `clip_embedding`)
    case_index, slice_index            (N,) int64; case names in the metadata
Its metadata records which encoders made it (their identities), which data (`data_key`, slice count) and the
cache format; `ensure_latent_cache` rebuilds the file whenever any of these differ.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from diffma_cli.encoders.source import identity_key
from diffma_cli.errors import InputError
from diffma_cli.io.atomic import atomic_file

CACHE_FORMAT = 1
CACHE_FOLDER = "latent_cache"
MODALITIES = ("ct", "mr")


def default_cache_file(data_dir: str | Path, split: str) -> Path:
    """DATA/latent_cache/<split>.safetensors."""
    return Path(data_dir) / CACHE_FOLDER / f"{split}.safetensors"


def cache_key(vae, clip, clip_of: str, data_key: str, num_slices: int) -> dict:
    """Everything the cached numbers depend on; two equal keys mean the cache can be reused."""
    return {"format": CACHE_FORMAT, "vae": vae.identity, "clip": clip.identity, "clip_of": clip_of,
            "data_key": data_key, "num_slices": num_slices}


def _stored_key(path: Path) -> str | None:
    """The key recorded in an existing cache file, or None if there is none or it is unreadable."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            return (handle.metadata() or {}).get("cache_key")
    except Exception:  # a truncated or foreign file (SafetensorError, OSError, ...) is simply rebuilt
        return None


def clip_embedding(clip, images: torch.Tensor) -> torch.Tensor:
    """CLIP's embedding of slices (N, 1, S, S) in [-1, 1] of any size S: resized (bilinear, anti-aliased) to
    the tower's input size (224² for BiomedCLIP) when S differs, so runs at native resolution (e.g. 512²)
    condition on the same kind of CLIP input as the paper's 224² runs. Training and convert both use it."""
    side = getattr(clip, "image_size", None)
    if clip.visual is not None and side is not None and tuple(images.shape[-2:]) != (side, side):
        images = torch.nn.functional.interpolate(images.float(), size=(side, side), mode="bilinear",
                                                 antialias=True, align_corners=False)
    return clip.encode(images)


def _encode_all(slices: Dataset, vae, clip, clip_of: str, batch_size: int, device, progress: bool,
                num_workers: int) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Batched encoding of every slice: ({"ct_mean": (N, 4, h, w), ..., "clip": (N, E)} on the CPU, case
    names indexed by "case_index")."""
    parts: dict[str, list[torch.Tensor]] = {}
    loader = DataLoader(slices, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    for batch in tqdm(loader, desc="encoding slices", unit="batch", disable=not progress):
        for modality in MODALITIES:
            posterior = vae.encode(batch[modality].to(device))
            parts.setdefault(f"{modality}_mean", []).append(posterior.mean.cpu())
            parts.setdefault(f"{modality}_std", []).append(posterior.std.cpu())
        if clip.visual is not None:
            parts.setdefault("clip", []).append(clip_embedding(clip, batch[clip_of].to(device)).cpu())
        parts.setdefault("case", []).extend(batch["case"])
        parts.setdefault("slice", []).append(torch.as_tensor(batch["slice"], dtype=torch.int64))
    cases = parts.pop("case")
    names = sorted(set(cases))
    tensors = {key: torch.cat(value).contiguous() for key, value in parts.items()}
    tensors["slice_index"] = tensors.pop("slice")
    index_of = {name: i for i, name in enumerate(names)}
    tensors["case_index"] = torch.tensor([index_of[c] for c in cases], dtype=torch.int64)
    return tensors, names


def ensure_latent_cache(slices: Dataset, cache_file: str | Path, vae, clip, *, clip_of: str = "ct",
                        data_key: str = "", batch_size: int = 32, device: str | torch.device = "cpu",
                        progress: bool = True, num_workers: int = 0) -> Path:
    """Make sure `cache_file` holds the encoders' outputs for `slices`; build or rebuild it if not.

    slices: items {"ct", "mr": (1, S, S) float32 in [-1, 1], "case": str, "slice": int, ...}
    (diffma_cli.data.dataset.PreparedSlices). vae / clip: `load_vae` / `load_clip` results on `device`.
    clip_of: which modality CLIP sees (the conditioning image: "ct" for ct->mr). data_key: a fingerprint
    of the data set (e.g. its manifest's sha256). The file is written atomically. Returns its path.
    """
    if clip_of not in MODALITIES:
        raise InputError(f"CLIP can encode {' or '.join(MODALITIES)}, not {clip_of!r}")
    cache_file = Path(cache_file)
    key = identity_key(cache_key(vae, clip, clip_of, data_key, len(slices)))
    if cache_file.is_file() and _stored_key(cache_file) == key:
        return cache_file
    if len(slices) == 0:
        raise InputError("no slices to encode", path=cache_file.parent)
    tensors, names = _encode_all(slices, vae, clip, clip_of, batch_size, device, progress, num_workers)
    metadata = {"cache_key": key, "case_names": json.dumps(names), "scale": repr(vae.scale),
                "vae_source": vae.source, "clip_source": clip.source}
    with atomic_file(cache_file, overwrite=True) as temporary:
        save_file(tensors, str(temporary), metadata=metadata)
    return cache_file


class LatentCache(Dataset):
    """The cached posteriors of one split as a Dataset, oriented by the training direction.

    Items: {"source_mean", "source_std", "target_mean", "target_std": (4, h, w) float32, unscaled VAE
    posteriors; "clip": (E,) the conditioning image's CLIP embedding (only if CLIP was used); "case": str;
    "slice": int}. For "ct->mr" the source is CT and the target MR; "mr->ct" swaps them. Draw latents as
    (mean + std · ε) · `scale` (scale = the VAE's, also stored here as `self.scale`).
    """

    def __init__(self, cache_file: str | Path, direction: str = "ct->mr"):
        source, _, target = direction.partition("->")
        if {source, target} != set(MODALITIES):
            raise InputError(f"unknown direction {direction!r}", hint="use ct->mr or mr->ct")
        cache_file = Path(cache_file)
        if not cache_file.is_file():
            raise InputError("no latent cache here", path=cache_file,
                             hint="build it with ensure_latent_cache")
        self.tensors = load_file(str(cache_file))
        with safe_open(str(cache_file), framework="pt") as handle:
            metadata = handle.metadata() or {}
        self.case_names = json.loads(metadata.get("case_names", "[]"))
        self.scale = float(metadata.get("scale", "nan"))
        self.key = json.loads(metadata.get("cache_key", "{}"))
        clip_of = self.key.get("clip_of", "ct")
        if "clip" in self.tensors and clip_of != source:
            raise InputError(f"this cache holds CLIP embeddings of {clip_of}, but {direction} conditions on "
                             f"{source}", path=cache_file, hint="rebuild it with clip_of=" + repr(source))
        self.source, self.target = source, target

    def __len__(self) -> int:
        return self.tensors["slice_index"].shape[0]

    def __getitem__(self, index: int) -> dict:
        t = self.tensors
        item = {"source_mean": t[f"{self.source}_mean"][index], "source_std": t[f"{self.source}_std"][index],
                "target_mean": t[f"{self.target}_mean"][index], "target_std": t[f"{self.target}_std"][index],
                "case": self.case_names[int(t["case_index"][index])], "slice": int(t["slice_index"][index])}
        if "clip" in t:
            item["clip"] = t["clip"][index]
        return item
