"""Atomic outputs: a result appears under its final name only once it is complete.

Writers work on a temporary sibling (same folder, so the final rename is atomic on POSIX) whose name starts
with `.partial-`; a crash or Ctrl-C leaves at most such a hidden temporary, never a file or folder that looks
finished. The temporary keeps the final name's extensions so that format-sniffing writers (SimpleITK) work.

Before the rename the temporary's data is flushed to the disk (fsync) and after it the folder entry is too,
so that once a command reports success a power cut cannot leave an empty or partial file under the final
name (on file systems that honour fsync; docs/troubleshooting.md). A full disk, wherever it shows up
(an OSError, or a library's own error while the disk is full), becomes one OutputError naming the folder.
"""

from __future__ import annotations

import errno
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
    parent = path.absolute().parent
    existing = parent
    while not existing.exists():
        existing = existing.parent
    _check_name_lengths(path, existing)
    if path.exists() and not overwrite:
        raise OutputError("already exists", path=path, hint="pass --overwrite to replace it")
    if not existing.is_dir():
        raise OutputError(f"cannot write here: {existing} is a file, not a folder", path=path,
                          hint="choose another output path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write here: the folder {existing} is not writable", path=path,
                          hint="choose another output path or fix the folder's permissions")
    return path


def _check_name_lengths(path: Path, existing: Path) -> None:
    """OutputError for a file or folder name longer than the file system allows, before any work."""
    try:
        longest = os.pathconf(existing if existing.is_dir() else existing.parent, "PC_NAME_MAX")
    except (OSError, ValueError):
        longest = 255
    for part in path.absolute().relative_to(existing).parts:
        if len(os.fsencode(part)) > longest:
            raise OutputError(f"file name too long ({len(os.fsencode(part))} bytes; the file system allows "
                              f"{longest})", path=f"{str(path)[:60]}...", hint="use a shorter name")


def free_bytes(folder: Path) -> int | None:
    """Bytes free for us in the file system of `folder` (or its nearest existing parent); None if unknown."""
    folder = Path(folder).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}


def is_disk_full(error: BaseException, folder: Path | None = None) -> bool:
    """Whether `error` (or what caused it) comes from a full disk or quota.

    Some writers hide the errno (torch.save raises "file write failed", SimpleITK may not raise at all):
    a writer's failure while the output's file system has less than 1 MiB free counts as a full disk too.
    """
    seen = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in _DISK_FULL:
            return True
        if "No space left on device" in str(seen) or "Disk quota exceeded" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    if folder is not None and isinstance(error, (OSError, RuntimeError)):
        free = free_bytes(folder)
        return free is not None and free < 2**20
    return False


def disk_full_error(folder: Path) -> OutputError:
    return OutputError(f"no space left on device in {Path(folder).absolute()}",
                       hint="free some space there or write the output elsewhere")


def fsync_file(path: Path) -> None:
    """Flush a written file's data to the disk (a no-op for folders and what cannot be opened)."""
    if not path.is_file():
        return
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_folder(folder: Path) -> None:
    """Flush a folder's entries (a rename in it) to the disk; silently skipped where folders cannot be
    opened (some platforms and network file systems)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError as error:
        if error.errno in _DISK_FULL:
            raise
    finally:
        os.close(descriptor)


def fsync_tree(folder: Path) -> None:
    """fsync every file and folder under `folder` (a folder built in a temporary before its rename)."""
    for root, _, files in os.walk(folder):
        for name in files:
            fsync_file(Path(root) / name)
        fsync_folder(Path(root))


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
    if path.is_dir():
        raise OutputError("is a folder; the output is a file", path=path, hint="give a file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = _temporary_sibling(path)
    _remove(temporary)
    try:
        yield temporary
        if not temporary.exists():
            raise RuntimeError(f"writer did not create {temporary}")
        fsync_file(temporary)
        os.replace(temporary, path)
        fsync_folder(path.parent)
    except BaseException as error:
        _remove(temporary)
        if isinstance(error, Exception) and not isinstance(error, OutputError) \
                and is_disk_full(error, path.parent):
            raise disk_full_error(path.parent) from error
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
        fsync_tree(temporary)
        if path.exists():
            old = path.parent / f"{PARTIAL_PREFIX}old-{os.getpid()}-{path.name}"
            os.replace(path, old)
            os.replace(temporary, path)
            _remove(old)
        else:
            os.replace(temporary, path)
        fsync_folder(path.parent)
    except BaseException as error:
        _remove(temporary)
        if isinstance(error, Exception) and not isinstance(error, OutputError) \
                and is_disk_full(error, path.parent):
            raise disk_full_error(path.parent) from error
        raise
