"""Command definitions, one module per stage of the workflow; `cli.py` registers them in this order.

Each module exposes plain functions whose Typer-annotated parameters are the command's options. The module
top levels import only typer and the package's light modules (errors, paths), so importing them all here
keeps `diffma --help` fast: torch, SimpleITK and diffusers are imported inside the function bodies.
"""

from __future__ import annotations

from collections.abc import Callable

from diffma_cli.commands import convert as convert_command
from diffma_cli.commands import data, demo, doctor, evaluate, train, weights

# (command name, function), in the order `diffma --help` lists them: the researcher's workflow.
COMMANDS: list[tuple[str, Callable]] = [
    ("synth", data.synth),
    ("prepare", data.prepare),
    ("train-vae", train.train_vae),
    ("train-embedder", train.train_embedder),
    ("train", train.train),
    ("convert", convert_command.convert),
    ("eval", evaluate.evaluate),
    ("import-weights", weights.import_weights),
    ("info", weights.info),
    ("demo", demo.demo),
    ("doctor", doctor.doctor),
]
