"""The eval report's slice viewers and layout: the HTML structure (always) and its behaviour in headless
Chromium (skipped where no Chromium is installed)."""

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from diffma_cli.evaluation import report
from diffma_cli.evaluation.pairing import CaseVolumes
from diffma_cli.evaluation.scales import NORMALISED_RANGE

SHAPE = (60, 24, 20)  # (z, y, x): more axial slices in the mask than a stack holds
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable",
            "chromium-headless-shell")


def case_volumes(case="1PA001"):
    z = np.arange(SHAPE[0])[:, None, None] * np.ones(SHAPE)
    reference = (z / (SHAPE[0] - 1) * 2 - 1).astype(np.float32)  # brightness encodes z
    mask = np.zeros(SHAPE, bool)
    mask[2:58, 5:19, 4:15] = True  # z 2..57 (56 slices), y 5..18 (14), x 4..14 (11)
    return CaseVolumes(case=case, prediction=reference.copy(), reference=reference, mask=mask,
                       input=np.full(SHAPE, 40.0), spacing=(2.5, 1.0, 1.0))


def wide_results(cases):
    """Results with many metrics, so that the table is wider than a browser window."""
    keys = [f"metric_with_a_long_name_{k}" for k in range(24)]
    records = [{"case": case, **{key: 0.123456 + k for k, key in enumerate(keys)}} for case in cases]
    return {"modality": "mr", "protocol": "both", "scale": {"low": -1.0, "high": 1.0}, "cases": records,
            "summary": {key: {"mean": 1.5, "std": 0.25, "n": len(cases)} for key in keys}}


@pytest.fixture
def written_report(tmp_path):
    cases = ["1PA001", "1PA002"]
    for case in cases:
        report.write_case_montages(tmp_path, case_volumes(case), NORMALISED_RANGE, "mr")
    return report.write_index(tmp_path, wide_results(cases))


class Elements(HTMLParser):
    """Every start tag as (tag, attributes, enclosing tags)."""

    def __init__(self):
        super().__init__()
        self.found, self.open = [], []

    def handle_starttag(self, tag, attrs):
        self.found.append((tag, dict(attrs), list(self.open)))
        if tag not in ("img", "input", "meta", "br"):
            self.open.append(tag)

    def handle_endtag(self, tag):
        if tag in self.open:
            del self.open[len(self.open) - 1 - self.open[::-1].index(tag):]


def test_stack_positions_cover_the_mask_extent():
    mask = case_volumes().mask
    assert report.stack_positions(mask, "sagittal") == list(range(4, 15))  # all 11, fewer than the limit
    axial = report.stack_positions(mask, "axial", most=10)
    assert len(axial) == 10 and axial[0] == 2 and axial[-1] == 57
    assert np.all(np.diff(axial) >= 5) and np.all(np.diff(axial) <= 7)  # evenly spaced over 55


