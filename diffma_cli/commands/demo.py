"""`diffma demo`: the whole pipeline on synthetic data on a CPU (library: diffma_cli.demo)."""

from __future__ import annotations

from pathlib import Path

import typer

#: Metrics shown at the end: (summary key, label, unit).
SHOWN = [("mae", "MAE", "(normalised units)"), ("psnr", "PSNR", "dB"), ("ssim", "SSIM", ""),
         ("paper_ssim", "paper SSIM", "%"), ("paper_psnr", "paper PSNR", "dB"),
         ("roughness_ratio", "through-plane roughness ratio", "(1 = as smooth as the reference)")]


def demo(
    out: Path = typer.Option(Path("diffma-demo"), "-o", "--out",
                             help="Folder for everything the demo makes."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing demo folder."),
    device: str = typer.Option("cpu", "--device",
                               help="cpu (default: the demo is sized for a CPU), cuda or auto."),
    cases: int = typer.Option(6, "--cases", min=3,
                              help="Synthetic brain cases (split 4/1/1 for six). The training budgets are "
                                   "sized for six; more cases train proportionally longer."),
    seed: int = typer.Option(0, "--seed", help="Seed of the phantoms, the split and the training."),
) -> None:
    """Run the whole pipeline on synthetic data: synth -> prepare -> train-vae -> train-embedder -> train ->
    convert -> eval, in a few minutes on a CPU, offline.

    It leaves a SynthRAD-shaped tree, prepared data, a run folder that `diffma convert --model` accepts,
    synthetic MR volumes and an HTML report. The models are tiny and trained for minutes, so the metrics only
    show that everything works, not what DiffMa can do.

    Example:  diffma demo -o diffma-demo
    """
    from diffma_cli.demo import run_demo

    result = run_demo(out, overwrite=overwrite, device=device, cases=cases, seed=seed,
                      say=lambda text: typer.echo(text, err=True))
    typer.echo("\nThe demo finished. Everything is in " + str(result.folder))
    typer.echo(f"  run folder (for `diffma convert --model`): {result.run}")
    typer.echo(f"  synthetic MR volumes: {result.predictions}")
    typer.echo(f"  metrics: {result.metrics} (and .csv beside it)")
    typer.echo(f"  report: {result.report}  (open it in a browser)")
    typer.echo("\nTest-split metrics (MR on the normalised [-1, 1] scale; a tiny model trained for minutes "
               "on synthetic data):")
    for key, label, unit in SHOWN:
        entry = result.summary.get(key)
        if entry and entry.get("mean") is not None:
            typer.echo(f"  {label:32s} {entry['mean']:.3f} {unit}")
    # A number means little alone: the MAE of one constant MR value is what a model that ignores the CT gets.
    typer.echo(f"  {'MAE of a constant MR value':32s} {result.constant_mae:.3f} (normalised units; a model "
               "that follows the CT must be below it)")
    typer.echo(f"\nTry: diffma convert {result.folder}/synthrad/Task1/brain/<case>/ct.nii.gz -o mr.nii.gz "
               f"--model {result.run}")
