"""Case discovery and header checks against hand-built SynthRAD-shaped trees."""

import numpy as np
import pytest
import SimpleITK as sitk
from synthrad_cases import write_case

from diffma_cli.data.synthrad import CaseError, check_case, find_cases, load_case
from diffma_cli.errors import InputError


def test_finds_cases_from_task_anatomy_and_case_folders(tiny_tree):
    cases = find_cases(tiny_tree)
    assert [(c.anatomy, c.id) for c in cases] == [
        ("brain", "1BA001"), ("brain", "1BB001"), ("brain", "1BC001"), ("pelvis", "1PA001")]
    assert cases[-1].ct.name == "ct.mha" and cases[0].mask.name == "mask.nii.gz"
    assert [c.id for c in find_cases(tiny_tree / "brain")] == ["1BA001", "1BB001", "1BC001"]
    assert [c.id for c in find_cases(tiny_tree, anatomy="pelvis")] == ["1PA001"]
    assert [c.id for c in find_cases(tiny_tree / "brain" / "1BB001")] == ["1BB001"]
    assert cases[1].centre == "B"
    assert all(check_case(case) == [] for case in cases)


def test_missing_src_and_empty_folder_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="no such folder"):
        find_cases(tmp_path / "nope")
    with pytest.raises(InputError, match="holds no case folder"):
        find_cases(tmp_path)
    write_case(tmp_path / "brain" / "1BA001")
    with pytest.raises(InputError, match="holds no pelvis case"):
        find_cases(tmp_path, anatomy="pelvis")


def test_header_problems_are_named(tiny_tree):
    folder = tiny_tree / "brain" / "1BA001"
    (folder / "mr.nii.gz").unlink()
    image = sitk.ReadImage(str(folder / "mask.nii.gz"))
    image.SetOrigin((0.0, 0.0, 0.0))
    sitk.WriteImage(image, str(folder / "mask.nii.gz"))
    case = find_cases(folder)[0]
    assert case.mr is None
    problems = check_case(case)
    assert problems[0].startswith("mr is missing")
    assert "mask.nii.gz origin (0, 0, 0) differs from ct.nii.gz origin (-10, 20, 5)" in problems[1]
    with pytest.raises(CaseError, match="case 1BA001: mr is missing"):
        load_case(case)


def test_nan_empty_mask_and_non_image_stop_load(tiny_tree):
    folder = tiny_tree / "brain" / "1BB001"
    mr = sitk.ReadImage(str(folder / "mr.nii.gz"))
    array = sitk.GetArrayFromImage(mr)
    array[0, 0, 0] = np.nan
    nan_image = sitk.GetImageFromArray(array)
    nan_image.CopyInformation(mr)
    sitk.WriteImage(nan_image, str(folder / "mr.nii.gz"))
    with pytest.raises(CaseError, match="1BB001: mr.nii.gz holds 1 non-finite"):
        load_case(find_cases(folder)[0])
    folder = tiny_tree / "brain" / "1BC001"
    write_case(folder, spacing=(1.0, 1.0, 1.0), mask_slices=slice(0, 0))
    with pytest.raises(CaseError, match="1BC001: mask.nii.gz is empty"):
        load_case(find_cases(folder)[0])
    (folder / "ct.nii.gz").write_bytes(b"this is not an image")
    assert check_case(find_cases(folder)[0]) == ["ct.nii.gz cannot be read as an image"]


def test_truncated_nifti_is_caught_although_simpleitk_zero_fills_it(tiny_tree):
    folder = tiny_tree / "brain" / "1BA001"
    raw = (folder / "ct.nii.gz").read_bytes()
    (folder / "ct.nii.gz").write_bytes(raw[: len(raw) * 3 // 4])
    assert sitk.ReadImage(str(folder / "ct.nii.gz")).GetSize() == (10, 8, 6)  # reads "fine"
    with pytest.raises(CaseError, match="1BA001: ct.nii.gz is damaged"):
        load_case(find_cases(folder)[0])
