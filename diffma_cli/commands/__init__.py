"""Command definitions, one module per stage of the workflow; `cli.py` registers them in this order.

Each module exposes plain functions whose Typer-annotated parameters are the command's options. Keep the
module top level free of heavy imports (torch, SimpleITK, diffusers): import them inside the function.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

# (command name, "module:function"), in the order `diffma --help` lists them: the researcher's workflow.
COMMANDS: list[tuple[str, str]] = [
    ("synth", "data:synth"),
    ("prepare", "data:prepare"),
    ("train-vae", "train:train_vae"),
    ("train-embedder", "train:train_embedder"),
    ("train", "train:train"),
    ("convert", "convert:convert"),
    ("eval", "evaluate:evaluate"),
    ("import-weights", "weights:import_weights"),
    ("info", "weights:info"),
    ("demo", "demo:demo"),
    ("doctor", "doctor:doctor"),
]


def registered() -> list[tuple[str, Callable]]:
    entries = []
    for name, target in COMMANDS:
        module_name, function_name = target.split(":")
        module = importlib.import_module(f"diffma_cli.commands.{module_name}")
        entries.append((name, getattr(module, function_name)))
    return entries
