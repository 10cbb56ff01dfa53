"""prepare reports every bad case at once (also those found only in the voxels), treats case ids that
differ only in letter case as one patient, and warns about an empty val or test split."""

import shutil

import numpy as np
from reliability_world import World, body, ct_hu, write, write_case
from typer.testing import CliRunner

from diffma_cli.cli import app


def prepare(tree, out, *extra):
    return CliRunner().invoke(app, ["prepare", str(tree), "-o", str(out), *map(str, extra)])


def test_every_bad_case_is_reported_at_once(world: World, tmp_path):
    tree = shutil.copytree(world.trees["good"], tmp_path / "Task1")
    # Two damages that the header checks cannot see: both are found while the voxels are read.
    raw_ct = (ct_hu().astype(np.int32) + 1024).astype(np.uint16)
    write(raw_ct, write_case(tree / "brain" / "1BA004") / "ct.nii.gz")
    infinite_mr = np.where(body(), np.inf, -1000).astype(np.float32)
    write(infinite_mr, write_case(tree / "brain" / "1BA005") / "mr.nii.gz")
    result = prepare(tree, tmp_path / "data")
    assert result.exit_code == 2, result.output
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("diffma: error: case 1BA004:") and "1 more bad case: 1BA005" in line, line
    assert not (tmp_path / "data").exists()


def test_case_ids_are_compared_without_letter_case(world: World, tmp_path):
    tree = shutil.copytree(world.trees["good"], tmp_path / "Task1")
    shutil.copytree(tree / "brain" / "1BA001", tree / "brain" / "1ba001")
    result = prepare(tree, tmp_path / "data")
    assert result.exit_code == 2, result.output
    assert "case id 1BA001 and 1ba001 appears in more than one folder" in result.stderr


def test_an_empty_split_is_a_warning(world: World, tmp_path):
    tree = shutil.copytree(world.trees["good"], tmp_path / "Task1")
    shutil.rmtree(tree / "brain" / "1BA003")
    result = prepare(tree, tmp_path / "data")
    assert result.exit_code == 0, result.output
    assert "diffma: warning: the val split is empty (2 case(s) in all)" in result.stderr
    assert "diffma: warning: the test split is empty" in result.stderr
