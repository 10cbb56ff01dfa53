"""`diffma convert`: CT volume -> synthetic MR volume with a trained run (library: diffma_cli.convert)."""

from __future__ import annotations

from pathlib import Path

import typer


def convert(
    input_path: Path = typer.Argument(
        ..., metavar="INPUT", help="A CT volume (NIfTI, MHA, NRRD, ...), a DICOM series folder, or a folder "
        "of volumes (files, or SynthRAD case folders holding ct.nii.gz; then OUTPUT is a folder). MR for "
        "MR->CT runs."),
    output: Path = typer.Option(..., "-o", "--output",
                                help="The volume to write (a folder for folder input; a DICOM series folder "
                                "for a DICOM series in and a name without a volume suffix)."),
    output_format: str = typer.Option("auto", "--output-format", help="auto: the output's suffix chooses the "
                                      "format (folder input: the input's); dicom: a DICOM series folder per "
                                      "input on the CT's study and frame of reference (docs/convert.md)."),
    model: list[Path] = typer.Option(..., "--model", help="Run folder written by `diffma train` (recipe and "
                                     "weights). Repeat for an ensemble of runs (sampling defaults from the "
                                     "first)."),
    sampler: str | None = typer.Option(None, "--sampler", help="ddpm (ancestral), ddim or dpm "
                                       "(DPM-Solver++). Default: the recipe's sampling.sampler."),
    steps: int | None = typer.Option(None, "--steps", help="Network evaluations per slice. Default: the "
                                     "recipe's sampling.steps."),
    seed: int | None = typer.Option(None, "--seed", help="Random seed (sample k uses seed + k). Default: the "
                                    "recipe's."),
    samples: int = typer.Option(1, "--samples", help="K > 1: write the mean of K samples and their per-voxel "
                                "standard deviation as <name>_std<suffix>."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Slices per forward pass. Default: the "
                                          "recipe's."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda (bf16 autocast on CUDA)."),
    mask: bool = typer.Option(False, "--mask", help="Set voxels outside the body to the background (-1 on "
                              "the normalised MR scale, -1024 HU for CT)."),
    body_mask: Path | None = typer.Option(None, "--body-mask", help="One volume: its body mask (voxels > 0), "
                                          "else one is computed from the input."),
    noise: str = typer.Option("independent", "--noise", help="Starting noise across slices: independent, "
                              "shared (one draw for every slice) or correlated (AR(1) along z); see "
                              "docs/consistency.md."),
    noise_correlation: float = typer.Option(0.9, "--noise-correlation", help="Correlation of neighbouring "
                                            "slices' noise for --noise correlated, in [0, 1] (0: "
                                            "independent)."),
    smooth_z: float = typer.Option(1.0, "--smooth-z", help="Gaussian filter along z of the result, sigma in "
                                   "voxels; 0 = off, the method as published. Default 1 (measured to "
                                   "remove slice flicker and improve every score: docs/consistency.md)."),
    tta: str = typer.Option("none", "--tta", help="Test-time augmentation: none, or flip (also convert the "
                            "left-right mirror image of the CT and mirror the result back)."),
    combine: str = typer.Option("mean", "--combine", help="How the members (runs x flips x samples) are "
                                "combined: mean or median. With more than one member their standard "
                                "deviation is written too."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs (folder mode: "
                                   "convert finished cases again instead of skipping them)."),
) -> None:
    """Convert a CT volume into a synthetic MR volume on the CT's exact grid (MR -> CT for MR->CT runs).

    Output: float32 with the input's size, spacing, origin and direction.
    Intensities: prepare's normalised MR scale [-1, 1] (as `diffma eval --modality mr` scores); HU for MR->CT.

    One volume:   diffma convert ct.nii.gz -o mri.nii.gz --model runs/brain

    DICOM series: diffma convert dicom/CT_series/ -o mri.nii.gz --model runs/brain --mask

    DICOM out:    diffma convert dicom/CT_series/ -o dicom/sMR_series/ --model runs/brain

    Folder:       diffma convert Task1/brain -o predictions/ --model runs/brain --samples 4

    Ensemble:     diffma convert ct.nii.gz -o mri.nii.gz --model runs/a --model runs/b --tta flip

    A folder run can be interrupted and run again: finished cases are skipped (an output that does not read
    back as a complete volume is converted again). Every volume is read back before it gets its name, and
    an output never replaces an input, --overwrite or not.

    Cohort on K GPUs (one process each; one summary, convert-summary.json):

    torchrun --standalone --nproc-per-node 4 -m diffma_cli convert Task1/pelvis -o predictions/ --model runs/p
    """
    from diffma_cli.convert import SamplingOptions, convert_path

    options = SamplingOptions(sampler=sampler, steps=steps, seed=seed, batch_size=batch_size, samples=samples,
                              noise=noise, noise_correlation=noise_correlation, smooth_z=smooth_z, tta=tta,
                              combine=combine)
    result = convert_path(input_path, output, model, options, device=device, overwrite=overwrite,
                          body_mask=body_mask, mask=mask, output_format=output_format)
    if result.rank != 0:  # under torchrun only rank 0 speaks
        return
    if result.skipped:
        typer.echo(f"skipped {len(result.skipped)} finished case(s) (--overwrite converts them again)")
    typer.echo(f"wrote {len(result.written)} file(s)" + (f": {result.written[-1]}" if len(result.written) == 1
                                                           else f" under {output}"))
    if result.summary is not None:
        typer.echo(f"{result.processes} processes; summary: {result.summary}")
