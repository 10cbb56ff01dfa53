"""Typed user-facing errors.

Every problem a user can cause or fix (a bad file, an existing output, a missing GPU) is raised as a
`DiffmaError`. The CLI prints it as one line and exits with its `exit_code`; Python callers can catch it.
Exit codes (documented in docs/troubleshooting.md):

    0  success
    1  unexpected internal error (a bug: run again with --debug and report the traceback)
    2  bad input: a file, data set, option or recipe value that cannot be used
    3  output problem: the output exists (use --overwrite) or cannot be written
    4  environment: CUDA or an optional package (mamba-ssm, weights) is not available
  130  interrupted (Ctrl-C)
"""

from __future__ import annotations

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
