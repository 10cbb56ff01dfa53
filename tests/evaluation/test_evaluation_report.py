"""Report montages: columns, physical proportions, orientation; index.html links only to files it wrote."""

import re

import numpy as np
import pytest
from PIL import Image

from diffma_cli.errors import OutputError
from diffma_cli.evaluation import report
from diffma_cli.evaluation.pairing import CaseVolumes
from diffma_cli.evaluation.scales import NORMALISED_RANGE


def volumes(with_input=True, spacing=(2.5, 1.0, 1.0)):
    shape = (10, 20, 16)  # (z, y, x)
    z = np.arange(shape[0])[:, None, None] * np.ones(shape)
    reference = (z / 9 * 2 - 1).astype(np.float32)  # dark at z = 0 (inferior), bright at the top slice
    mask = np.zeros(shape, bool)
    mask[1:-1, 4:-4, 3:-3] = True
    return CaseVolumes(case="1PA001", prediction=reference.copy(), reference=reference, mask=mask,
                       input=np.full(shape, 40.0) if with_input else None, spacing=spacing)


def test_montage_columns_and_physical_proportions():
    case = volumes()
    sagittal = report.montage(case, NORMALISED_RANGE, "sagittal")
    without_input = report.montage(volumes(with_input=False), NORMALISED_RANGE, "sagittal")
    panel_height = sagittal.height - report.LABEL_HEIGHT
    panel_width = (sagittal.width - 3 * report.GAP) / 4
    # Sagittal panels are (z, y): 10 slices x 2.5 mm over 20 rows x 1 mm, so 25 mm high and 20 mm wide.
    assert panel_height == report.PANEL_SIDE
    assert panel_width == pytest.approx(report.PANEL_SIDE * 20 / 25, abs=1)
    assert without_input.width == pytest.approx(sagittal.width * 3 / 4, abs=4)
    axial = report.montage(case, NORMALISED_RANGE, "axial")
    assert axial.height == report.LABEL_HEIGHT + 3 * report.PANEL_SIDE + 2 * report.GAP  # three axial rows


def test_sagittal_and_coronal_show_superior_up():
    case = volumes()
    for view in ("sagittal", "coronal"):
        grey = np.asarray(report.montage(case, NORMALISED_RANGE, view))
        left = grey.shape[1] // 4 + report.GAP + 2  # inside the 'generated' column
        column = grey[report.LABEL_HEIGHT:, left + 5]
        assert column[2] > column[-3], view  # the bright top slice (largest z) is drawn at the top


def test_report_files_and_links(tmp_path):
    case = volumes()
    paths = report.write_case_montages(tmp_path, case, NORMALISED_RANGE, "mr")
    assert [path.name for path in paths] == ["1PA001_axial.png", "1PA001_sagittal.png", "1PA001_coronal.png",
                                             "1PA001_axial_stack.png", "1PA001_sagittal_stack.png",
                                             "1PA001_coronal_stack.png"]
    assert all(Image.open(path).size[0] > 0 for path in paths)
    results = {"modality": "mr", "protocol": "both", "scale": {"low": -1.0, "high": 1.0},
               "cases": [{"case": "1PA001", "ssim": 0.9, "psnr": float("inf")}],
               "summary": {"ssim": {"mean": 0.9, "std": None, "n": 1}, "psnr": {"mean": None, "std": None,
                                                                              "n": 0}}}
    index = report.write_index(tmp_path, results).read_text(encoding="utf-8")
    links = re.findall(r'(?:src|href)="([^"#]+)"', index)  # files, not the table's links to case headings
    assert sorted(links) == sorted(path.name for path in paths)
    assert "0.9" in index and "inf" in index


def test_evaluate_cases_refuses_an_existing_report(tmp_path):
    from diffma_cli.evaluation.evaluate import evaluate_cases

    (tmp_path / "report").mkdir()
    with pytest.raises(OutputError, match="overwrite"):
        evaluate_cases([], report=tmp_path / "report")
