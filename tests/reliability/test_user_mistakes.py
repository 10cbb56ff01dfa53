"""User and environment mistakes that once ended as "internal error" (exit 1) are one line with exit 2, 3
or 4; volume headers are checked for plausibility before any voxel memory is allocated; named pipes are
refused instead of blocking.

Headers are damaged by hand at the byte offsets of nifti1.h (dim int16[8] at 40, pixdim float32[8] at 76,
sform_code int16 at 254, srow_x/y/z float32[4] at 280/296/312), independent of the reader under test.
"""

import os
import struct
from pathlib import Path

import numpy as np
import pytest
from reliability_world import RELEASED_EMBEDDER, World, ct_hu, write
from typer.testing import CliRunner

from diffma_cli.cli import app


def nifti(tmp_path: Path, name: str, *, dims=None, pixdim=None, sform_column_x=None, array=None) -> Path:
    """An uncompressed NIfTI-1 CT with header fields overwritten."""
    path = write(ct_hu() if array is None else array, tmp_path / f"{name}.nii")
    raw = bytearray(path.read_bytes())
    if dims is not None:
        raw[40:56] = struct.pack("<8h", len(dims), *dims, *[1] * (7 - len(dims)))
    if pixdim is not None:
        raw[80:80 + 4 * len(pixdim)] = struct.pack(f"<{len(pixdim)}f", *pixdim)
    if sform_column_x is not None:
        raw[254:256] = struct.pack("<h", 1)
        for row, value in enumerate(sform_column_x):
            raw[280 + 16 * row:284 + 16 * row] = struct.pack("<f", value)
    path.write_bytes(bytes(raw))
    return path


def run(*args):
    return CliRunner().invoke(app, [str(arg) for arg in args])


def one_line(result, code: int, *words: str) -> None:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output and "internal error" not in result.output, result.output
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("diffma: error: "), result.output
    for word in words:
        assert word in last, f"{word!r} not in {last!r}"


def convert(world: World, source, out, *extra):
    return run("convert", source, "-o", out, "--model", world.run, "--device", "cpu", *extra)


@pytest.mark.parametrize("problem, header, words", [
    ("zero voxel size", {"pixdim": [0.0, 1.0, 1.0]}, ("invalid voxel size", "pixdim [0.0")),
    ("NaN voxel size", {"pixdim": [1.0, float("nan"), 1.0]}, ("invalid voxel size",)),
    ("zero size in the sform", {"sform_column_x": [0.0, 0.0, 0.0]}, ("invalid voxel size in its sform",)),
    ("huge voxels", {"pixdim": [1e6, 1.0, 1.0]}, ("implausible", "1e+06 mm")),
])
def test_implausible_headers_are_refused(world: World, tmp_path, problem, header, words):
    path = nifti(tmp_path, problem.replace(" ", "_"), **header)
    one_line(convert(world, path, tmp_path / "mr.nii.gz"), 2, path.name, *words)
    assert not (tmp_path / "mr.nii.gz").exists()


def test_a_thin_tall_volume_is_implausible(world: World, tmp_path):
    path = write(np.full((5000, 5, 5), 40, np.int16), tmp_path / "tall.nii.gz")
    one_line(convert(world, path, tmp_path / "mr.nii.gz"), 2, "tall.nii.gz", "5000 voxels", "along z")


def test_a_header_asking_for_more_memory_than_there_is(world: World, tmp_path):
    path = nifti(tmp_path, "huge", dims=[8000, 8000, 8000], pixdim=[0.05, 0.05, 0.05])
    one_line(convert(world, path, tmp_path / "mr.nii.gz"), 4, "huge.nii", "8000 x 8000 x 8000 voxels", "GiB")


def test_a_named_pipe_is_refused_without_blocking(world: World, tmp_path):
    pipe = tmp_path / "ct.nii.gz"
    os.mkfifo(pipe)
    one_line(convert(world, pipe, tmp_path / "mr.nii.gz"), 2, "ct.nii.gz", "not a regular file")


def test_options_and_paths_out_of_range(world: World, tmp_path):
    (tmp_path / "folder.nii.gz").mkdir()
    one_line(convert(world, world.ct, tmp_path / "folder.nii.gz", "--overwrite"), 3, "folder.nii.gz",
             "is a folder")
    one_line(convert(world, world.ct, tmp_path / "mr.nii.gz", "--seed", 2**70), 2, "--seed")
    long_name = tmp_path / ("m" * 300 + ".nii.gz")
    result = convert(world, world.ct, long_name)
    assert result.exit_code in (2, 3)
    one_line(result, result.exit_code, "name too long")
    (tmp_path / "metrics.json").mkdir()
    one_line(run("eval", world.mr, "--target", world.mr, "--mask", world.mask, "-o",
                 tmp_path / "metrics.json", "--overwrite"), 3, "metrics.json", "is a folder")
    for option in (["--patch-size", 0], ["--hidden-size", -4], ["--depth", 0]):
        one_line(run("import-weights", RELEASED_EMBEDDER, "-o", tmp_path / "e.safetensors", *option), 2,
                 option[0])
    one_line(run("doctor", "--folder", tmp_path / "absent"), 2, "absent", "no such folder")
    assert not (tmp_path / "mr.nii.gz").exists() and not (tmp_path / "e.safetensors").exists()


def test_an_empty_body_mask_is_named(world: World, tmp_path):
    empty = world.volumes["empty mask"]
    one_line(convert(world, world.ct, tmp_path / "mr.nii.gz", "--body-mask", empty), 2, empty.name,
             "the body mask is empty")


def test_library_warnings_are_dropped_when_a_command_fails_and_kept_when_it_succeeds(capsys):
    import warnings

    import typer

    from diffma_cli.cli import friendly_errors
    from diffma_cli.errors import InputError

    def failing():
        warnings.warn("a hub warning that would come before the error", UserWarning, stacklevel=1)
        raise InputError("the real problem", path="x.nii.gz")

    def succeeding():
        warnings.warn("a warning worth seeing", UserWarning, stacklevel=1)

    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        with pytest.raises(typer.Exit):
            friendly_errors(failing)()
        assert not shown
        assert capsys.readouterr().err == "diffma: error: x.nii.gz: the real problem\n"
        friendly_errors(succeeding)()
        assert [str(warning.message) for warning in shown] == ["a warning worth seeing"]
