"""diffma synth -> diffma prepare end to end, the dataset, undoing the slicing, and every bad input."""

import json
import pickle

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from synthrad_cases import write_case
from typer.testing import CliRunner

from diffma_cli.cli import app
from diffma_cli.data.dataset import PreparedSlices, load_manifest
from diffma_cli.data.normalise import ct_from_unit, mr_from_unit
from diffma_cli.data.slicing import unslice_volume
from diffma_cli.errors import InputError

runner = CliRunner()


def _invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """Five small synthetic brain cases, prepared once with two workers."""
    root = tmp_path_factory.mktemp("synth")
    result = _invoke("synth", root / "src", "--anatomy", "brain", "--cases", 5, "--size", "small",
                     "--seed", 3)
    assert result.exit_code == 0, result.output
    result = _invoke("prepare", root / "src" / "Task1", "-o", root / "data", "--workers", 2,
                     "--split", "0.6,0.2,0.2")
    assert result.exit_code == 0, result.output
    return root


def test_synth_writes_a_synthrad_tree(synthetic):
    brain = synthetic / "src" / "Task1" / "brain"
    assert sorted(p.name for p in brain.iterdir()) == ["1BA001", "1BA002", "1BB001", "1BB002", "1BC001",
                                                        "overview"]
    assert (brain / "overview" / "1_brain_overview.csv").read_text(encoding="utf-8").count("\n") == 6
    ct = sitk.ReadImage(str(brain / "1BB001" / "ct.nii.gz"))
    assert ct.GetPixelID() == sitk.sitkInt16 and ct.GetSpacing() == (4.0, 4.0, 4.0)


def test_synth_is_deterministic_and_refuses_existing_output(tmp_path):
    """A case depends on the seed only: not on how many cases are made or by how many workers."""
    for name, cases, workers in (("a", 1, 1), ("b", 2, 2)):
        assert _invoke("synth", tmp_path / name, "--anatomy", "pelvis", "--cases", cases, "--size", "small",
                       "--seed", 5, "--workers", workers).exit_code == 0
    one, two = (sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / n / "Task1/pelvis/1PA001/mr.nii.gz")))
                for n in ("a", "b"))
    assert np.array_equal(one, two)
    result = _invoke("synth", tmp_path / "a", "--cases", 1, "--size", "small")
    assert result.exit_code == 3 and "already exists" in result.stderr


def test_patients_are_split_without_overlap(synthetic):
    manifest = load_manifest(synthetic / "data")
    splits = manifest["splits"]
    ids = [case_id for name in ("train", "val", "test") for case_id in splits[name]]
    assert sorted(ids) == sorted(manifest["cases"]) and len(ids) == len(set(ids)) == 5
    assert [len(splits[name]) for name in ("train", "val", "test")] == [3, 1, 1]
    assert all(manifest["cases"][i]["split"] == name for name, group in splits.items() for i in group)


def test_slice_counts_match_the_body_extent(synthetic):
    manifest = load_manifest(synthetic / "data")
    for record in manifest["cases"].values():
        mask = sitk.GetArrayFromImage(sitk.ReadImage(record["source"]["mask"]))
        with_body = [int(z) for z in np.flatnonzero(mask.any(axis=(1, 2)))]
        assert record["slicing"]["slices"] == with_body and record["slices"] == len(with_body)
        stored = np.load(synthetic / "data" / record["files"]["ct"], mmap_mode="r")
        assert stored.shape == (len(with_body), 224, 224) and stored.dtype == np.float16
    counts = manifest["slice_counts"]
    assert sum(counts.values()) == sum(r["slices"] for r in manifest["cases"].values())


def test_dataset_items(synthetic):
    dataset = PreparedSlices(synthetic / "data", "train")
    manifest = dataset.manifest
    assert len(dataset) == manifest["slice_counts"]["train"]
    item = dataset[len(dataset) - 1]
    assert set(item) == {"ct", "mr", "mask", "case", "slice"}
    for name in ("ct", "mr", "mask"):
        assert item[name].shape == (1, 224, 224) and str(item[name].dtype) == "torch.float32"
        assert -1.0 <= float(item[name].min()) and float(item[name].max()) <= 1.0
    assert set(np.unique(item["mask"].numpy())) <= {0.0, 1.0}
    last = manifest["splits"]["train"][-1]
    assert item["case"] == last and item["slice"] == manifest["cases"][last]["slicing"]["slices"][-1]
    with pytest.raises(InputError, match="split 'extra'"):
        PreparedSlices(synthetic / "data", "extra")
    copy = pickle.loads(pickle.dumps(dataset))  # as DataLoader workers get it: no arrays, same items
    assert copy._arrays == {} and len(pickle.dumps(dataset)) < 100_000
    assert all(torch.equal(copy[0][m], dataset[0][m]) for m in ("ct", "mr", "mask"))


