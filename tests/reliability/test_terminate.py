"""SIGTERM (what batch schedulers send before a kill) stops a command like Ctrl-C: temporaries removed, the
progress bar's line ended, one line that says how to continue, exit code 143."""

import json
import signal
import time

from reliability_world import World
from test_kill import TRAIN, invoke, partials, start


def test_sigterm_during_training_says_how_to_resume(world: World, tmp_path):
    out, log = tmp_path / "run", tmp_path / "train.log"
    process = start(["train", world.data, "-o", out, "--embedder", world.embedder, *TRAIN], log)
    deadline = time.monotonic() + 120
    while not (out / "checkpoints" / "step-0000004").is_dir():
        assert process.poll() is None, log.read_text(encoding="utf-8")
        assert time.monotonic() < deadline, log.read_text(encoding="utf-8")
        time.sleep(0.005)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 143, log.read_text(encoding="utf-8")
    last = log.read_text(encoding="utf-8").rstrip("\n").split("\n")[-1]  # "\n" only: a glued bar shows "\r"
    assert last == ("diffma: terminated (SIGTERM) (run the same command with --resume to continue from the "
                    "last checkpoint)"), repr(last)
    assert not partials(tmp_path)
    assert json.loads((out / "run.json").read_text(encoding="utf-8"))["finished"] is False
    # (that --resume then continues exactly is test_kill.py's test)
    assert invoke("info", out).exit_code == 0
