"""Save and load model weights: our `.safetensors` files and the released implementation's `.pt` checkpoints.

Our format is a plain safetensors file (the state dict, tensors only, no pickle) whose metadata holds
everything needed to rebuild the model:

    format         "diffma"
    diffma_version the version that wrote it
    config         JSON of `model.config`: {"name": "DiffMa-B/2", "depth": 8, ...}
    provenance     (optional) JSON: where the weights came from, e.g. the released checkpoint they were
                   imported from, its sha256, which weights (EMA or raw) and its training options

`load_model` also reads the released `.pt` checkpoints (safely: see `weights/torch_pickle.py`) and works out
which network they hold from their keys and shapes (`weights/released.py`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diffma_cli import __version__
from diffma_cli.errors import InputError
from diffma_cli.io.atomic import atomic_file, check_output
from diffma_cli.io.hashing import file_sha256
from diffma_cli.weights.released import ReleasedCheckpoint, recognise
from diffma_cli.weights.torch_pickle import load_tensors

FORMAT = "diffma"
SUFFIX = ".safetensors"
#: Settings a registry name fixes ("DiffMa-B/2": 8 blocks, patch 2); other recognised settings (width,
#: grid, channels, state size) come from the file even when the user names the model.
NAMED_SETTINGS = ("depth", "patch_size")


def save_model(model: nn.Module, path: str | Path, *, overwrite: bool = False,
               provenance: dict[str, Any] | None = None) -> Path:
    """Write `model`'s weights and config to `path` (.safetensors), atomically; returns the path.

    `model.config` (a JSON-serialisable dict with the registry "name") goes into the file's metadata, so
    `load_model(path)` rebuilds the same model. `provenance` (JSON-serialisable) is stored as it is.
    An existing `path` is replaced only with `overwrite=True` (else `OutputError`).
    """
    path = _check_destination(path, overwrite)
    metadata = {"format": FORMAT, "diffma_version": __version__, "config": _config_json(model)}
    if provenance is not None:
        metadata["provenance"] = json.dumps(provenance, sort_keys=True)
    tensors = {key: value.detach().to("cpu").contiguous() for key, value in model.state_dict().items()}
    from safetensors.torch import save_file

    with atomic_file(path, overwrite) as temporary:
        save_file(tensors, str(temporary), metadata=metadata)
        # safetensors creates its files private (0600); weights are meant to be shared like other outputs
        os.chmod(temporary, 0o666 & ~_umask())
    return path


def _check_destination(path: str | Path, overwrite: bool) -> Path:
    path = Path(path)
    if path.suffix != SUFFIX:
        raise InputError(f"weights are written as {SUFFIX} files", path=path, hint=f"name it *{SUFFIX}")
    return check_output(path, overwrite)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _config_json(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    if not (isinstance(config, dict) and isinstance(config.get("name"), str)):
        raise InputError(f"{type(model).__name__} has no diffma config (a `config` dict with a `name`)",
                         hint="build models with diffma_cli.models.create_model")
    try:
        return json.dumps(config, sort_keys=True)
    except (TypeError, ValueError) as error:
        raise InputError(f"the config of {config['name']} cannot be stored as JSON ({error})") from None


def load_model(path: str | Path, *, ema: bool = True, **overrides: Any) -> nn.Module:
    """Rebuild a model from a weights file, in eval mode on the CPU.

    `path`: one of our .safetensors files (config from its metadata) or a released .pt checkpoint (config
    recognised from its keys and shapes; Mamba backbones get scan="released"). `overrides` replace config
    entries: `name` ("DiffMa-B/2", "embedder/2", ...), `depth`, `hidden_size`, `patch_size`, `scan`, ...;
    `name` is required for a safetensors file not written by diffma; for a released file it replaces the
    recognised depth and patch size by the name's (weights of another size are reported, not relabelled).
    `ema`: for released checkpoints, the EMA weights (default) or the raw `model` weights; our files hold
    one set and ignore it.
    Raises InputError for damaged files, unknown layouts and weights that do not fit the model.
    """
    path = _existing_file(path)
    if is_safetensors(path):
        config, weights = _read_safetensors(path, overrides)
    else:
        _check_released_condition(overrides.get("condition", "released"), path)
        checkpoint = ReleasedCheckpoint.read(path)
        stored = checkpoint.stored_weights(ema)
        released_name = overrides.get("name") or (checkpoint.args() or {}).get("model")
        recognised = recognise(stored, path, released_name)
        if "name" in overrides:  # the user's name sets depth and patch (a mismatch is then reported)
            recognised = {key: value for key, value in recognised.items() if key not in NAMED_SETTINGS}
        else:
            recognised["name"] = _registered_name(recognised["name"])
        config = {**recognised, **overrides}
        weights = load_tensors(stored)
    model = _build(config, path)
    _load_weights(model, weights, path)
    return model.eval()


def _existing_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise InputError("no such file" if not path.exists() else "is not a file", path=path)
    return path


def is_safetensors(path: Path) -> bool:
    """Sniff the content: safetensors starts with an 8-byte header length and a JSON object."""
    with open(path, "rb") as handle:
        head = handle.read(9)
    if head[:2] == b"PK":  # a torch zip archive
        return False
    # The header length is any 8-byte little-endian number: its first byte may well be 0x80 (a header of
    # 6528 bytes is), so test for safetensors before taking 0x80 for a legacy pickle's protocol opcode.
    header_length = int.from_bytes(head[:8], "little")
    if len(head) == 9 and head[8:9] == b"{" and 8 + header_length <= path.stat().st_size:
        return True
    if head[:1] == b"\x80":  # a legacy torch pickle
        return False
    raise InputError("is neither a diffma .safetensors weights file nor a PyTorch .pt checkpoint", path=path)


def _safetensors_error(path: Path, error: Exception) -> InputError:
    return InputError(f"damaged or truncated safetensors file ({error})", path=path,
                      hint="write or copy it again")


def read_safetensors_header(path: Path) -> tuple[dict[str, str], dict[str, tuple[list[int], str]]]:
    """(metadata, {key: (shape, dtype name)}) of a safetensors file, reading no tensor data."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            shapes = {}
            for key in handle.keys():
                tensor_slice = handle.get_slice(key)
                shapes[key] = (tensor_slice.get_shape(), tensor_slice.get_dtype())
    except Exception as error:  # safetensors raises its own SafetensorError (and OSError) for bad files
        raise _safetensors_error(path, error) from None
    return metadata, shapes