def test_undoing_the_slicing_reproduces_the_volumes(synthetic):
    manifest = load_manifest(synthetic / "data")
    record = manifest["cases"]["1BA001"]
    arrays = PreparedSlices(synthetic / "data", record["split"]).case_arrays("1BA001")
    original = {m: sitk.GetArrayFromImage(sitk.ReadImage(record["source"][m])).astype(np.float32)
                for m in ("ct", "mr", "mask")}
    body = original["mask"] > 0
    window = record["normalisation"]["ct"]["window"]
    ct = ct_from_unit(unslice_volume(arrays["ct"], record["slicing"]), window)
    mr = mr_from_unit(unslice_volume(arrays["mr"], record["slicing"]), record["normalisation"]["mr"])
    mask = unslice_volume(arrays["mask"], record["slicing"], "nearest", 0.0)
    assert np.array_equal(mask > 0.5, body)
    # 4 mm voxels up to ~1 mm pixels and back: linear-of-linear interpolation mixes each voxel's
    # independent CT noise (8-20 HU) with its neighbours' and blurs tissue edges (~2400 HU at the skull);
    # float16 adds < 1 HU. A record off by 3 % in field of view errs ~5x more (29 HU median).
    truth = np.clip(original["ct"], -1024, 3000)
    ct_error = np.abs(ct - truth)[body]
    assert np.median(ct_error) < 10 and np.percentile(ct_error, 95) < 60
    wrong = dict(record["slicing"], field_of_view_mm=record["slicing"]["field_of_view_mm"] * 1.03)
    assert np.median(np.abs(ct_from_unit(unslice_volume(arrays["ct"], wrong), window) - truth)[body]) > 20
    low, high = record["normalisation"]["mr"]["low"], record["normalisation"]["mr"]["high"]
    mr_error = np.abs(mr - np.clip(original["mr"], low, high))[body] / (high - low)
    assert np.median(mr_error) < 0.01 and np.percentile(mr_error, 95) < 0.05


def _tree(tmp_path, count=3):
    root = tmp_path / "Task1" / "brain"
    for index in range(count):
        write_case(root / f"1BA00{index + 1}", spacing=(1.0, 1.0, 1.0))
    return root


def _assert_fails_cleanly(result, out, exit_code, *words):
    assert result.exit_code == exit_code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("diffma: error: "), result.stderr
    assert all(word in lines[0] for word in words), lines[0]
    assert "Traceback" not in result.output
    assert not out.exists() and not any(p.name.startswith(".partial-") for p in out.parent.iterdir())


def _set_geometry(path, origin):
    image = sitk.ReadImage(str(path))
    image.SetOrigin(origin)
    sitk.WriteImage(image, str(path))


def _put_nan(path):
    image = sitk.ReadImage(str(path), sitk.sitkFloat32)
    array = sitk.GetArrayFromImage(image)
    array[2, 3, 4] = np.nan
    damaged = sitk.GetImageFromArray(array)
    damaged.CopyInformation(image)
    sitk.WriteImage(damaged, str(path))


@pytest.mark.parametrize("damage, words", [
    (lambda case: _set_geometry(case / "mr.nii.gz", (1.0, 2.0, 3.0)),
     ("1BA002", "mr.nii.gz origin", "differs")),
    (lambda case: (case / "mask.nii.gz").unlink(), ("1BA002", "mask is missing")),
    (lambda case: _put_nan(case / "mr.nii.gz"), ("1BA002", "mr.nii.gz", "non-finite")),
    (lambda case: write_case(case, spacing=(1.0, 1.0, 1.0), mask_slices=slice(0, 0)), ("1BA002", "empty")),
    (lambda case: (case / "ct.nii.gz").write_text("not an image", encoding="utf-8"),
     ("1BA002", "ct.nii.gz cannot be read")),
])
def test_bad_case_stops_with_one_line_and_nothing_written(tmp_path, damage, words):
    root = _tree(tmp_path)
    damage(root / "1BA002")
    out = tmp_path / "out" / "data"
    (tmp_path / "out").mkdir()
    _assert_fails_cleanly(_invoke("prepare", root, "-o", out), out, 2, *words)
    result = _invoke("prepare", root, "-o", out, "--skip-bad")
    assert result.exit_code == 0, result.output
    assert "warning: skipped case 1BA002" in result.stderr
    manifest = load_manifest(out)
    assert [s["case"] for s in manifest["skipped"]] == ["1BA002"] and "1BA002" not in manifest["cases"]
    assert all("1BA002" not in ids for ids in manifest["splits"].values())


