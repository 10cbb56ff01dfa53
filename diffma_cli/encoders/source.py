"""Where a frozen encoder (VAE, BiomedCLIP) comes from, and a fingerprint that says exactly which one it is.

A source string is one of: `"tiny"` (a small randomly initialised stand-in for tests and the demo), a local
folder, a local weights file, or a Hugging Face hub id. Offline mode (`offline=True`, or HF_HUB_OFFLINE set)
only reads the local hub cache; a missing download becomes an `EnvironmentProblem` that says what to fetch
and where to put it (docs/encoders.md).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from diffma_cli.errors import EnvironmentProblem, InputError

TINY = "tiny"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")


def offline_requested(offline: bool | None) -> bool:
    """`offline` if given, else whether HF_HUB_OFFLINE is set to a true value in the environment."""
    if offline is not None:
        return offline
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def source_kind(source: str) -> str:
    """'tiny', 'folder', 'file' or 'hub'. A path-like source that does not exist is an InputError."""
    if source == TINY:
        return TINY
    path = Path(source).expanduser()
    if path.is_dir():
        return "folder"
    if path.is_file():
        return "file"
    hub_like = source.count("/") == 1 and not source.startswith((".", "/", "~"))
    if not hub_like or path.suffix in WEIGHT_SUFFIXES:
        raise InputError("no such encoder folder or weights file", path=source,
                         hint="give an existing path or a hub id such as owner/name")
    if path.parent.is_dir():  # "diffma-demo/vae" with a folder diffma-demo here: a path, not a hub id
        raise InputError(f"no such encoder folder or weights file (read as a path because the folder "
                         f"{path.parent} exists in {Path.cwd()}; a hub id's owner is not a local folder)",
                         path=source, hint="give the path of the encoder folder as it is from here, or "
                                           "an absolute path")
    return "hub"


def hub_unreachable(hub_id: str, offline: bool, what: str, error: Exception) -> EnvironmentProblem:
    """The error for weights that are neither cached nor downloadable, with what to download where."""
    reason = "offline and not in the local Hugging Face cache" if offline else f"could not download ({error})"
    return EnvironmentProblem(
        f"{what} weights '{hub_id}' are not available: {reason}",
        hint=f"on a machine with internet run `hf download {hub_id} --local-dir DIR`, copy DIR "
             "here and pass that folder instead of the hub id (see docs/encoders.md)",
    )


def weights_fingerprint(module: torch.nn.Module) -> str:
    """sha256 over the names, dtypes, shapes and values of all parameters and buffers (about 1 s per 300 MB).

    Two encoders with the same fingerprint compute the same function, whatever path they were loaded from.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def identity_key(identity: dict) -> str:
    """A canonical JSON string of an encoder identity, for equality checks and storing in caches."""
    return json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)


def freeze(module: torch.nn.Module) -> torch.nn.Module:
    """Eval mode and no gradients: the encoders are never trained by diffma train."""
    module.eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module
