"""`diffma import-weights` and `diffma info` (library: diffma_cli.weights, diffma_cli.info)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer


def import_weights(
    source: Path = typer.Argument(..., help="Checkpoint of the released DiffMa code (.pt), e.g. "
                                  "brain_patch_size_2.pt or results/.../0750000.pt."),
    output: Path = typer.Option(..., "-o", "--output", help="Weights file to write (.safetensors)."),
    model: str | None = typer.Option(None, "--model", help="Model name, e.g. DiffMa-B/2 or embedder/2. "
                                     "Default: recognised from the file's keys and shapes (needed only for "
                                     "ZigMa/ViM/VMamba/EMamba files whose options do not name the model)."),
    depth: int | None = typer.Option(None, "--depth", min=1,
                                     help="Number of blocks (default: from the file)."),
    hidden_size: int | None = typer.Option(None, "--hidden-size", min=1,
                                           help="Width D (default: from the file)."),
    patch_size: int | None = typer.Option(None, "--patch-size", min=1, help="Patch size p (default: from the "
                                           "file)."),
    scan: str | None = typer.Option(None, "--scan", help="DiffMa scan mode: released (default for released "
                                    "checkpoints: what they were trained with) or spiral."),
    raw: bool = typer.Option(False, "--raw", help="Take the raw `model` weights instead of the EMA weights."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output file."),
) -> None:
    """Convert a checkpoint of the authors' released code into a diffma weights file.

    The checkpoint is read safely: only tensors and plain options are taken.
    A file that tries to run code is refused, and nothing from it runs.
    The network (DiffMa, a baseline or the CT Vision Embedder) and its size
    are recognised from the weights; the options below override them.

    Examples:

      diffma import-weights brain_patch_size_2.pt -o embedder.safetensors

      diffma import-weights 0750000.pt -o diffma.safetensors --raw
    """
    from diffma_cli.weights import import_released

    given = {"name": model, "depth": depth, "hidden_size": hidden_size, "patch_size": patch_size,
             "scan": scan}
    overrides = {key: value for key, value in given.items() if value is not None}
    loaded = import_released(source, output, ema=not raw, overwrite=overwrite, **overrides)
    count = sum(tensor.numel() for tensor in loaded.state_dict().values())
    typer.echo(f"wrote {output}: {loaded.config['name']}, {count:,} parameters "
               f"({'raw model' if raw else 'EMA'} weights of {source.name})")


def info(
    path: Path = typer.Argument(..., help="A weights file (.safetensors or a released .pt) or a run folder."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Show what a weights file or run folder holds: model, config, parameters, options.

    Reads no tensor data and runs nothing from the file.

    Examples:

      diffma info embedder.safetensors

      diffma info brain_patch_size_2.pt --json
    """
    from diffma_cli.info import describe

    summary = describe(path)
    if as_json:
        import json

        typer.echo(json.dumps(summary, indent=2))
    else:
        for line in _lines(summary):
            typer.echo(line)


def _lines(value: Any, indent: str = "") -> list[str]:
    """Indented `key: value` lines; lists of plain values on one line."""
    lines = []
    for key, item in value.items():
        if isinstance(item, dict) and item:
            lines.append(f"{indent}{key}:")
            lines.extend(_lines(item, indent + "  "))
        elif isinstance(item, list) and any(isinstance(entry, dict) for entry in item):
            lines.append(f"{indent}{key}:")
            for entry in item:
                lines.extend(_lines(entry, indent + "  ") if isinstance(entry, dict)
                             else [f"{indent}  {entry}"])
                lines.append("")
        elif isinstance(item, list):
            lines.append(f"{indent}{key}: {', '.join(map(str, item)) or '(none)'}")
        elif key in ("parameters", "size_bytes") and isinstance(item, int):
            lines.append(f"{indent}{key}: {item:,}")
        else:
            lines.append(f"{indent}{key}: {item}")
    return lines
