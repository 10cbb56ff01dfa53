"""An output never replaces an input: the same path, a symbolic link to it, a hard link, or the `_std`
companion of an output named so that it lands on the input; --overwrite does not change that."""

import os
import shutil

import pytest
from reliability_world import World
from typer.testing import CliRunner

from diffma_cli.cli import app


def cases(world: World, tmp_path):
    ct = shutil.copy(world.ct, tmp_path / "ct.nii.gz")
    os.symlink(ct, tmp_path / "link.nii.gz")
    os.link(ct, tmp_path / "hard.nii.gz")
    os.symlink(tmp_path, tmp_path / "here")
    shutil.copy(world.ct, tmp_path / "scan_std.nii.gz")
    mask = shutil.copy(world.mask, tmp_path / "mask.nii.gz")
    return {
        "same path": [ct, "-o", ct],
        "a symbolic link to the input": [ct, "-o", tmp_path / "link.nii.gz"],
        "the input through a linked folder": [ct, "-o", tmp_path / "here" / "ct.nii.gz"],
        "a hard link of the input": [ct, "-o", tmp_path / "hard.nii.gz"],
        "the _std companion": [tmp_path / "scan_std.nii.gz", "-o", tmp_path / "scan.nii.gz", "--samples", 2],
        "the body mask": [ct, "-o", mask, "--body-mask", mask],
    }


@pytest.mark.parametrize("problem", ["same path", "a symbolic link to the input",
                                     "the input through a linked folder", "a hard link of the input",
                                     "the _std companion", "the body mask"])
def test_an_output_that_is_an_input_is_refused(world: World, tmp_path, problem):
    args = cases(world, tmp_path)[problem]
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir() if path.is_file()}
    result = CliRunner().invoke(app, ["convert", *map(str, args), "--overwrite", "--model", str(world.run),
                                      "--device", "cpu"])
    assert result.exit_code == 2, result.output
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("diffma: error: ") and "would replace the input" in line, line
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir() if path.is_file()} == before
