"""`diffma synth` and `diffma prepare`: synthetic SynthRAD-style cases and 224² training slices."""

from __future__ import annotations

from pathlib import Path

import typer

from diffma_cli.errors import InputError

ANATOMY_CHOICES = ("brain", "pelvis", "both")
SIZE_CHOICES = ("full", "small")


def _pair(text: str, option: str, example: str) -> tuple[float, float]:
    try:
        low, high = (float(part) for part in text.split(","))
    except ValueError:
        raise InputError(f"{option} {text!r} is not two numbers low,high",
                         hint=f"e.g. {option} {example}") from None
    if not high > low:
        raise InputError(f"{option} {text!r}: the second number must be larger",
                         hint=f"e.g. {option} {example}")
    return low, high


def synth(
    out: Path = typer.Argument(..., metavar="OUT",
                               help="Folder to create: OUT/Task1/<anatomy>/<id>/{ct,mr,mask}.nii.gz."),
    anatomy: str = typer.Option("both", "--anatomy", help="brain, pelvis or both."),
    cases: int = typer.Option(10, "--cases", min=1, help="Cases per anatomy."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives the same cases."),
    size: str = typer.Option("full", "--size",
                             help="full: SynthRAD grids (1 mm brain, 1x1x2.5 mm pelvis); small: 4x coarser "
                                  "voxels for quick tests and the CPU demo."),
    workers: int = typer.Option(1, "--workers", min=1, help="Cases made in parallel."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it exists."),
) -> None:
    """Write synthetic SynthRAD2023-style paired CT/MR/mask cases (brain and pelvis phantoms).

    CT in HU, T1-like MR with bias field and Rician noise (T2 or contrast for some centres), body mask.

    Example:  diffma synth synthetic --anatomy brain --cases 10 --seed 0 --workers 2
    """
    from diffma_cli.data.synth import write_synthetic_tree

    if anatomy not in ANATOMY_CHOICES:
        raise InputError(f"--anatomy {anatomy!r} is not one of {', '.join(ANATOMY_CHOICES)}")
    if size not in SIZE_CHOICES:
        raise InputError(f"--size {size!r} is not one of {', '.join(SIZE_CHOICES)}")
    anatomies = ("brain", "pelvis") if anatomy == "both" else (anatomy,)
    write_synthetic_tree(out, anatomies, cases, seed=seed, size=size, workers=workers, overwrite=overwrite)
    typer.echo(f"wrote {cases * len(anatomies)} synthetic case(s) to {out / 'Task1'}")


def prepare(
    src: Path = typer.Argument(..., metavar="SRC",
                               help="SynthRAD2023 Task1 folder, or one anatomy folder in it."),
    out: Path = typer.Option(..., "-o", "--out", help="Folder to create (the prepared data, DATA)."),
    anatomy: str = typer.Option(None, "--anatomy",
                                help="brain or pelvis; needed when SRC holds more than one anatomy."),
    split: str = typer.Option("0.8,0.1,0.1", "--split", help="Fractions of patients in train,val,test."),
    seed: int = typer.Option(0, "--seed", help="Seed of the patient split."),
    split_file: Path = typer.Option(None, "--split-file",
                                    help="JSON object with train, val and test lists of case ids; "
                                         "overrides --split and --seed."),
    ct_window: str = typer.Option("-1024,3000", "--ct-window", help="HU window mapped to [-1, 1]."),
    mr_percentiles: str = typer.Option("0.5,99.5", "--mr-percentiles",
                                       help="Percentiles of the MR inside the mask mapped to -1 and 1."),
    image_size: int = typer.Option(224, "--image-size", min=8, help="Side of the square slices in pixels "
                                   "(a multiple of 8; 224 is the paper's). Train with a recipe of the same "
                                   "data.image_size, e.g. pelvis-512 for --image-size 512."),
    orientation: str = typer.Option("LPS", "--orientation", help="Axis layout the volumes are reoriented to "
                                    "before slicing (axes permuted/flipped, exact): a three-letter code such "
                                    "as LPS (SynthRAD's and axial DICOM's), or none to slice as stored. "
                                    "Training copies it into the run's recipe; convert uses the same."),
    workers: int = typer.Option(1, "--workers", min=1, help="Cases prepared in parallel."),
    skip_bad: bool = typer.Option(False, "--skip-bad",
                                  help="Leave bad cases out (recorded in the manifest) instead of stopping."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace DATA if it exists."),
) -> None:
    """Split SynthRAD cases by patient, normalise them, slice them to 224x224 pairs (--image-size) and write
    a manifest.

    Bad cases (missing file, geometry mismatch, NaN, empty mask, unreadable) stop the run unless --skip-bad.

    Example:  diffma prepare SynthRAD2023/Task1 -o data/brain --anatomy brain --workers 2
    """
    from diffma_cli.data.orientation import check_orientation
    from diffma_cli.data.prepare import PrepareOptions
    from diffma_cli.data.prepare import prepare as prepare_data
    from diffma_cli.data.splits import parse_fractions

    if image_size % 8:
        raise InputError(f"--image-size {image_size} must be a multiple of 8 (the VAE downsamples by 8)")
    if anatomy is not None and anatomy not in ("brain", "pelvis"):
        raise InputError(f"--anatomy {anatomy!r} is not one of brain, pelvis")
    percentiles = _pair(mr_percentiles, "--mr-percentiles", "0.5,99.5")
    if not 0 <= percentiles[0] < percentiles[1] <= 100:
        raise InputError(f"--mr-percentiles {mr_percentiles!r} must lie within 0..100", hint="e.g. 0.5,99.5")
    options = PrepareOptions(
        anatomy=anatomy, fractions=parse_fractions(split), seed=seed,
        split_file=None if split_file is None else str(split_file),
        ct_window=_pair(ct_window, "--ct-window", "-1024,3000"),
        mr_percentiles=percentiles, orientation=check_orientation(orientation, "--orientation"),
        size=image_size,
        workers=workers, skip_bad=skip_bad)
    manifest = prepare_data(src, out, options, overwrite=overwrite)
    for skipped in manifest["skipped"]:
        typer.echo(f"diffma: warning: skipped case {skipped['case']}: {skipped['problem']}", err=True)
    splits, counts = manifest["splits"], manifest["slice_counts"]
    for name in ("val", "test"):
        if not splits.get(name):
            use = "validation" if name == "val" else "testing"
            typer.echo(f"diffma: warning: the {name} split is empty ({len(manifest['cases'])} case(s) in "
                       f"all); {use} needs cases of its own (prepare more cases or pass --split-file)",
                       err=True)
    parts = ", ".join(f"{name} {len(ids)} ({counts[name]} slices)" for name, ids in splits.items())
    typer.echo(f"prepared {len(manifest['cases'])} {manifest['anatomy']} case(s) to {out}: {parts}")
