"""`diffma convert` end to end with a tiny run: files, DICOM series, folders (resume), one-line errors and
nothing half-written."""

import numpy as np
import SimpleITK as sitk
import torch
from convert_cases import DIRECTION, ORIGIN, SHAPE, SPACING, ct_array, write, write_dicom_series
from typer.testing import CliRunner

from diffma_cli.cli import app
from diffma_cli.io.atomic import PARTIAL_PREFIX


def invoke(*args):
    return CliRunner().invoke(app, ["convert", *map(str, args)])


def one_line_error(result, code):
    assert result.exit_code == code, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("diffma: error:")]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def no_partials(folder):
    return not any(path.name.startswith(PARTIAL_PREFIX) for path in folder.rglob("*"))


def same_grid(image, reference):
    return (image.GetSize() == reference.GetSize()
            and np.allclose(image.GetSpacing(), reference.GetSpacing(), atol=1e-4)
            and np.allclose(image.GetOrigin(), reference.GetOrigin(), atol=1e-4)
            and np.allclose(image.GetDirection(), reference.GetDirection(), atol=1e-6))


def test_one_volume_keeps_the_grid_and_needs_overwrite(tmp_path, run_dir, ct_file):
    out = tmp_path / "out" / "mri.nii.gz"
    result = invoke(ct_file, "-o", out, "--model", run_dir, "--device", "cpu", "--samples", "2")
    assert result.exit_code == 0, result.output
    image = sitk.ReadImage(str(out))
    assert image.GetSize() == SHAPE[::-1] and image.GetPixelID() == sitk.sitkFloat32
    assert np.allclose(image.GetSpacing(), SPACING) and np.allclose(image.GetOrigin(), ORIGIN)
    assert np.allclose(image.GetDirection(), DIRECTION)
    values = sitk.GetArrayFromImage(image)
    assert np.isfinite(values).all() and -1.0 <= values.min() and values.max() <= 1.0
    std = sitk.ReadImage(str(tmp_path / "out" / "mri_std.nii.gz"))
    assert same_grid(std, image) and sitk.GetArrayFromImage(std).max() > 0
    before = out.stat().st_mtime_ns
    line = one_line_error(invoke(ct_file, "-o", out, "--model", run_dir, "--device", "cpu"), 3)
    assert "already exists" in line and "--overwrite" in line and out.stat().st_mtime_ns == before
    assert invoke(ct_file, "-o", out, "--model", run_dir, "--device", "cpu", "--overwrite").exit_code == 0


def test_unreadable_and_non_hu_inputs_write_nothing(tmp_path, run_dir):
    out_dir = tmp_path / "out"
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not a volume")
    result = invoke(broken, "-o", out_dir / "a.nii.gz", "--model", run_dir, "--device", "cpu")
    line = one_line_error(result, 2)
    assert "broken.nii.gz" in line
    raw = write((ct_array().astype(np.int32) + 1024).astype(np.uint16), tmp_path / "raw.nii.gz")
    line = one_line_error(invoke(raw, "-o", out_dir / "b.nii.gz", "--model", run_dir, "--device", "cpu"), 2)
    assert "Hounsfield" in line and "raw.nii.gz" in line
    assert not out_dir.exists() or not any(out_dir.iterdir())


def test_bad_options_model_and_device_are_one_line(tmp_path, run_dir, ct_file):
    out = tmp_path / "mri.nii.gz"
    assert "noise" in one_line_error(invoke(ct_file, "-o", out, "--model", run_dir, "--noise", "pink"), 2)
    assert "run" in one_line_error(invoke(ct_file, "-o", out, "--model", tmp_path), 2)
    assert "suffix" in one_line_error(invoke(ct_file, "-o", tmp_path / "mri", "--model", run_dir), 2)
    if not torch.cuda.is_available():
        assert "CUDA" in one_line_error(invoke(ct_file, "-o", out, "--model", run_dir, "--device", "cuda"), 4)
    assert not out.exists()


