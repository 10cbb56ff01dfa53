"""Slice-consistency options of `diffma convert` compared on SynthRAD-shaped test cases, and the fast
ODE sampler against the released 250-step ancestral sampler.

Usage (a trained run and a SynthRAD tree, e.g. from `diffma synth` + `diffma prepare` + training):

    python3 benchmarks/consistency.py --model RUN SRC --data DATA            # DATA's test split of SRC
    python3 benchmarks/consistency.py --model RUN SRC --cases 4 --settings independent,shared,smooth-1.0

Every case is converted with each setting (same seed, the case's own body mask) by the library's
`convert_volume` and scored by `diffma_cli.evaluation.evaluate_arrays` exactly as `diffma eval` does
(docs/metrics.md, docs/consistency.md). Prints one markdown table of means over cases: per-slice and 3-D
quality (paper_ssim, ssim, mae) next to whole-volume consistency (sagittal/coronal SSIM, roughness ratio),
and seconds per volume. `--json FILE` keeps every per-case row.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

# name -> convert_volume options (besides the sampler/steps given on the command line), on top of BASE: the
# method as published (independent noise, no filter), so that "independent" stays the unfiltered reference
# whatever convert's defaults are.
BASE = {"noise": "independent", "smooth_z": 0.0}
SETTINGS = {
    "independent": {},
    "shared": {"noise": "shared"},
    "correlated-0.5": {"noise": "correlated", "noise_correlation": 0.5},
    "correlated-0.9": {"noise": "correlated", "noise_correlation": 0.9},
    "smooth-0.5": {"smooth_z": 0.5},
    "smooth-1.0": {"smooth_z": 1.0},
    "shared+smooth-0.5": {"noise": "shared", "smooth_z": 0.5},
    # The released code's sampler: 250 ancestral steps (about 10x the time of 25 ODE steps).
    "ddpm-250": {"sampler": "ddpm", "steps": 250},
}
COLUMNS = ("paper_ssim", "ssim", "mae", "sagittal_ssim", "coronal_ssim", "roughness_ratio", "seconds")


def test_cases(src: str, data: str | None, limit: int):
    """SynthRAD cases of `src`: those of DATA's test split when `data` is given; the first `limit`."""
    from pathlib import Path

    from diffma_cli.data.synthrad import find_cases

    cases = find_cases(src)
    if data is not None:
        manifest = json.loads((Path(data) / "manifest.json").read_text(encoding="utf-8"))
        test_ids = set(manifest["splits"]["test"])
        cases = [case for case in cases if case.id in test_ids]
    return cases[:limit] if limit > 0 else cases


def score_case(case, models, settings: dict, args) -> list[dict]:
    """One row per setting: metrics of this case's conversion with it."""
    import SimpleITK as sitk

    from diffma_cli.convert import SamplingOptions, convert_volume
    from diffma_cli.evaluation.evaluate import evaluate_arrays
    from diffma_cli.evaluation.scales import normalise_reference
    from diffma_cli.io.volumes import read_volume

    source, target = models.recipe.data.source, models.recipe.data.target
    image, mask_image = read_volume(case.path(source)), read_volume(case.mask)
    mask = sitk.GetArrayFromImage(mask_image) > 0
    reference = sitk.GetArrayFromImage(read_volume(case.path(target))).astype(np.float32)
    reference = normalise_reference(reference, mask, target)
    rows = []
    for name, options in settings.items():
        options = {"sampler": args.sampler, "steps": args.steps, **BASE, **options}
        sampling = SamplingOptions(seed=args.seed, batch_size=args.batch_size, **options)
        began = time.perf_counter()
        generated, _ = convert_volume(image, models, sampling, body_mask=mask_image, progress=False)
        seconds = time.perf_counter() - began
        metrics = evaluate_arrays(sitk.GetArrayFromImage(generated), reference, mask, modality=target)
        rows.append({"case": case.id, "setting": name, **options, **metrics, "seconds": seconds})
        print(f"{case.id} {name}: " + ", ".join(f"{key} {rows[-1][key]:.4g}" for key in COLUMNS),
              file=sys.stderr)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", help="SynthRAD Task1 (or anatomy) folder with ct, mr and mask per case")
    parser.add_argument("--model", required=True, help="run folder written by `diffma train`")
    parser.add_argument("--data", help="prepared data folder: use the test split of its manifest")
    parser.add_argument("--cases", type=int, default=0, help="at most this many cases (0 = all)")
    parser.add_argument("--settings", default=",".join(SETTINGS),
                        help=f"comma-separated: {', '.join(SETTINGS)}")
    parser.add_argument("--sampler", default="dpm")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", help="write every per-case row to this file")
    args = parser.parse_args(argv)

    from diffma_cli.convert import load_models

    unknown = [name for name in args.settings.split(",") if name not in SETTINGS]
    if unknown:
        parser.error(f"unknown setting(s) {', '.join(unknown)}; choose from {', '.join(SETTINGS)}")
    settings = {name: SETTINGS[name] for name in args.settings.split(",")}
    models = load_models(args.model, args.device)
    cases = test_cases(args.src, args.data, args.cases)
    if not cases:
        parser.error("no cases to convert")
    rows = [row for case in cases for row in score_case(case, models, settings, args)]
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(rows, handle, indent=1, default=float)
    print(f"\n{len(cases)} case(s), {args.sampler} {args.steps} steps unless the setting says otherwise, "
          f"seed {args.seed}, {models.device}; means over cases")
    print("| setting | " + " | ".join(COLUMNS) + " |")
    print("|---|" + "---|" * len(COLUMNS))
    for name in settings:
        mine = [row for row in rows if row["setting"] == name]
        means = [float(np.mean([row[key] for row in mine])) for key in COLUMNS]
        print(f"| {name} | " + " | ".join(f"{value:.4g}" for value in means) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