def stored_config(metadata: dict[str, str], path: Path) -> dict[str, Any] | None:
    """The model config in a safetensors file's metadata, or None if diffma did not write the file."""
    if metadata.get("format") != FORMAT:
        return None
    try:
        config = json.loads(metadata["config"])
    except (KeyError, json.JSONDecodeError) as error:
        raise InputError(f"diffma weights file with a damaged config in its metadata ({error})",
                         path=path) from None
    if not (isinstance(config, dict) and isinstance(config.get("name"), str)):
        raise InputError("diffma weights file whose config has no model name", path=path)
    return config


def _read_safetensors(path: Path, overrides: dict[str, Any]
                      ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    metadata, _ = read_safetensors_header(path)
    config = stored_config(metadata, path)
    if config is None and "name" not in overrides:
        raise InputError("is a safetensors file not written by diffma: it does not say which model it holds",
                         path=path, hint="give the model, e.g. --model DiffMa-B/2 "
                         "(Python: load_model(path, name='DiffMa-B/2'))")
    from safetensors.torch import load_file

    if config is not None and "condition" in overrides:
        # A backbone learns what its condition feeds it: weights of one mode are meaningless in another.
        stored = config.get("condition", "released")
        if overrides["condition"] != stored:
            raise InputError(f"holds a {config['name']} trained with condition {stored!r}, not "
                             f"{overrides['condition']!r}", path=path,
                             hint=f"use model.condition={stored} with these weights, or train a new model")
    try:
        weights = load_file(str(path), device="cpu")
    except Exception as error:
        raise _safetensors_error(path, error) from None
    return {**(config or {}), **overrides}, weights


def _check_released_condition(condition: str, path: Path) -> None:
    """Released checkpoints load as `released` or `tokens` (same parameters); the `latent` modes add input
    channels that no released network has."""
    from diffma_cli.models.conditioning import concatenates_latent

    if concatenates_latent(condition):
        raise InputError(f"is a released checkpoint: it cannot run with condition {condition!r} (its patch "
                         "embedding reads the noisy latent only)", path=path,
                         hint="use condition released or tokens with released weights")


def _registered_name(name: str) -> str:
    """`name` if registered, else one of its family (same patch first): every setting is passed explicitly,
    so any name of the family builds the recognised network (e.g. a 13-block DiffMa, which has no name)."""
    from diffma_cli.models import model_names

    names = model_names()
    if name in names:
        return name
    family, patch = name.split("-")[0], name.rsplit("/", 1)[-1]
    same_family = [known for known in names if known.split("-")[0] == family]
    same_patch = [known for known in same_family if known.rsplit("/", 1)[-1] == patch]
    return (same_patch or same_family or [name])[0]


def _build(config: dict[str, Any], path: Path) -> nn.Module:
    from diffma_cli.models import create_model

    settings = dict(config)
    name = settings.pop("name")
    try:
        return create_model(name, **settings)
    except InputError as error:
        raise InputError(f"cannot build the model it describes: {error.problem}", path=path,
                         hint=error.hint) from None


def _load_weights(model: nn.Module, weights: dict[str, torch.Tensor], path: Path) -> None:
    """Copy `weights` into `model`, first checking that keys and shapes match exactly."""
    name = model.config["name"]
    expected = model.state_dict()
    missing = [key for key in expected if key not in weights]
    unexpected = [key for key in weights if key not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} weights of {name} are missing ({_few(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} are not part of {name} ({_few(unexpected)})")
        raise InputError(f"does not fit {name}: {'; '.join(parts)}", path=path,
                         hint="the file holds another network: check --model (and --depth etc.)")
    for key, target in expected.items():
        if tuple(weights[key].shape) != tuple(target.shape):
            raise InputError(
                f"does not fit {name}: `{key}` has shape {tuple(weights[key].shape)} in the file but "
                f"{tuple(target.shape)} in the model", path=path,
                hint="the file is another model size: give matching --model/--depth/--hidden-size/"
                     "--patch-size, or leave them out to use what the file says")
    model.load_state_dict(weights, strict=True)


def _few(keys: list[str], shown: int = 3) -> str:
    return ", ".join(keys[:shown]) + (", ..." if len(keys) > shown else "")


def import_released(source: str | Path, destination: str | Path, *, ema: bool = True,
                    overwrite: bool = False, **overrides: Any) -> nn.Module:
    """Convert a released `.pt` checkpoint into our format; returns the loaded model.

    The output records where it came from (file name, sha256, EMA or raw weights, the training options).
    """
    source = _existing_file(source)
    _check_destination(destination, overwrite)  # fail before the (possibly long) read
    model = load_model(source, ema=ema, **overrides)
    provenance: dict[str, Any] = {"source": source.name, "sha256": file_sha256(source)}
    if not is_safetensors(source):
        checkpoint = ReleasedCheckpoint.read(source)
        if checkpoint.is_training_checkpoint:
            provenance["weights"] = "ema" if ema else "model"
        provenance["args"] = checkpoint.args()
    save_model(model, destination, overwrite=overwrite, provenance=provenance)
    return model