def test_dicom_series_folder(tmp_path, run_dir):
    series = tmp_path / "series"
    write_dicom_series(ct_array(), series)
    out = tmp_path / "mri.mha"
    result = invoke(series, "-o", out, "--model", run_dir, "--device", "cpu")
    assert result.exit_code == 0, result.output
    reference = sitk.ReadImage(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(series)))
    assert np.allclose(reference.GetDirection(), DIRECTION, atol=1e-5)  # the series kept the test's geometry
    assert same_grid(sitk.ReadImage(str(out)), reference)


def test_folder_input_resumes_and_stops_cleanly_on_a_bad_case(tmp_path, run_dir):
    source = tmp_path / "cases"
    write(ct_array(), source / "a.nii.gz")
    write(ct_array()[:, :, ::-1].copy(), source / "b.mha")
    write(ct_array(), source / "1BA001" / "ct.nii.gz")
    write((ct_array() > -500).astype(np.uint8), source / "1BA001" / "mask.nii.gz")
    (source / "overview").mkdir()
    (source / "overview" / "notes.txt").write_text("ignored", encoding="utf-8")
    out = tmp_path / "pred"
    result = invoke(source, "-o", out, "--model", run_dir, "--device", "cpu", "--mask")
    assert result.exit_code == 0, result.output
    assert sorted(path.name for path in out.iterdir()) == ["1BA001.nii.gz", "a.nii.gz", "b.mha"]
    with_mask = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "1BA001.nii.gz")))
    assert (with_mask[ct_array() <= -500] == -1.0).all()  # --mask with the case folder's mask

    times = {path.name: path.stat().st_mtime_ns for path in out.iterdir()}
    (out / "a.nii.gz").unlink()
    result = invoke(source, "-o", out, "--model", run_dir, "--device", "cpu")
    assert result.exit_code == 0 and "skipped 2" in result.output, result.output
    assert (out / "a.nii.gz").exists()
    assert all(times[name] == (out / name).stat().st_mtime_ns for name in ("b.mha", "1BA001.nii.gz"))

    write((ct_array().astype(np.int32) + 1024).astype(np.uint16), source / "c.nii.gz")
    line = one_line_error(invoke(source, "-o", out, "--model", run_dir, "--device", "cpu", "--overwrite"), 2)
    assert "c.nii.gz" in line and "Hounsfield" in line
    assert not (out / "c.nii.gz").exists() and no_partials(tmp_path)


def test_help_lists_convert():
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0 and "convert" in result.output


def test_mr_to_ct_run_writes_hu_with_a_body_found_in_the_mr(tmp_path, mr_to_ct_run):
    from convert_cases import BODY_SLICES, body_of

    body = body_of()
    mr = np.where(body, 400.0 + 20 * np.cos(np.arange(SHAPE[2]) / 2.0), 3.0).astype(np.float32)
    source = tmp_path / "cases" / "1PA001" / "mr.nii.gz"  # SynthRAD layout: an MR->CT run reads mr.*
    write(mr, source)
    result = invoke(tmp_path / "cases", "-o", tmp_path / "pred", "--model", mr_to_ct_run, "--device", "cpu")
    assert result.exit_code == 0, result.output
    ct = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "pred" / "1PA001.nii.gz")))
    outside = [z for z in range(SHAPE[0]) if z not in BODY_SLICES]  # Otsu found no body there
    assert (ct[outside] == -1024.0).all()
    assert ct.min() >= -1024.0 and ct.max() <= 3000.0 and ct[list(BODY_SLICES)].std() > 1.0


def test_command_line_defaults_are_the_library_defaults():
    """`diffma convert` and `SamplingOptions()` must sample the same way when no option is given; the command
    keeps its defaults as literals so that `diffma --help` does not import torch."""
    import dataclasses
    import inspect

    from diffma_cli.commands.convert import convert as command
    from diffma_cli.convert import SamplingOptions

    parameters = inspect.signature(command).parameters
    options = {name: parameter.default.default for name, parameter in parameters.items()
               if hasattr(parameter.default, "default")}
    library = {field.name: field.default for field in dataclasses.fields(SamplingOptions)}
    assert set(library) <= set(options)  # every sampling option is on the command line
    assert {name: options[name] for name in library} == library
