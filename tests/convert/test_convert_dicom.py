"""`diffma convert --output-format dicom`: a DICOM MR series on the CT's study and frame of reference, read
back with SimpleITK and compared with the NIfTI output of the same conversion."""

import numpy as np
import SimpleITK as sitk
from convert_cases import ct_array, write_dicom_series
from test_convert_cli import invoke, one_line_error, same_grid

from diffma_cli import __version__
from diffma_cli.io.dicom_series import rescale_for

STUDY, FRAME = "1.2.826.0.1.3680043.2.1125.1", "1.2.826.0.1.3680043.2.1125.1.9"
SOURCE_TAGS = [("0020|0052", FRAME), ("0010|0010", "Phantom^Pelvis"), ("0010|0020", "PX-17"),
               ("0008|0020", "20260102"), ("0008|1030", "RT planning"), ("0018|5100", "HFS")]


def read_series(folder):
    """(image, {tag: value} of its first file, number of files) as a planning system's reader would see it."""
    ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    assert len(ids) == 1
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), ids[0])
    reader = sitk.ImageFileReader()
    reader.SetFileName(files[0])
    reader.ReadImageInformation()
    tags = {key: reader.GetMetaData(key).strip() for key in reader.GetMetaDataKeys()}
    return sitk.ReadImage(files), tags, files


def test_dicom_ct_series_to_dicom_mr_series(tmp_path, run_dir):
    series = tmp_path / "CT"
    write_dicom_series(ct_array(), series, SOURCE_TAGS)
    ct, ct_tags, _ = read_series(series)
    common = ["--model", run_dir, "--device", "cpu", "--samples", "2"]
    assert invoke(series, "-o", tmp_path / "mri.nii.gz", *common).exit_code == 0
    result = invoke(series, "-o", tmp_path / "sMR", "--output-format", "dicom", *common)
    assert result.exit_code == 0, result.output

    mr, tags, files = read_series(tmp_path / "sMR")
    assert len(files) == ct.GetDepth() and same_grid(mr, ct)
    assert tags["0020|000d"] == ct_tags["0020|000d"] == STUDY and tags["0020|0052"] == FRAME
    assert tags["0020|000e"] not in (ct_tags["0020|000e"], "") and tags["0008|0060"] == "MR"
    for tag, value in SOURCE_TAGS:
        assert tags[tag] == value, tag
    assert "SYNTHETIC MR" in tags["0008|103e"] and "diffma" in tags["0008|103e"]
    comments = tags["0020|4000"]
    assert "SYNTHETIC MR" in comments and "not an acquired image" in comments
    assert f"model {run_dir.name} (DiffMa-S/2)" in comments and f"diffma {__version__}" in comments
    instances = set()
    for name in files:
        reader = sitk.ImageFileReader()
        reader.SetFileName(name)
        reader.ReadImageInformation()
        instances.add(reader.GetMetaData("0008|0018"))
    assert len(instances) == len(files) and ct_tags.get("0008|0018") not in instances

    nifti = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "mri.nii.gz")))
    values = sitk.GetArrayFromImage(mr)
    intercept, slope = (float(v) for v in rescale_for(nifti))
    assert np.abs(values - nifti).max() <= slope  # within one rescale step
    assert np.abs(values - nifti).max() > 0 or np.ptp(nifti) == 0  # really integers behind it

    std, std_tags, _ = read_series(tmp_path / "sMR_std")  # the std map: a second series of the study
    assert same_grid(std, ct) and std_tags["0020|000e"] != tags["0020|000e"]
    assert std_tags["0020|000d"] == STUDY and "STD" in std_tags["0008|103e"]


def test_nifti_input_gets_fresh_uids_and_bad_names_are_one_line(tmp_path, run_dir, ct_file):
    common = ["--model", run_dir, "--device", "cpu"]
    result = invoke(ct_file, "-o", tmp_path / "a.nii.gz", "--output-format", "dicom", *common)
    assert "folder" in one_line_error(result, 2)
    assert "suffix" in one_line_error(invoke(ct_file, "-o", tmp_path / "a", *common), 2)
    for name in ("one", "two"):
        assert invoke(ct_file, "-o", tmp_path / name, "--output-format", "dicom", *common).exit_code == 0
    (one, first, _), (_, second, _) = read_series(tmp_path / "one"), read_series(tmp_path / "two")
    assert same_grid(one, sitk.ReadImage(str(ct_file)))
    for tag in ("0020|000d", "0020|0052", "0020|000e"):
        assert first[tag].startswith("2.25.") and first[tag] != second[tag]


def test_rescale_spreads_the_range_over_16_bits():
    values = np.array([-0.731, 0.25, 0.998], np.float32)
    intercept, slope = rescale_for(values)
    assert len(intercept) <= 16 and len(slope) <= 16
    stored = np.rint((values - float(intercept)) / float(slope))
    assert stored.min() == 0 and 65534 <= stored.max() <= 65535
    assert np.abs(stored * float(slope) + float(intercept) - values).max() <= float(slope) / 2 + 1e-7
    assert rescale_for(np.full(3, 0.5))[1] == "1"


def test_a_folder_of_dicom_series_gives_one_series_per_patient(tmp_path, run_dir, ct_file):
    cases = tmp_path / "cohort"
    cases.mkdir()
    studies = {"P1": "1.2.826.0.1.3680043.2.1125.7", "P2": "1.2.826.0.1.3680043.2.1125.8"}
    for name, study in studies.items():
        write_dicom_series(ct_array(), cases / name, [("0020|000d", study), ("0010|0020", name)])
    (cases / "nifti.nii.gz").write_bytes(ct_file.read_bytes())
    out = tmp_path / "pred"
    result = invoke(cases, "-o", out, "--model", run_dir, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert sorted(path.name for path in out.iterdir()) == ["P1", "P2", "nifti.nii.gz"]
    for name, study in studies.items():
        image, tags, _ = read_series(out / name)
        assert tags["0020|000d"] == study and tags["0010|0020"] == name and tags["0008|0060"] == "MR"
        assert same_grid(image, read_series(cases / name)[0])
    again = invoke(cases, "-o", out, "--model", run_dir, "--device", "cpu")
    assert again.exit_code == 0 and "skipped 3" in again.output, again.output
