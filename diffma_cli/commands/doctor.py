"""`diffma doctor`: versions, GPUs, fast-path packages, scan and convolution backends, encoder weights,
disk (library: diffma_cli.doctor)."""

from __future__ import annotations

from pathlib import Path

import typer


def doctor(
    recipe: str = typer.Option("brain", "--recipe", help="Recipe whose VAE and BiomedCLIP weights are looked "
                               "for: brain, pelvis, pelvis-512, demo or a YAML file."),
    folder: Path = typer.Option(Path("."), "--folder", help="Folder whose free disk space is shown."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Check what this machine can run: Python, torch, CUDA and GPUs, mamba-ssm / triton / causal-conv1d,
    the selective-scan and convolution backends of each device, the recipe's encoder weights, free disk.

    Downloads nothing. Ends with what to do about each problem found.

    Examples:

      diffma doctor

      diffma doctor --recipe pelvis --json
    """
    from diffma_cli.doctor import diagnose, report_lines

    report = diagnose(recipe, folder)
    if as_json:
        import json

        typer.echo(json.dumps(report, indent=2))
    else:
        for line in report_lines(report):
            typer.echo(line)
