"""A full disk never leaves a file that looks finished, and says so in one line with exit code 3.

A full disk is simulated: the volume writer is replaced by one that writes a cut-short file without
raising (what SimpleITK does on a full disk), writers raise OSError(ENOSPC), and the free space the
writer measures is patched. The read-back check itself is compared with an independent byte count.
"""

import errno
import shutil
from pathlib import Path

import pytest
import SimpleITK as sitk
from reliability_world import World, ct_hu, mr_like, write
from typer.testing import CliRunner

from diffma_cli.cli import app
from diffma_cli.errors import OutputError
from diffma_cli.io import atomic, volumes
from diffma_cli.io.atomic import PARTIAL_PREFIX, atomic_dir, atomic_file


def cut_short_writer(real_write, keep: float = 0.5):
    """A stand-in for sitk.WriteImage that, like it on a full disk, leaves a short file and returns."""
    def write_image(image, name, *args, **kwargs):
        real_write(image, name, *args, **kwargs)
        raw = Path(name).read_bytes()
        Path(name).write_bytes(raw[: int(len(raw) * keep)])
    return write_image


def one_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) >= 1 and lines[-1].startswith("diffma: error: "), result.output
    assert "Traceback" not in result.output
    return lines[-1]


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".mha"])
def test_a_cut_short_write_is_refused_and_leaves_nothing(tmp_path, monkeypatch, suffix):
    image = sitk.GetImageFromArray(mr_like())
    monkeypatch.setattr(sitk, "WriteImage", cut_short_writer(sitk.WriteImage))
    target = tmp_path / f"mr{suffix}"
    with pytest.raises(OutputError, match="failed its read-back check"):
        volumes.write_volume(image, target)
    monkeypatch.setattr(volumes, "free_bytes", lambda folder: 0)
    with pytest.raises(OutputError, match=f"no space left on device in {tmp_path}"):
        volumes.write_volume(image, target)
    assert list(tmp_path.iterdir()) == []


def test_the_read_back_check_agrees_with_the_byte_count(tmp_path):
    """A file is complete exactly when it holds every voxel byte (independent count: numpy's nbytes)."""
    values = ct_hu()
    path = write(values, tmp_path / "ct.nii")
    assert volumes.volume_file_problem(path, expected_size=values.shape[::-1]) is None
    assert "expected" in volumes.volume_file_problem(path, expected_size=(1, 2, 3))
    raw = path.read_bytes()
    header = len(raw) - values.nbytes  # NIfTI-1 single file: header + extension block, then the voxels
    for cut in (header + values.nbytes - 1, header + 10, 100):
        (tmp_path / "cut.nii").write_bytes(raw[:cut])
        assert volumes.volume_file_problem(tmp_path / "cut.nii") is not None, cut
    (tmp_path / "empty.nii.gz").write_bytes(b"")
    assert volumes.volume_file_problem(tmp_path / "empty.nii.gz") == "empty or missing"


def test_enospc_inside_any_atomic_writer_names_the_folder(tmp_path):
    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    for writer in (atomic_file, atomic_dir):
        with pytest.raises(OutputError, match=f"no space left on device in {tmp_path}") as caught:
            with writer(tmp_path / "out") as temporary:
                full(temporary)
        assert caught.value.exit_code == 3
    # A library that hides the errno (torch.save: "file write failed") on a file system with nothing free.
    with pytest.raises(OutputError, match="no space left"):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(atomic, "free_bytes", lambda folder: 1000)
            with atomic_file(tmp_path / "weights.pt") as temporary:
                temporary.write_bytes(b"x")
                raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")
    assert list(tmp_path.iterdir()) == []


def test_written_files_and_their_folder_are_flushed(tmp_path, monkeypatch):
    synced = []
    real_fsync = atomic.os.fsync
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    with atomic_file(tmp_path / "a.txt") as temporary:
        temporary.write_text("a", encoding="utf-8")
    assert len(synced) == 2  # the file, then its folder after the rename
    synced.clear()
    with atomic_dir(tmp_path / "b") as temporary:
        (temporary / "one").write_text("1", encoding="utf-8")
        (temporary / "two").write_text("2", encoding="utf-8")
    assert len(synced) == 4  # two files, the new folder, its parent


def test_convert_on_a_full_disk_exits_3_and_a_folder_run_redoes_a_damaged_output(world: World, tmp_path,
                                                                                 monkeypatch):
    model = ["--model", str(world.run), "--device", "cpu"]
    target = tmp_path / "mr.nii.gz"
    with monkeypatch.context() as patch:
        patch.setattr(sitk, "WriteImage", cut_short_writer(sitk.WriteImage))
        patch.setattr(volumes, "free_bytes", lambda folder: 0)
        result = CliRunner().invoke(app, ["convert", str(world.ct), "-o", str(target), *model])
    assert result.exit_code == 3 and "no space left on device" in one_line(result)
    assert "wrote" not in result.stdout and list(tmp_path.iterdir()) == []

    # A folder run whose earlier output was cut short (written before this check existed, or copied
    # half): it is converted again, not skipped as finished.
    inputs, outputs = tmp_path / "cts", tmp_path / "mrs"
    inputs.mkdir()
    shutil.copy(world.ct, inputs / "p1.nii.gz")
    outputs.mkdir()
    (outputs / "p1.nii.gz").write_bytes(b"\x1f\x8b\x08\x00")
    result = CliRunner().invoke(app, ["convert", str(inputs), "-o", str(outputs), *model])
    assert result.exit_code == 0, result.output
    assert "skipped" not in result.stdout
    assert volumes.volume_file_problem(outputs / "p1.nii.gz") is None
    result = CliRunner().invoke(app, ["convert", str(inputs), "-o", str(outputs), *model])
    assert "skipped 1" in result.stdout
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(PARTIAL_PREFIX)]


def test_os_errors_reaching_a_command_are_one_line(tmp_path):
    """What the system refuses outside our writers (here: an output name too long for the file system)."""
    from diffma_cli.errors import from_os_error

    error = from_os_error(OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "log.jsonl")))
    assert error.exit_code == 3 and str(tmp_path) in str(error)
    long_name = tmp_path / ("m" * 300 + ".nii.gz")
    result = CliRunner().invoke(app, ["eval", str(long_name), "--target", str(long_name)])
    assert result.exit_code in (2, 3) and "internal error" not in result.output
    one_line(result)
    assert from_os_error(ValueError("x")) is None
