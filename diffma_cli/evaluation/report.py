"""Visual report: PNG montages per case and an index.html that opens from disk (no external assets).

Per case three montages, columns input | generated | reference | |error|:
`<case>_axial.png` (three axial slices at 25, 50 and 75 % of the mask's z extent), `<case>_sagittal.png`
and `<case>_coronal.png` (the slice through the mask's centre; these show slice-to-slice inconsistency).
Display scales: generated and reference on the metric scale (`scales.metric_range`), the input between the
1st and 99th percentile of its mask voxels, |error| from 0 (black) to a quarter of the data range (white).
Panels keep physical proportions (voxel spacing) and superior is up in sagittal and coronal views.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from diffma_cli.evaluation.pairing import CaseVolumes
from diffma_cli.evaluation.scales import IntensityRange, to_uint8

VIEWS = ("axial", "sagittal", "coronal")
AXIAL_FRACTIONS = (0.25, 0.5, 0.75)  # where in the mask's z extent the axial rows are taken
PANEL_SIDE = 192  # pixels of a panel's longer side
LABEL_HEIGHT = 14
GAP = 2
ERROR_FRACTION = 0.25  # |error| reaches white at this fraction of the data range
INPUT_PERCENTILES = (1.0, 99.0)


def image_name(case: str, view: str) -> str:
    return f"{case}_{view}.png"


def _slices(volumes: CaseVolumes, view: str) -> list[tuple[tuple, tuple[float, float]]]:
    """[(index into (z, y, x), (row spacing, column spacing) in mm)] of the 2-D panels of `view`."""
    z, y, x = np.nonzero(volumes.mask)
    sz, sy, sx = volumes.spacing
    if view == "axial":
        low, high = z.min(), z.max()
        picks = sorted({int(round(low + f * (high - low))) for f in AXIAL_FRACTIONS})
        return [((pick, slice(None), slice(None)), (sy, sx)) for pick in picks]
    if view == "sagittal":
        return [((slice(None, None, -1), slice(None), int(round(x.mean()))), (sz, sy))]
    return [((slice(None, None, -1), int(round(y.mean())), slice(None)), (sz, sx))]


def _panel(grey: np.ndarray, spacing: tuple[float, float]):
    """An 8-bit 2-D array as a PIL image resized to physical proportions, longer side PANEL_SIDE."""
    from PIL import Image

    height_mm, width_mm = grey.shape[0] * spacing[0], grey.shape[1] * spacing[1]
    factor = PANEL_SIDE / max(height_mm, width_mm)
    size = (max(1, round(width_mm * factor)), max(1, round(height_mm * factor)))
    return Image.fromarray(grey).resize(size, Image.Resampling.BILINEAR)


def _input_range(volumes: CaseVolumes) -> IntensityRange:
    low, high = np.percentile(volumes.input[volumes.mask], INPUT_PERCENTILES)
    return IntensityRange(float(low), float(high) if high > low else float(low) + 1.0)


def montage(volumes: CaseVolumes, scale: IntensityRange, view: str, input_label: str = "input"):
    """A PIL image: one row per panel of `view`, columns input (if any) | generated | reference | |error|."""
    from PIL import Image, ImageDraw

    error = np.abs(scale.clip(volumes.prediction) - scale.clip(volumes.reference))
    columns = [("generated", volumes.prediction, scale), ("reference", volumes.reference, scale),
               ("|error|", error, IntensityRange(0.0, ERROR_FRACTION * scale.data_range))]
    if volumes.input is not None:
        columns.insert(0, (input_label, volumes.input, _input_range(volumes)))
    rows = [[_panel(to_uint8(volume[index], shown), spacing) for _, volume, shown in columns]
            for index, spacing in _slices(volumes, view)]
    width = sum(panel.width for panel in rows[0]) + GAP * (len(columns) - 1)
    height = LABEL_HEIGHT + sum(row[0].height for row in rows) + GAP * (len(rows) - 1)
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    top = LABEL_HEIGHT
    for row in rows:
        left = 0
        for (label, _, _), panel in zip(columns, row, strict=True):
            if top == LABEL_HEIGHT:
                draw.text((left + 2, 1), label, fill=255)
            canvas.paste(panel, (left, top))
            left += panel.width + GAP
        top += row[0].height + GAP
    return canvas


def write_case_montages(folder: Path, volumes: CaseVolumes, scale: IntensityRange,
                        modality: str) -> list[Path]:
    """Write the three montages of one case into `folder`; returns their paths."""
    input_label = {"mr": "CT", "ct": "MR"}[modality]
    paths = []
    for view in VIEWS:
        path = Path(folder) / image_name(volumes.case, view)
        montage(volumes, scale, view, input_label).save(path)
        paths.append(path)
    return paths


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape("—" if value is None else str(value))


def write_index(folder: Path, results: dict) -> Path:
    """index.html: the metric table (cases, then mean and std) and each case's montages, by relative link."""
    cases = results["cases"]
    keys = [key for key in results["summary"] if key != "paper_pooled"]
    head = "".join(f"<th>{html.escape(key)}</th>" for key in ["case", *keys])
    rows = ["<tr>" + f"<td>{html.escape(record['case'])}</td>"
            + "".join(f"<td>{_cell(record.get(key))}</td>" for key in keys) + "</tr>" for record in cases]
    for statistic in ("mean", "std"):
        rows.append(f"<tr class=stat><td>{statistic}</td>"
                    + "".join(f"<td>{_cell(results['summary'][key][statistic])}</td>" for key in keys)
                    + "</tr>")
    figures = []
    for record in cases:
        case = html.escape(record["case"])
        figures.append(f"<h2 id=\"{case}\">{case}</h2>" + "".join(
            f"<figure><img src=\"{html.escape(image_name(record['case'], view))}\" alt=\"{case} {view}\">"
            f"<figcaption>{view}</figcaption></figure>" for view in VIEWS))
    scale = results["scale"]
    pooled = results["summary"].get("paper_pooled")
    pooled_line = "" if pooled is None else (
        "<p>Paper protocol pooled over all {slices} scored slices: SSIM {paper_ssim:.2f} %, "
        "PSNR {paper_psnr:.2f} dB, MSE {paper_mse:.2f}.</p>".format(**pooled))
    text = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>diffma eval</title>
<style>body{{font-family:sans-serif;margin:1em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #999;padding:2px 6px;text-align:right}}tr.stat{{font-weight:bold}}
figure{{display:inline-block;margin:4px}}img{{image-rendering:pixelated}}</style></head><body>
<h1>diffma eval: {html.escape(results['modality'])}, protocol {html.escape(results['protocol'])}</h1>
<p>Metric scale [{scale['low']:g}, {scale['high']:g}]; definitions in docs/metrics.md and
docs/consistency.md. Montage columns: input | generated | reference | |error| (black 0, white
{ERROR_FRACTION:g} of the data range).</p>
<table><tr>{head}</tr>
{chr(10).join(rows)}
</table>
{pooled_line}
{chr(10).join(figures)}
</body></html>
"""
    path = Path(folder) / "index.html"
    path.write_text(text, encoding="utf-8")
    return path
