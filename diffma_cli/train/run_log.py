"""The run's log: one JSON object per line (`log.jsonl`), appended by rank 0 only."""

from __future__ import annotations

import json
import math
from pathlib import Path

from diffma_cli.io.atomic import atomic_file

LOG = "log.jsonl"


def append_record(run_dir: Path, record: dict) -> None:
    """Append one line; NaN and infinities become null (strict JSON readers refuse bare NaN)."""
    with open(Path(run_dir) / LOG, "a", encoding="utf-8") as log:
        log.write(json.dumps(finite_or_null(record), allow_nan=False) + "\n")
        log.flush()


def finite_or_null(value):
    """`value` with every non-finite float (at any depth of dicts and lists) replaced by None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: finite_or_null(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(item) for item in value]
    return value


def read_records(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / LOG
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def drop_records_after(run_dir: Path, step: int) -> None:
    """Forget log lines of steps after `step` (written after the checkpoint a resumed run restarts from),
    so that the log of a resumed run reads like that of an uninterrupted one."""
    path = Path(run_dir) / LOG
    if not path.is_file():
        return
    kept = [line for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step]
    with atomic_file(path, overwrite=True) as temporary:
        temporary.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
