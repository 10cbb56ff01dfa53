"""Visual report: PNG montages per case and an index.html that opens from disk (no external assets).

Per case three montages, columns input | generated | reference | |error|:
`<case>_axial.png` (three axial slices at 25, 50 and 75 % of the mask's z extent), `<case>_sagittal.png`
and `<case>_coronal.png` (the slice through the mask's centre; these show slice-to-slice inconsistency).
Display scales: generated and reference on the metric scale (`scales.metric_range`), the input between the
1st and 99th percentile of its mask voxels, |error| from 0 (black) to a quarter of the data range (white).
Panels keep physical proportions (voxel spacing) and superior is up in sagittal and coronal views.

For browsing, per case and plane a slice stack `<case>_<view>_stack.png`: the same columns for up to
`STACK_SLICES` evenly spaced slices through the mask's extent, one row each, no gaps, smaller panels; the
PNG's text chunk "slices" lists the slice indices. index.html shows one row of each stack at a time with a
slider (and the mouse wheel) to move through it: plain HTML, CSS and a short inline script, no server.
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
STACK_PANEL_SIDE = 128  # pixels of a stack panel's longer side
STACK_SLICES = 48  # most rows of a stack: keeps a stack PNG near a megabyte
VIEW_AXIS = {"axial": 0, "sagittal": 2, "coronal": 1}  # the array axis (z, y, x) a plane's slices step along


def image_name(case: str, view: str) -> str:
    return f"{case}_{view}.png"


def stack_name(case: str, view: str) -> str:
    return f"{case}_{view}_stack.png"


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


def _slice_index(view: str, position: int) -> tuple:
    """Index into (z, y, x) of slice `position` of `view`, superior up in sagittal and coronal."""
    if view == "axial":
        return (position, slice(None), slice(None))
    if view == "sagittal":
        return (slice(None, None, -1), slice(None), position)
    return (slice(None, None, -1), position, slice(None))


def stack_positions(mask: np.ndarray, view: str, most: int = STACK_SLICES) -> list[int]:
    """Positions along `view`'s axis of the stack's rows: every slice of the mask's extent, or `most`
    evenly spaced ones (first and last included) when there are more."""
    axis = VIEW_AXIS[view]
    occupied = np.flatnonzero(np.asarray(mask).any(axis=tuple(a for a in range(3) if a != axis)))
    low, high = int(occupied.min()), int(occupied.max())
    if high - low + 1 <= most:
        return list(range(low, high + 1))
    return sorted({int(round(value)) for value in np.linspace(low, high, most)})


def _panel(grey: np.ndarray, spacing: tuple[float, float], side: int = PANEL_SIDE):
    """An 8-bit 2-D array as a PIL image resized to physical proportions, longer side `side`."""
    from PIL import Image

    height_mm, width_mm = grey.shape[0] * spacing[0], grey.shape[1] * spacing[1]
    factor = side / max(height_mm, width_mm)
    size = (max(1, round(width_mm * factor)), max(1, round(height_mm * factor)))
    return Image.fromarray(grey).resize(size, Image.Resampling.BILINEAR)


def _input_range(volumes: CaseVolumes) -> IntensityRange:
    low, high = np.percentile(volumes.input[volumes.mask], INPUT_PERCENTILES)
    return IntensityRange(float(low), float(high) if high > low else float(low) + 1.0)


def _columns(volumes: CaseVolumes, scale: IntensityRange, input_label: str) -> list:
    """[(label, volume, display range)]: input (if any) | generated | reference | |error|."""
    error = np.abs(scale.clip(volumes.prediction) - scale.clip(volumes.reference))
    columns = [("generated", volumes.prediction, scale), ("reference", volumes.reference, scale),
               ("|error|", error, IntensityRange(0.0, ERROR_FRACTION * scale.data_range))]
    if volumes.input is not None:
        columns.insert(0, (input_label, volumes.input, _input_range(volumes)))
    return columns


def stack(volumes: CaseVolumes, scale: IntensityRange, view: str, input_label: str = "input"):
    """(PIL image, positions): one row per position of `stack_positions`, the montage's columns, panels
    of longer side STACK_PANEL_SIDE, rows without gaps (so row i spans exactly rows i/N..(i+1)/N)."""
    from PIL import Image

    columns = _columns(volumes, scale, input_label)
    positions = stack_positions(volumes.mask, view)
    spacing = {"axial": volumes.spacing[1:], "sagittal": volumes.spacing[:2],
               "coronal": (volumes.spacing[0], volumes.spacing[2])}[view]
    rows = [[_panel(to_uint8(volume[_slice_index(view, position)], shown), spacing, STACK_PANEL_SIDE)
             for _, volume, shown in columns] for position in positions]
    width = sum(panel.width for panel in rows[0]) + GAP * (len(columns) - 1)
    canvas = Image.new("L", (width, rows[0][0].height * len(rows)), 0)
    for number, row in enumerate(rows):
        left = 0
        for panel in row:
            canvas.paste(panel, (left, number * panel.height))
            left += panel.width + GAP
    return canvas, positions


def montage(volumes: CaseVolumes, scale: IntensityRange, view: str, input_label: str = "input"):
    """A PIL image: one row per panel of `view`, columns input (if any) | generated | reference | |error|."""
    from PIL import Image, ImageDraw

    columns = _columns(volumes, scale, input_label)
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
    """Write the three montages and the three slice stacks of one case into `folder`; returns their paths
    (montages first)."""
    from PIL.PngImagePlugin import PngInfo

    input_label = {"mr": "CT", "ct": "MR"}[modality]
    paths = []
    for view in VIEWS:
        path = Path(folder) / image_name(volumes.case, view)
        montage(volumes, scale, view, input_label).save(path)
        paths.append(path)
    for view in VIEWS:
        image, positions = stack(volumes, scale, view, input_label)
        info = PngInfo()
        info.add_text("slices", ",".join(map(str, positions)))
        path = Path(folder) / stack_name(volumes.case, view)
        image.save(path, pnginfo=info)
        paths.append(path)
    return paths


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape("—" if value is None else str(value))


# Moves every slice viewer to the slider's row: the stack image is N rows tall, so row i starts at i/N of its
# height, whatever size the browser scales it to. The mouse wheel over a frame steps one slice.
VIEWER_SCRIPT = """
for (const viewer of document.querySelectorAll(".viewer")) {
  const image = viewer.querySelector("img"), slider = viewer.querySelector("input");
  const where = viewer.querySelector(".where"), slices = viewer.dataset.slices.split(",");
  const show = () => {
    const row = Number(slider.value);
    image.style.transform = "translateY(" + (-100 * row / slices.length) + "%)";
    where.textContent = `${viewer.dataset.axis} ${slices[row]} (${row + 1}/${slices.length})`;
  };
  slider.addEventListener("input", show);
  viewer.querySelector(".frame").addEventListener("wheel", (event) => {
    event.preventDefault();
    slider.value = Number(slider.value) + Math.sign(event.deltaY);
    show();
  }, {passive: false});
  show();
}
"""
STYLE = """body{font-family:sans-serif;margin:1em;max-width:100%}
.table-wrap{overflow-x:auto;max-width:100%}table{border-collapse:collapse}
td,th{border:1px solid #999;padding:2px 6px;text-align:right;white-space:nowrap}tr.stat{font-weight:bold}
th:first-child,td:first-child{position:sticky;left:0;background:#fff;text-align:left}
.views{display:flex;flex-wrap:wrap;gap:8px}.viewer{max-width:100%}
.frame{overflow:hidden;max-width:100%;background:#000}
.frame img{display:block;width:100%;image-rendering:pixelated}
.viewer input{display:block;width:100%}.where{font-size:small}"""
AXIS_NAMES = {"axial": "z", "sagittal": "x", "coronal": "y"}


def _viewer(folder: Path, case: str, view: str) -> str:
    """The slice viewer of one case and plane (empty when its stack was not written)."""
    from PIL import Image

    path = Path(folder) / stack_name(case, view)
    if not path.is_file():
        return ""
    with Image.open(path) as image:
        (width, height), slices = image.size, image.text.get("slices", "")
    count = len(slices.split(","))
    name = html.escape(f"{case} {view}")
    return (f"<figure class=viewer data-slices=\"{html.escape(slices)}\" data-axis=\"{view} "
            f"{AXIS_NAMES[view]}\"><figcaption>{view}</figcaption>"
            f"<div class=frame style=\"width:{width}px;aspect-ratio:{width}/{height // count}\">"
            f"<img src=\"{html.escape(stack_name(case, view))}\" alt=\"{name} slices\"></div>"
            f"<input type=range min=0 max={count - 1} value={count // 2} aria-label=\"{name} slice\">"
            f"<span class=where></span></figure>")


def write_index(folder: Path, results: dict) -> Path:
    """index.html: the metric table (cases, then mean and std; scrolls sideways inside the page when wide)
    and per case a slice viewer for each plane, with links to the montages; relative links only."""
    cases = results["cases"]
    keys = [key for key in results["summary"] if key != "paper_pooled"]
    head = "".join(f"<th>{html.escape(key)}</th>" for key in ["case", *keys])
    rows = ["<tr>" + f"<td><a href=\"#{html.escape(record['case'])}\">{html.escape(record['case'])}</a></td>"
            + "".join(f"<td>{_cell(record.get(key))}</td>" for key in keys) + "</tr>" for record in cases]
    for statistic in ("mean", "std"):
        rows.append(f"<tr class=stat><td>{statistic}</td>"
                    + "".join(f"<td>{_cell(results['summary'][key][statistic])}</td>" for key in keys)
                    + "</tr>")
    figures = []
    for record in cases:
        case = html.escape(record["case"])
        links = ", ".join(f"<a href=\"{html.escape(image_name(record['case'], view))}\">{view}</a>"
                          for view in VIEWS)
        figures.append(f"<h2 id=\"{case}\">{case}</h2><p>Montages: {links}.</p><div class=views>"
                       + "".join(_viewer(folder, record["case"], view) for view in VIEWS) + "</div>")
    scale = results["scale"]
    pooled = results["summary"].get("paper_pooled")
    pooled_line = "" if pooled is None else (
        "<p>Paper protocol pooled over all {slices} scored slices: SSIM {paper_ssim:.2f} %, "
        "PSNR {paper_psnr:.2f} dB, MSE {paper_mse:.2f}.</p>".format(**pooled))
    text = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>diffma eval</title>
<style>{STYLE}</style></head><body>
<h1>diffma eval: {html.escape(results['modality'])}, protocol {html.escape(results['protocol'])}</h1>
<p>Metric scale [{scale['low']:g}, {scale['high']:g}]; definitions in docs/metrics.md and
docs/consistency.md. Image columns: input | generated | reference | |error| (black 0, white
{ERROR_FRACTION:g} of the data range). Move through a case's slices with the slider or the mouse wheel.</p>
<div class=table-wrap><table><tr>{head}</tr>
{chr(10).join(rows)}
</table></div>
{pooled_line}
{chr(10).join(figures)}
<script>{VIEWER_SCRIPT}</script>
</body></html>
"""
    path = Path(folder) / "index.html"
    path.write_text(text, encoding="utf-8")
    return path
