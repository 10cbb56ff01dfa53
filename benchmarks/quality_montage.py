"""One PNG to look at a quality table with: for a few test cases, the middle axial slice of the CT, the
reference MR and every row's prediction, side by side (docs/quality.md shows it).

    python3 benchmarks/quality_montage.py OUT SRC -o montage.png [--cases 2] [--rows key,key,...]

OUT is a benchmarks/table2.py folder (OUT/<row>/predictions/<case>.nii.gz), SRC the SynthRAD Task 1 tree.
Grey levels: CT -200..300 HU; MR and predictions on the normalised scale [-1, 1]. Columns are labelled in
OUT/montage.txt (a PNG has no text without a font dependency).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def _grey(values: np.ndarray, low: float, high: float) -> np.ndarray:
    return (np.clip((values - low) / (high - low), 0.0, 1.0) * 255).astype(np.uint8)


def montage(out: Path, src: Path, rows: list[str], cases: int) -> tuple[np.ndarray, list[str]]:
    import SimpleITK as sitk

    from diffma_cli.data.synthrad import find_cases
    from diffma_cli.evaluation.scales import normalise_reference

    by_id = {case.id: case for case in find_cases(src)}
    ids = sorted(path.name.removesuffix(".nii.gz") for path in (out / rows[0] / "predictions").iterdir())
    lines, labels = [], ["CT", "reference MR", *rows]
    for case_id in ids[:cases]:
        case = by_id[case_id]
        read = lambda path: sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.float32)  # noqa: E731
        mask = read(case.mask) > 0
        z = int(np.flatnonzero(mask.any(axis=(1, 2))).mean())
        tiles = [_grey(read(case.ct)[z], -200, 300),
                 _grey(normalise_reference(read(case.mr), mask, "mr")[z], -1, 1)]
        tiles += [_grey(read(out / row / "predictions" / f"{case_id}.nii.gz")[z], -1, 1) for row in rows]
        lines.append(np.concatenate(tiles, axis=1))
    width = max(line.shape[1] for line in lines)
    lines = [np.pad(line, ((0, 0), (0, width - line.shape[1]))) for line in lines]
    return np.concatenate(lines, axis=0), labels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="a benchmarks/table2.py output folder")
    parser.add_argument("src", type=Path, help="the SynthRAD Task 1 tree")
    parser.add_argument("-o", "--output", type=Path, required=True, help="PNG to write")
    parser.add_argument("--cases", type=int, default=2)
    parser.add_argument("--rows", default="", help="comma-separated rows (default: those of table.json)")
    args = parser.parse_args(argv)
    rows = [row for row in args.rows.split(",") if row] or [
        row["key"] for row in json.loads((args.out / "table.json").read_text(encoding="utf-8"))["rows"]]
    image, labels = montage(args.out, args.src, rows, args.cases)
    from PIL import Image

    Image.fromarray(image).save(args.output)
    args.output.with_suffix(".txt").write_text("columns: " + " | ".join(labels) + "\n", encoding="utf-8")
    print(f"{args.output}: columns {' | '.join(labels)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