def test_existing_output_and_bad_options_fail_cleanly(tmp_path):
    root = _tree(tmp_path)
    out = tmp_path / "data"
    out.mkdir()
    (out / "keep.txt").write_text("mine", encoding="utf-8")
    result = _invoke("prepare", root, "-o", out)
    assert result.exit_code == 3 and "already exists" in result.stderr and (out / "keep.txt").exists()
    assert _invoke("prepare", root, "-o", out, "--overwrite").exit_code == 0
    assert not (out / "keep.txt").exists() and (out / "manifest.json").exists()
    fresh = tmp_path / "fresh"
    _assert_fails_cleanly(_invoke("prepare", root, "-o", fresh, "--split", "0.5,0.5"), fresh, 2, "--split")
    _assert_fails_cleanly(_invoke("prepare", tmp_path / "nowhere", "-o", fresh), fresh, 2, "no such folder")
    _assert_fails_cleanly(_invoke("prepare", root, "-o", fresh, "--ct-window", "3000,-1024"), fresh, 2,
                          "--ct-window")
    _assert_fails_cleanly(_invoke("prepare", root, "-o", fresh, "--anatomy", "pelvis"), fresh, 2,
                          "no pelvis case")


def test_split_file_and_mha_cases(tmp_path):
    root = tmp_path / "Task1" / "pelvis"
    for index in range(4):
        write_case(root / f"1PA00{index + 1}", suffix=".mha")
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ["1PA001", "1PA002"], "val": ["1PA003"], "test": []}),
                     encoding="utf-8")
    out = tmp_path / "data"
    result = _invoke("prepare", tmp_path / "Task1", "-o", out, "--split-file", split)
    assert result.exit_code == 0, result.output
    manifest = load_manifest(out)
    assert manifest["splits"] == {"train": ["1PA001", "1PA002"], "val": ["1PA003"], "test": []}
    assert manifest["unassigned"] == ["1PA004"] and manifest["anatomy"] == "pelvis"
    assert manifest["cases"]["1PA001"]["slicing"]["slices"] == [1, 2, 3, 4]
    split.write_text(json.dumps({"train": ["1PA009"]}), encoding="utf-8")
    fresh = tmp_path / "fresh"
    _assert_fails_cleanly(_invoke("prepare", root, "-o", fresh, "--split-file", split), fresh, 2, "1PA009")


def test_several_anatomies_need_a_choice(tiny_tree, tmp_path):
    out = tmp_path / "data"
    _assert_fails_cleanly(_invoke("prepare", tiny_tree, "-o", out), out, 2, "several anatomies", "--anatomy")
    result = _invoke("prepare", tiny_tree, "-o", out, "--anatomy", "brain")
    assert result.exit_code == 0, result.output
    assert sorted(load_manifest(out)["cases"]) == ["1BA001", "1BB001", "1BC001"]


def test_all_header_problems_are_counted_in_the_one_line(tmp_path):
    root = _tree(tmp_path)
    (root / "1BA001" / "mr.nii.gz").unlink()
    (root / "1BA003" / "ct.nii.gz").write_text("not an image", encoding="utf-8")
    out = tmp_path / "data"
    _assert_fails_cleanly(_invoke("prepare", root, "-o", out), out, 2,
                          "case 1BA001: mr is missing", "and 1 more bad case: 1BA003", "--skip-bad")


@pytest.mark.parametrize("orientation", ["LPS", "none"])
def test_prepare_slices_reoriented_copies_alike(tmp_path, orientation):
    """A case and the same case stored with permuted and reversed axes give the same slices once both are
    reoriented (the default), and different ones when sliced as stored."""
    from layouts import relayout

    from diffma_cli.data.prepare import PrepareOptions, prepare_case
    from diffma_cli.data.synthrad import find_cases

    root = tmp_path / "Task1" / "brain"
    write_case(root / "1BA001", shape=(6, 8, 10), spacing=(1.0, 1.2, 2.5))
    for modality in ("ct", "mr", "mask"):
        image = sitk.ReadImage(str(root / "1BA001" / f"{modality}.nii.gz"))
        copy, _ = relayout(image, (1, 0, 2), (True, False, True))
        (root / "1BA002").mkdir(exist_ok=True)
        sitk.WriteImage(copy, str(root / "1BA002" / f"{modality}.nii.gz"))
    options = PrepareOptions(orientation=orientation)
    records = {case.id: prepare_case(case, tmp_path / "out", options) for case in find_cases(root, "brain")}
    assert records["1BA002"]["geometry"]["stored_orientation"] != records["1BA001"]["geometry"][
        "stored_orientation"]
    arrays = {case: {m: np.load(tmp_path / "out" / "cases" / case / f"{m}.npy") for m in ("ct", "mr", "mask")}
              for case in records}
    same = all(arrays["1BA001"][m].shape == arrays["1BA002"][m].shape
               and np.array_equal(arrays["1BA001"][m], arrays["1BA002"][m]) for m in ("ct", "mr", "mask"))
    assert same == (orientation == "LPS")
