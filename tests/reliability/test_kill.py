"""Crash safety: `python -m diffma_cli prepare | convert | train` killed with SIGKILL in the middle.

SIGKILL cannot be caught, so these show what the files on disk look like after a power cut or an
out-of-memory kill: no partial output is mistaken for a finished one (the final name is absent, or refused
with one clear line), and `train --resume` continues to exactly the weights of an uninterrupted run.

Each test waits for a sign on disk that the process is in the middle of its work (a `.partial-*` folder
with a case in it, a finished first case, a checkpoint), then kills it.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from reliability_world import World, ct_hu, write
from safetensors.torch import load_file
from typer.testing import CliRunner

from diffma_cli.cli import app
from diffma_cli.io.atomic import PARTIAL_PREFIX

# Small enough for a loaded 2-core machine, long enough to be killed in the middle (measured: one train
# step of this backbone ~30 ms; 12 steps with a checkpoint every 2).
TRAIN = ["--recipe", "demo", "--size", "S", "--patch", "7", "--set", "model.hidden_size=32", "--batch-size",
         "2", "--device", "cpu", "--steps", "12", "--set", "training.checkpoint_every=2", "--set",
         "training.log_every=1"]


def start(args: list, log: Path) -> subprocess.Popen:
    """`python -m diffma_cli ARGS` in the background, output to `log`, one thread, offline."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    with open(log, "wb") as handle:
        return subprocess.Popen([sys.executable, "-m", "diffma_cli", *map(str, args)], stdout=handle,
                                stderr=subprocess.STDOUT, env=env)


def kill_when(process: subprocess.Popen, ready, log: Path, timeout: float = 120.0) -> None:
    """SIGKILL `process` as soon as `ready()` is true (checked every 5 ms)."""
    deadline = time.monotonic() + timeout
    while not ready():
        if process.poll() is not None:
            printed = log.read_text(encoding="utf-8")
            pytest.fail(f"finished (exit {process.returncode}) before it could be killed:\n{printed}")
        if time.monotonic() > deadline:
            process.kill()
            printed = log.read_text(encoding="utf-8")
            pytest.fail(f"never got to the point of the kill:\n{printed}")
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=30) == -signal.SIGKILL


def invoke(*args):
    return CliRunner().invoke(app, [str(arg) for arg in args])


def one_error_line(result, code: int) -> str:
    assert result.exit_code == code, result.output
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("diffma: error: ") and "Traceback" not in result.output, result.output
    return line


def partials(folder: Path) -> list[Path]:
    return [path for path in folder.rglob("*") if path.name.startswith(PARTIAL_PREFIX)]


def test_killed_prepare_leaves_no_data_folder_and_runs_again(world: World, tmp_path):
    out = tmp_path / "data"
    log = tmp_path / "prepare.log"
    process = start(["prepare", world.trees["good"], "-o", out, "--split", "0.34,0.33,0.33"], log)
    # In the middle: the temporary folder exists and holds the slices of at least one case.
    kill_when(process, lambda: any(p.suffix == ".npy" for q in partials(tmp_path) for p in q.rglob("*")), log)
    assert not out.exists() and partials(tmp_path)  # only a hidden temporary is left
    line = one_error_line(invoke("train-embedder", out, "-o", tmp_path / "emb", "--device", "cpu"), 2)
    assert "no such data folder" in line
    result = invoke("prepare", world.trees["good"], "-o", out, "--split", "0.34,0.33,0.33")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "manifest.json").read_text(encoding="utf-8"))["slice_counts"] == \
        json.loads((world.data / "manifest.json").read_text(encoding="utf-8"))["slice_counts"]


def test_killed_folder_convert_keeps_finished_cases_and_resumes(world: World, tmp_path):
    source = tmp_path / "cts"
    for name in ("a", "b", "c"):
        write(ct_hu(), source / f"{name}.nii.gz")
    out = tmp_path / "mr"
    args = ["convert", source, "-o", out, "--model", world.run, "--device", "cpu", "--steps", 25]
    log = tmp_path / "convert.log"
    process = start(args, log)
    kill_when(process, lambda: out.is_dir() and any(p.name.endswith(".nii.gz") and not p.name.startswith(".")
                                                     for p in out.iterdir()), log)
    finished = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert len(finished) < 3  # killed in the middle of the folder
    for name in finished:  # what has its final name is complete
        assert sitk.ReadImage(str(out / name)).GetSize() == ct_hu().shape[::-1]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert f"skipped {len(finished)} finished case(s)" in result.output
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == \
        ["a.nii.gz", "b.nii.gz", "c.nii.gz"]
    one = tmp_path / "one.nii.gz"  # one volume: the same result as the folder run gave
    assert invoke("convert", source / "c.nii.gz", "-o", one, "--model", world.run, "--device", "cpu",
                  "--steps", 25).exit_code == 0
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(one))),
                          sitk.GetArrayFromImage(sitk.ReadImage(str(out / "c.nii.gz"))))


def test_killed_one_volume_convert_writes_nothing(world: World, tmp_path):
    out = tmp_path / "mr.nii.gz"
    log = tmp_path / "convert.log"
    process = start(["convert", world.ct, "-o", out, "--model", world.run, "--device", "cpu", "--steps", 400],
                    log)
    kill_when(process, lambda: "sampling slices" in log.read_text(errors="replace", encoding="utf-8"), log)
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["convert.log"]


def test_killed_training_is_refused_until_resumed_to_the_uninterrupted_weights(world: World, tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    result = invoke("train", world.data, "-o", whole, "--embedder", world.embedder, *TRAIN)
    assert result.exit_code == 0, result.output
    log = tmp_path / "train.log"
    process = start(["train", world.data, "-o", killed, "--embedder", world.embedder, *TRAIN], log)
    kill_when(process, lambda: (killed / "checkpoints" / "step-0000004").is_dir(), log)

    # The killed run is not mistaken for a finished one.
    assert not json.loads((killed / "run.json").read_text(encoding="utf-8"))["finished"]
    info = invoke("info", killed)
    assert info.exit_code == 0 and "status: UNFINISHED" in info.stdout, info.output
    line = one_error_line(invoke("convert", world.ct, "-o", tmp_path / "mr.nii.gz", "--model", killed,
                                 "--device", "cpu"), 2)
    assert "unfinished" in line and "--resume" in line and not (tmp_path / "mr.nii.gz").exists()
    # A checkpoint write cut short leaves a hidden temporary: resume must not take it for a checkpoint.
    half = killed / "checkpoints" / f"{PARTIAL_PREFIX}999-step-0000011"
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"\x00" * 10)

    result = invoke("train", world.data, "-o", killed, "--resume", "--device", "cpu")
    assert result.exit_code == 0, result.output
    first, second = (load_file(str(run / "backbone.safetensors")) for run in (whole, killed))
    assert first.keys() == second.keys()
    assert all(np.array_equal(first[key].numpy(), second[key].numpy()) for key in first)
    log_lines = (killed / "log.jsonl").read_text(encoding="utf-8").splitlines()
    steps = [json.loads(line)["step"] for line in log_lines]
    assert steps == list(range(1, 13))  # the log repeats no step and misses none
    assert invoke("convert", world.ct, "-o", tmp_path / "mr.nii.gz", "--model", killed, "--device", "cpu",
                  "--steps", 1).exit_code == 0
