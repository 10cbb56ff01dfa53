"""Typed user-facing errors.

Every problem a user can cause or fix (a bad file, an existing output, a missing GPU) is raised as a
`DiffmaError`. The CLI prints it as one line and exits with its `exit_code`; Python callers can catch it.
Exit codes (documented in docs/troubleshooting.md):

    0  success
    1  unexpected internal error (a bug: run again with --debug and report the traceback)
    2  bad input: a file, data set, option or recipe value that cannot be used
    3  output problem: the output exists (use --overwrite) or cannot be written
    4  environment: CUDA or an optional package (mamba-ssm, weights) is not available
  130  interrupted (Ctrl-C); 143 terminated (SIGTERM, as schedulers send)
"""

from __future__ import annotations

import errno
import os
from pathlib import Path


class DiffmaError(Exception):
    """Base class: `str(error)` is the one line shown to the user."""

    exit_code = 1

    def __init__(self, problem: str, *, path: str | Path | None = None, hint: str | None = None):
        self.problem = problem
        self.path = None if path is None else str(path)
        self.hint = hint
        super().__init__(self._line())

    def _line(self) -> str:
        line = f"{self.path}: {self.problem}" if self.path else self.problem
        return f"{line} ({self.hint})" if self.hint else line


class InputError(DiffmaError):
    """A file, data set, option or recipe value that cannot be used."""

    exit_code = 2


class UnsafeFileError(InputError):
    """A file that would execute code if loaded (a malicious pickle); nothing from it was run."""


class OutputError(DiffmaError):
    """The output exists (and --overwrite was not given) or cannot be written."""

    exit_code = 3


class EnvironmentProblem(DiffmaError):
    """CUDA, an optional package or model weights are not available here."""

    exit_code = 4


# errnos that say the output cannot be written (exit 3); other OSErrors are about an input (exit 2).
_OUTPUT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EISDIR, errno.EACCES,
                  errno.EPERM, errno.ETXTBSY, errno.EEXIST}


def from_os_error(error: BaseException) -> DiffmaError | None:
    """The one-line error for what the operating system refused (a full disk, a name too long, a folder
    where a file was expected, ...) that reached the command without a clearer message; None for other
    exceptions. Exit code 3 for problems writing, 2 otherwise."""
    if isinstance(error, MemoryError):
        return EnvironmentProblem("not enough memory for this input",
                                  hint="free memory, or use a smaller input or batch size")
    if not isinstance(error, OSError) or error.errno is None:
        return None
    path = error.filename
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        folder = os.path.dirname(os.path.abspath(path)) if path else os.getcwd()
        return OutputError(f"no space left on device in {folder}",
                           hint="free some space there or write the output elsewhere")
    reason = error.strerror or os.strerror(error.errno)
    hints = {errno.ENAMETOOLONG: "use a shorter file name", errno.EISDIR: "give a file, not a folder",
             errno.ENOTDIR: "a part of the path is a file, not a folder",
             errno.EROFS: "write the output elsewhere", errno.EACCES: "check the permissions"}
    kind = OutputError if error.errno in _OUTPUT_ERRNOS else InputError
    shown = path if path is None or len(str(path)) <= 120 else f"{str(path)[:60]}...{str(path)[-40:]}"
    return kind(reason[0].lower() + reason[1:], path=shown, hint=hints.get(error.errno))
