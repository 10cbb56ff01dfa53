"""Training checkpoints: everything needed to continue a run exactly where it stopped.

A checkpoint is a folder `checkpoints/step-NNNNNNN/` written atomically (it appears complete or not at
all):
    model.safetensors   the trained weights (safetensors: no code can hide in it)
    ema.safetensors     the EMA weights
    optimizer.pt        optimiser state and RNG states: tensors and plain numbers only, read back with
                        torch.load(weights_only=True) so that nothing in it can execute
    state.json          step, epoch, position in the epoch, seed, world size, global batch size
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from diffma_cli.errors import InputError
from diffma_cli.io.atomic import atomic_dir

CHECKPOINTS = "checkpoints"
_NAME = re.compile(r"^step-(\d+)$")


@dataclass
class TrainState:
    """Where training stands. `batch_in_epoch` counts the global batches of `epoch` already done."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    seed: int = 0
    world_size: int = 1
    global_batch_size: int = 1


def state_dict_for_file(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A state dict safetensors can write: contiguous CPU tensors that share no memory."""
    return {name: tensor.detach().cpu().contiguous().clone() for name, tensor in module.state_dict().items()}


def save_checkpoint(folder: Path, model: torch.nn.Module, ema: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, state: TrainState) -> Path:
    """Write `folder/checkpoints/step-<step>` atomically; returns its path."""
    path = Path(folder) / CHECKPOINTS / f"step-{state.step:07d}"
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    with atomic_dir(path, overwrite=True) as temporary:
        save_file(state_dict_for_file(model), str(temporary / "model.safetensors"))
        save_file(state_dict_for_file(ema), str(temporary / "ema.safetensors"))
        torch.save({"optimizer": optimizer.state_dict(), "rng": rng}, temporary / "optimizer.pt")
        (temporary / "state.json").write_text(json.dumps(asdict(state), indent=1), encoding="utf-8")
    return path


def latest_checkpoint(folder: Path) -> Path | None:
    """The checkpoint with the highest step in `folder/checkpoints`, or None."""
    root = Path(folder) / CHECKPOINTS
    if not root.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _NAME.match(p.name))]
    return max(found)[1] if found else None


def load_checkpoint(path: Path, model: torch.nn.Module, ema: torch.nn.Module,
                    optimizer: torch.optim.Optimizer) -> TrainState:
    """Restore model, EMA, optimiser and RNG states from a checkpoint folder; returns its TrainState."""
    path = Path(path)
    try:
        model.load_state_dict(load_file(str(path / "model.safetensors")))
        ema.load_state_dict(load_file(str(path / "ema.safetensors")))
        saved = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
        state = TrainState(**json.loads((path / "state.json").read_text(encoding="utf-8")))
    except (OSError, RuntimeError, ValueError, TypeError, KeyError) as error:
        raise InputError(f"cannot resume from this checkpoint: {error}", path=path,
                         hint="delete this checkpoint folder to resume from an earlier one, "
                         "or start again with --overwrite") from None
    optimizer.load_state_dict(saved["optimizer"])
    torch.set_rng_state(saved["rng"]["torch"])
    if "cuda" in saved["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state(saved["rng"]["cuda"])
    return state
