"""Atomic outputs: a result appears under its final name only once it is complete.

Writers work on a temporary sibling (same folder, so the final rename is atomic on POSIX) whose name starts
with `.partial-`; a crash or Ctrl-C leaves at most such a hidden temporary, never a file or folder that looks
finished. The temporary keeps the final name's extensions so that format-sniffing writers (SimpleITK) work.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from diffma_cli.errors import OutputError

PARTIAL_PREFIX = ".partial-"


def check_output(path: str | Path, overwrite: bool) -> Path:
    """Refuse an existing output unless `overwrite`; make sure its folder can be written. Returns the Path."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputError("already exists", path=path, hint="pass --overwrite to replace it")
    parent = path.absolute().parent
    existing = parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"cannot write here: {existing} is a file, not a folder", path=path,
                          hint="choose another output path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write here: the folder {existing} is not writable", path=path,
                          hint="choose another output path or fix the folder's permissions")
    return path


def _temporary_sibling(path: Path) -> Path:
    return path.parent / f"{PARTIAL_PREFIX}{os.getpid()}-{path.name}"


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextmanager
def atomic_file(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `path`, on error it is removed."""
    path = check_output(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = _temporary_sibling(path)
    _remove(temporary)
    try:
        yield temporary
        if not temporary.exists():
            raise RuntimeError(f"writer did not create {temporary}")
        os.replace(temporary, path)
    except BaseException:
        _remove(temporary)
        raise


@contextmanager
def atomic_dir(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary folder; on success it becomes `path` (replacing an old one if `overwrite`)."""
    path = check_output(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = _temporary_sibling(path)
    _remove(temporary)
    temporary.mkdir()
    try:
        yield temporary
        if path.exists():
            old = path.parent / f"{PARTIAL_PREFIX}old-{os.getpid()}-{path.name}"
            os.replace(path, old)
            os.replace(temporary, path)
            _remove(old)
        else:
            os.replace(temporary, path)
    except BaseException:
        _remove(temporary)
        raise
