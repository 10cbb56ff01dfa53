"""A folder of cases shared by several processes (torchrun): the split, and two CPU processes over gloo."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from convert_cases import ct_array, write
from test_convert_cli import invoke, one_line_error

from diffma_cli.convert.cohort import Share, split, this_share
from diffma_cli.convert.files import SUMMARY
from diffma_cli.errors import InputError


@pytest.mark.parametrize("count,world", [(0, 2), (1, 3), (7, 1), (7, 3), (10, 4)])
def test_split_is_a_balanced_partition_in_order(count, world):
    items = [f"case{i:02d}" for i in range(count)]
    shares = [split(items, rank, world) for rank in range(world)]
    assert sorted(item for share in shares for item in share) == items  # each case exactly once
    assert max(map(len, shares)) - min(map(len, shares)) <= 1
    for share in shares:
        assert share == sorted(share)
    assert split(items, 0, 1) == items


def test_split_and_share_refuse_impossible_ranks(monkeypatch):
    with pytest.raises(ValueError):
        split([1, 2], 2, 2)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert this_share() == Share(1, 2, 1) and this_share().distributed
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(InputError, match="RANK"):
        this_share()
    monkeypatch.setenv("RANK", "one")
    with pytest.raises(InputError, match="integer"):
        this_share()


def test_one_volume_under_several_processes_is_refused(tmp_path, run_dir, ct_file, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    line = one_line_error(invoke(ct_file, "-o", tmp_path / "mri.nii.gz", "--model", run_dir), 2)
    assert "2 processes" in line and "folder" in line


@pytest.mark.slow  # two fresh Python processes importing torch: about 30 s on a busy 2-core machine
def test_two_processes_share_a_folder_skip_finished_cases_and_write_one_summary(tmp_path, run_dir):
    cases = tmp_path / "cases"
    for index, name in enumerate(["a", "b", "d"]):
        write(np.roll(ct_array(), index, axis=2), cases / f"{name}.nii.gz")
    out = tmp_path / "pred"
    out.mkdir()
    # A finished case (a complete volume; one that does not read back is converted again): skipped, untouched.
    finished = write(np.zeros((4, 5, 6), np.float32), out / "d.nii.gz").read_bytes()
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "diffma_cli", "convert", str(cases), "-o", str(out), "--model", str(run_dir),
               "--device", "cpu"]
    done = subprocess.run(command, capture_output=True, text=True, encoding="utf-8", errors="replace",
                          timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("wrote 2 file(s)") == 1 and "skipped 1" in done.stdout  # only rank 0 speaks
    summary = json.loads((out / SUMMARY).read_text(encoding="utf-8"))
    assert summary["processes"] == 2 and summary["skipped"] == ["d"]
    assert sorted(summary["converted"]) == ["a", "b"]
    assert {case["process"] for case in summary["converted"].values()} == {0, 1}
    assert (out / "d.nii.gz").read_bytes() == finished

    # Each process converts its cases exactly as one process would.
    alone = invoke(cases / "b.nii.gz", "-o", tmp_path / "b.nii.gz", "--model", run_dir, "--device", "cpu")
    assert alone.exit_code == 0, alone.output
    shared = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "b.nii.gz")))
    np.testing.assert_array_equal(shared, sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "b.nii.gz"))))