def test_stack_rows_are_the_slices_in_order(tmp_path):
    volumes = case_volumes()
    image, positions = report.stack(volumes, NORMALISED_RANGE, "axial")
    assert len(positions) == report.STACK_SLICES
    grey = np.asarray(image)
    row = image.height // len(positions)
    assert image.height == row * len(positions)
    # The 'generated' column (second of four) of each row is flat at that slice's 8-bit brightness.
    generated = grey[row // 2::row, image.width * 3 // 8]
    expected = np.floor(255 * (np.asarray(positions) / (SHAPE[0] - 1)) + 0.5)
    np.testing.assert_allclose(generated, expected, atol=1)


def test_index_structure(written_report):
    folder = written_report.parent
    text = written_report.read_text(encoding="utf-8")
    parser = Elements()
    parser.feed(text)
    tables = [enclosing for tag, _, enclosing in parser.found if tag == "table"]
    assert len(tables) == 1 and "div" in tables[0]
    assert re.search(r"\.table-wrap\{overflow-x:auto", text)
    viewers = [(attrs, enclosing) for tag, attrs, enclosing in parser.found
               if tag == "figure" and attrs.get("class") == "viewer"]
    assert len(viewers) == 2 * 3
    sliders = [attrs for tag, attrs, _ in parser.found if tag == "input" and attrs.get("type") == "range"]
    stacks = [attrs["src"] for tag, attrs, _ in parser.found if tag == "img"]
    assert len(sliders) == len(stacks) == 6
    for (viewer, _), slider, source in zip(viewers, sliders, stacks, strict=True):
        slices = viewer["data-slices"].split(",")
        assert int(slider["max"]) == len(slices) - 1
        with Image.open(folder / source) as image:
            assert image.text["slices"] == viewer["data-slices"]
            assert image.height % len(slices) == 0
    first = viewers[0][0]["data-slices"].split(",")
    assert first == [str(p) for p in report.stack_positions(case_volumes().mask, "axial")]
    links = [attrs["href"] for tag, attrs, _ in parser.found if tag == "a"]
    assert {"1PA001_sagittal.png", "#1PA002"} <= set(links)
    assert all((folder / link).is_file() for link in links + stacks if not link.startswith("#"))
    assert "<script>" in text and "http" not in text


def browser():
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


PROBE = """<script>
window.addEventListener("load", () => {
  const viewer = document.querySelector(".viewer"), slider = viewer.querySelector("input");
  const image = viewer.querySelector("img"), frame = viewer.querySelector(".frame");
  const state = () => ({transform: image.style.transform, where: viewer.querySelector(".where").textContent});
  const result = {initial: state(), loaded: image.complete && image.naturalHeight > 0,
                  rows: viewer.dataset.slices.split(",").length,
                  frameHeight: frame.getBoundingClientRect().height,
                  imageHeight: image.getBoundingClientRect().height};
  slider.value = 2; slider.dispatchEvent(new Event("input"));
  result.moved = state();
  frame.dispatchEvent(new WheelEvent("wheel", {deltaY: 100, cancelable: true}));
  result.wheeled = state();
  const wrap = document.querySelector(".table-wrap");
  result.page = [document.documentElement.scrollWidth, document.documentElement.clientWidth];
  result.table = [wrap.scrollWidth, wrap.clientWidth];
  const out = document.createElement("pre"); out.id = "probe"; out.textContent = JSON.stringify(result);
  document.body.appendChild(out);
});
</script></body>"""


@pytest.mark.skipif(browser() is None, reason="no Chromium installed (" + ", ".join(BROWSERS) + ")")
def test_viewer_in_headless_chromium(written_report):
    probe = written_report.with_name("probe.html")
    probe.write_text(written_report.read_text(encoding="utf-8").replace("</body>", PROBE), encoding="utf-8")
    completed = subprocess.run([browser(), "--headless", "--no-sandbox", "--disable-gpu",
                                "--allow-file-access-from-files", "--window-size=900,700",
                                "--virtual-time-budget=3000", "--dump-dom", probe.as_uri()],
                               capture_output=True, encoding="utf-8", timeout=120)
    found = re.search(r'<pre id="probe">(.*?)</pre>', completed.stdout, re.S)
    assert found, completed.stderr[-2000:]
    result = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    positions = report.stack_positions(case_volumes().mask, "axial")
    rows = len(positions)
    assert result["loaded"] and result["rows"] == rows
    assert result["initial"]["where"] == f"axial z {positions[rows // 2]} ({rows // 2 + 1}/{rows})"
    assert result["frameHeight"] == pytest.approx(result["imageHeight"] / rows, abs=1)  # one slice shows
    assert result["moved"]["where"] == f"axial z {positions[2]} (3/{rows})"
    moved = float(re.search(r"translateY\((-?[\d.]+)%\)", result["moved"]["transform"]).group(1))
    assert moved == pytest.approx(-100 * 2 / rows, abs=1e-3)
    assert result["wheeled"]["where"] == f"axial z {positions[3]} (4/{rows})"
    page_width, window_width = result["page"]
    assert page_width <= window_width  # the page fits the window ...
    table_width, wrap_width = result["table"]
    assert table_width > wrap_width  # ... because the wide table scrolls inside its container
