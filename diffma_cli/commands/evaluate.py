"""`diffma eval`: score predicted volumes against references (library: diffma_cli.evaluation)."""

from __future__ import annotations

from pathlib import Path

import typer


def evaluate(
    prediction: Path = typer.Argument(
        ..., metavar="PRED", help="A predicted volume (with --target), or a folder of predictions named "
        "<case>.nii.gz or <case>/mr.nii.gz (any volume suffix)."),
    data_src: Path | None = typer.Argument(
        None, metavar="DATA_SRC", help="Folder mode: the SynthRAD Task1 (or anatomy) folder holding the "
        "references and masks."),
    target: Path | None = typer.Option(None, "--target", help="One case: the reference volume."),
    mask: Path | None = typer.Option(None, "--mask", help="One case: the body mask (voxels > 0 inside)."),
    ct: Path | None = typer.Option(None, "--ct", help="One case: the model input (the CT for CT->MR), shown "
                                   "in the report."),
    modality: str = typer.Option("mr", "--modality", help="What was predicted: mr (scored on prepare's "
                                 "normalised scale [-1, 1]) or ct (in HU, range [-1024, 3000])."),
    protocol: str = typer.Option("both", "--protocol", help="synthrad (masked 3-D MAE/PSNR/SSIM of "
                                 "SynthRAD2023 and SynthRAD2025's MS-SSIM), paper (per-slice 8-bit SSIM "
                                 "%/PSNR/MSE) or both. Consistency measures always."),
    output: Path | None = typer.Option(None, "-o", "--output",
                                       help="metrics.json to write (a .csv beside it)."),
    report: Path | None = typer.Option(None, "--report", help="Folder for index.html (metric table, a slice "
                                       "viewer per case and plane) and its PNG montages and slice stacks."),
    percentiles_from: Path | None = typer.Option(
        None, "--percentiles-from", metavar="DATA|RUN", help="Normalise reference MRs with the percentiles "
        "recorded in a prepared data folder (manifest.json) or a run folder (recipe.yaml) instead of the "
        "default 0.5/99.5."),
    workers: int = typer.Option(1, "--workers", min=1, help="Cases scored at once, each in its own process "
                                "(a large pelvis scan needs a few GiB per process)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs."),
    allow_off_scale: bool = typer.Option(False, "--allow-off-scale", help="Score a prediction whose values "
                                         "inside the mask mostly lie off the modality's scale (a raw MR, a "
                                         "CT scored as MR) with a warning instead of refusing it."),
) -> None:
    """Score predictions: SynthRAD2023 metrics with SynthRAD2025's MS-SSIM, the paper's slice metrics and
    slice-to-slice consistency.

    One case:  diffma eval mri.nii.gz --target 1BA001/mr.nii.gz --mask 1BA001/mask.nii.gz -o metrics.json

    Folder:    diffma eval predictions/ Task1/brain -o metrics.json --report report/

    With the run's MR normalisation: add --percentiles-from RUN (or the prepared DATA folder).
    """
    from diffma_cli.errors import InputError
    from diffma_cli.evaluation.evaluate import check_protocol, evaluate_cases
    from diffma_cli.evaluation.pairing import INPUT_MODALITY, CasePaths, case_id_of, pair_folder
    from diffma_cli.evaluation.results import csv_path_for
    from diffma_cli.evaluation.scales import metric_range

    metric_range(modality)
    check_protocol(protocol)
    mr_percentiles = None
    if percentiles_from is not None:
        from diffma_cli.evaluation.scales import recorded_mr_percentiles

        mr_percentiles = recorded_mr_percentiles(percentiles_from)
    if target is not None:
        if data_src is not None:
            raise InputError("give either --target (one case) or DATA_SRC (folder mode), not both")
        if mask is None:
            raise InputError("--target needs --mask (the body mask of the reference)")
        pairs = [CasePaths(case_id_of(prediction), prediction, target, mask, ct)]
    else:
        if data_src is None:
            raise InputError("missing DATA_SRC (folder mode) or --target/--mask (one case)",
                             hint="see diffma eval --help")
        if mask is not None or ct is not None:
            raise InputError("--mask and --ct are for one case (with --target); folder mode takes them from "
                             f"DATA_SRC (<case>/mask.nii.gz, <case>/{INPUT_MODALITY[modality]}.nii.gz)")
        pairs = pair_folder(prediction, data_src, modality)
    results = evaluate_cases(pairs, modality=modality, protocol=protocol, output=output, report=report,
                             overwrite=overwrite, allow_off_scale=allow_off_scale,
                             mr_percentiles=mr_percentiles, workers=workers)
    for key, stats in results["summary"].items():
        if key == "paper_pooled":
            shown = ", ".join(f"{name} {value:.4g}" for name, value in stats.items())
            typer.echo(f"{key:16s} {shown}")
        elif stats["mean"] is not None:
            spread = f" ± {stats['std']:.4g}" if stats["std"] is not None else ""
            typer.echo(f"{key:16s} {stats['mean']:.4g}{spread} (n={stats['n']})")
    typer.echo(f"scored {len(pairs)} case(s)"
               + (f"; wrote {output} and {csv_path_for(output)}" if output else "")
               + (f"; report {report / 'index.html'}" if report else ""))
