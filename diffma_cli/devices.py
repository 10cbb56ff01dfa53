"""Which device a command computes on: `--device auto|cpu|cuda|cuda:N`, and the process's place under
`torchrun` (RANK, LOCAL_RANK), shared by training, conversion and the demo."""

from __future__ import annotations

import os

import torch

from diffma_cli.errors import EnvironmentProblem, InputError

DEVICES = ("auto", "cpu", "cuda")


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name, str(default))
    try:
        return int(value)
    except ValueError:
        raise InputError(f"environment variable {name}={value!r} is not an integer") from None


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """`auto` -> CUDA when available else CPU; `cuda` -> this process's GPU (LOCAL_RANK under torchrun)."""
    if name not in DEVICES and not name.startswith("cuda:"):
        raise InputError(f"unknown device {name!r}", hint=f"use one of: {', '.join(DEVICES)}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise EnvironmentProblem("CUDA was asked for but is not available here",
                                     hint="use --device cpu, or install a CUDA build of PyTorch; "
                                          "`diffma doctor` shows what torch sees")
        index = int(name.split(":")[1]) if ":" in name else local_rank
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device("cpu")


def is_main_process() -> bool:
    """Rank 0, or a process not started by torchrun: the one that prints and writes shared files."""
    return env_int("RANK", 0) == 0
