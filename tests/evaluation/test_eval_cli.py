"""`diffma eval` end to end on small SynthRAD-shaped trees written with SimpleITK: files, report, errors."""

import csv
import json
import re

import numpy as np
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from diffma_cli.cli import app
from diffma_cli.data.normalise import mr_scaling, mr_to_unit
from diffma_cli.evaluation.evaluate import evaluate_arrays
from diffma_cli.evaluation.scales import NORMALISED_RANGE

SHAPE = (12, 16, 14)  # (z, y, x)
SPACING = (1.0, 1.0, 2.5)  # (x, y, z) mm, anisotropic like pelvis
DIRECTION = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # not the identity


def write(array, path, spacing=SPACING):
    image = sitk.GetImageFromArray(np.asarray(array))
    image.SetSpacing(spacing)
    image.SetOrigin((-10.0, 5.0, 2.0))
    image.SetDirection(DIRECTION)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


def make_case(root, case_id, seed):
    """A case folder with ct (HU), mr (scanner units) and mask; returns (mr array, mask array)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij")
    mask = ((y - 8) ** 2 + (x - 7) ** 2) < 30
    mr = np.where(mask, 300 + 200 * np.sin(x / 3) * np.cos(y / 4 + z / 5) + rng.normal(0, 10, SHAPE), 0)
    ct = np.where(mask, 40 + 500 * np.cos(x / 3), -1000).astype(np.int16)
    folder = root / "Task1" / "brain" / case_id
    write(ct, folder / "ct.nii.gz")
    write(mr.astype(np.float32), folder / "mr.nii.gz")
    write(mask.astype(np.uint8), folder / "mask.nii.gz")
    return mr.astype(np.float32), mask


def prediction_of(mr, mask, noise, seed):
    unit = mr_to_unit(mr, mr_scaling(mr, mask))
    return (unit + np.random.default_rng(seed).normal(0, noise, SHAPE)).astype(np.float32)


@pytest.fixture
def tree(tmp_path):
    mr1, mask1 = make_case(tmp_path, "1BA001", 0)
    mr2, mask2 = make_case(tmp_path, "1BA002", 1)
    make_case(tmp_path, "1BA003", 2)  # no prediction: not scored
    predictions = tmp_path / "pred"
    write(prediction_of(mr1, mask1, 0.05, 3), predictions / "1BA001.nii.gz")
    write(prediction_of(mr2, mask2, 0.2, 4), predictions / "1BA002" / "mr.nii.gz")
    write(np.zeros(SHAPE, np.float32), predictions / "1BA001_std.nii.gz")  # named after no case: ignored
    return tmp_path


def invoke(*args):
    return CliRunner().invoke(app, ["eval", *map(str, args)])


def one_line_error(result, code):
    assert result.exit_code == code, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("diffma: error:")]
    assert len(lines) == 1 and "Traceback" not in result.output
    return lines[0]


def test_folder_mode_writes_json_csv_and_report(tree):
    out, report = tree / "metrics.json", tree / "report"
    result = invoke(tree / "pred", tree / "Task1", "-o", out, "--report", report)
    assert result.exit_code == 0, result.output
    metrics = json.loads(out.read_text(encoding="utf-8"))
    assert [case["case"] for case in metrics["cases"]] == ["1BA001", "1BA002"]
    first, second = metrics["cases"]
    for key in ("mae", "psnr", "ssim", "paper_ssim", "paper_psnr", "paper_mse", "paper_slices",
                "sagittal_ssim", "coronal_ssim", "sagittal_psnr", "coronal_psnr", "roughness_ratio"):
        assert isinstance(first[key], int | float), key
    assert first["ssim"] > second["ssim"] and first["mae"] < second["mae"]  # less noise, better scores
    assert first["roughness_ratio"] > 1  # independent per-voxel noise
    summary = metrics["summary"]
    assert summary["mae"]["n"] == 2
    assert summary["mae"]["mean"] == pytest.approx((first["mae"] + second["mae"]) / 2)
    assert summary["mae"]["std"] == pytest.approx(np.std([first["mae"], second["mae"]], ddof=1))
    assert summary["paper_pooled"]["slices"] == first["paper_slices"] + second["paper_slices"]
    rows = list(csv.DictReader(out.with_suffix(".csv").open(encoding="utf-8")))
    assert [row["case"] for row in rows] == ["1BA001", "1BA002"]
    assert float(rows[0]["ssim"]) == pytest.approx(first["ssim"])
    index = (report / "index.html").read_text(encoding="utf-8")
    images = re.findall(r'src="([^"]+)"', index)
    assert len(images) == 6 and all((report / name).is_file() for name in images)
    assert "1BA002" in index and "http" not in index  # opens from disk, no external assets
    assert f"all {summary['paper_pooled']['slices']} scored slices" in index
    assert metrics["diffma"] and metrics["modality"] == "mr"


def test_one_case_matches_the_library_on_normalised_arrays(tree):
    case = tree / "Task1" / "brain" / "1BA001"
    out = tree / "one.json"
    result = invoke(tree / "pred" / "1BA001.nii.gz", "--target", case / "mr.nii.gz", "--mask",
                    case / "mask.nii.gz", "--ct", case / "ct.nii.gz", "--protocol", "synthrad", "-o", out)
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text(encoding="utf-8"))["cases"][0]
    assert record["case"] == "1BA001" and "paper_ssim" not in record
    mr = sitk.GetArrayFromImage(sitk.ReadImage(str(case / "mr.nii.gz")))
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(case / "mask.nii.gz"))) > 0
    prediction = sitk.GetArrayFromImage(sitk.ReadImage(str(tree / "pred" / "1BA001.nii.gz")))
    expected = evaluate_arrays(prediction, mr_to_unit(mr, mr_scaling(mr, mask)), mask, protocol="synthrad")
    for key, value in expected.items():
        assert record[key] == pytest.approx(value), key


def test_a_perfect_prediction_scores_perfectly(tree):
    case = tree / "Task1" / "brain" / "1BA003"
    mr = sitk.GetArrayFromImage(sitk.ReadImage(str(case / "mr.nii.gz")))
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(case / "mask.nii.gz")))
    perfect = write(mr_to_unit(mr, mr_scaling(mr, mask)), tree / "perfect.nii.gz")
    out = tree / "perfect.json"
    result = invoke(perfect, "--target", case / "mr.nii.gz", "--mask", case / "mask.nii.gz", "-o", out)
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text(encoding="utf-8"))["cases"][0]
    assert record["mae"] == 0 and record["psnr"] is None  # +inf is written as null (strict JSON)
    assert record["ssim"] == pytest.approx(1.0) and record["roughness_ratio"] == pytest.approx(1.0)
    assert record["paper_ssim"] == pytest.approx(100.0)


def test_geometry_mismatch_is_one_line(tree):
    case = tree / "Task1" / "brain" / "1BA001"
    shifted = write(np.zeros(SHAPE, np.float32), tree / "shifted.nii.gz", spacing=(1.0, 1.0, 2.0))
    line = one_line_error(invoke(shifted, "--target", case / "mr.nii.gz", "--mask", case / "mask.nii.gz"), 2)
    assert "spacing" in line and "shifted.nii.gz" in line


def test_missing_files_and_bad_options_are_one_line(tree):
    case = tree / "Task1" / "brain" / "1BA001"
    line = one_line_error(invoke(tree / "nope.nii.gz", "--target", case / "mr.nii.gz", "--mask",
                                 case / "mask.nii.gz"), 2)
    assert "nope.nii.gz" in line
    assert "no prediction" in one_line_error(invoke(tree / "Task1", tree / "Task1"), 2)
    assert "DATA_SRC" in one_line_error(invoke(tree / "pred"), 2)
    assert "protocol" in one_line_error(invoke(tree / "pred", tree / "Task1", "--protocol", "x"), 2)
    assert "modality" in one_line_error(invoke(tree / "pred", tree / "Task1", "--modality", "pet"), 2)


def test_existing_outputs_need_overwrite(tree):
    out = tree / "metrics.json"
    out.write_text("{}", encoding="utf-8")
    line = one_line_error(invoke(tree / "pred", tree / "Task1", "-o", out), 3)
    assert "--overwrite" in line
    assert invoke(tree / "pred", tree / "Task1", "-o", out, "--overwrite").exit_code == 0
    assert json.loads(out.read_text(encoding="utf-8"))["cases"]


def test_evaluate_arrays_is_the_python_entry_point():
    reference = np.tanh(np.random.default_rng(0).normal(0, 1, (8, 10, 10))).astype(np.float32)
    result = evaluate_arrays(reference, reference, np.ones(reference.shape, bool), protocol="paper")
    assert result["paper_ssim"] == pytest.approx(100.0) and "mae" not in result
    assert NORMALISED_RANGE.data_range == 2


def test_folder_mode_pairing_problems_are_one_line(tree):
    write(np.zeros(SHAPE, np.float32), tree / "pred" / "1BA001" / "mr.nii.gz")  # a second prediction
    assert "2 predictions" in one_line_error(invoke(tree / "pred", tree / "Task1"), 2)
    (tree / "pred" / "1BA001" / "mr.nii.gz").unlink()
    (tree / "Task1" / "brain" / "1BA002" / "mask.nii.gz").unlink()
    assert "1BA002 has no mask" in one_line_error(invoke(tree / "pred", tree / "Task1"), 2)


def test_mismatched_mask_in_folder_mode_is_found_before_scoring(tree):
    write(np.ones(SHAPE, np.uint8), tree / "Task1" / "brain" / "1BA002" / "mask.nii.gz", spacing=(1, 1, 3))
    result = invoke(tree / "pred", tree / "Task1", "-o", tree / "m.json")
    line = one_line_error(result, 2)
    assert "mask spacing" in line and "1BA002" in line
    assert "eval:" not in result.output  # found before the progress bar started
    assert not (tree / "m.json").exists()


def test_ct_predictions_are_scored_in_hu(tree):
    case = tree / "Task1" / "brain" / "1BA001"
    ct = sitk.GetArrayFromImage(sitk.ReadImage(str(case / "ct.nii.gz"))).astype(np.float32)
    write(ct + 10.0, tree / "sct" / "1BA001" / "ct.nii.gz")  # 10 HU off everywhere
    out = tree / "ct.json"
    result = invoke(tree / "sct", tree / "Task1", "--modality", "ct", "-o", out, "--report", tree / "r")
    assert result.exit_code == 0, result.output
    metrics = json.loads(out.read_text(encoding="utf-8"))
    assert metrics["scale"] == {"low": -1024.0, "high": 3000.0}
    assert metrics["cases"][0]["mae"] == pytest.approx(10.0)
    assert metrics["cases"][0]["psnr"] == pytest.approx(10 * np.log10(4024**2 / 100), rel=1e-6)


def test_a_csv_name_for_the_json_is_refused(tree):
    assert "CSV" in one_line_error(invoke(tree / "pred", tree / "Task1", "-o", tree / "m.csv"), 2)


def test_cases_scored_in_worker_processes_equal_the_serial_scores(tree):
    serial, parallel = tree / "serial.json", tree / "parallel.json"
    assert invoke(tree / "pred", tree / "Task1", "-o", serial).exit_code == 0
    result = invoke(tree / "pred", tree / "Task1", "-o", parallel, "--workers", "2", "--report", tree / "r")
    assert result.exit_code == 0, result.output
    expected, got = (json.loads(path.read_text(encoding="utf-8")) for path in (serial, parallel))
    assert [case["case"] for case in got["cases"]] == ["1BA001", "1BA002"]  # the order of the cases
    assert got["cases"] == expected["cases"] and got["summary"] == expected["summary"]
    assert (tree / "r" / "index.html").is_file()


def test_a_case_failing_in_a_worker_process_is_one_line(tree):
    # A prediction in scanner units (off the normalised scale) is refused inside evaluate_case, which runs in
    # a worker here: the error crosses the process boundary with its message and exit code.
    mr = sitk.GetArrayFromImage(sitk.ReadImage(str(tree / "Task1" / "brain" / "1BA002" / "mr.nii.gz")))
    write(mr, tree / "pred" / "1BA002" / "mr.nii.gz")
    result = invoke(tree / "pred", tree / "Task1", "-o", tree / "m.json", "--workers", "2")
    line = one_line_error(result, 2)
    assert "1BA002" in line
    assert not (tree / "m.json").exists()
