"""What the operators' backend choice shares (`selective_scan`, `causal_conv`): an optional fast package
imported once, on first use, the checks of a CUDA kernel that was asked for by name, and a module-wide
backend that a `with` block can force."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from diffma_cli.errors import EnvironmentProblem


class OptionalImport:
    """Calling it returns what `load` returns, imported on the first call only, or None when the import
    fails; `error` then says why. Importing diffma never imports the optional package."""

    def __init__(self, load: Callable[[], Callable]):
        self._load = load
        self._tried = False
        self._value: Callable | None = None
        self.error: str | None = None

    def __call__(self) -> Callable | None:
        if not self._tried:
            self._tried = True
            try:
                self._value = self._load()
            except Exception as error:  # ImportError, or OSError/RuntimeError from a broken CUDA extension
                self.error = f"{type(error).__name__}: {error}"
        return self._value


def require_cuda_kernel(kernel: OptionalImport, backend: str, on_cuda: bool, install_hint: str) -> None:
    """A kernel forced by name must import and get CUDA tensors; else an EnvironmentProblem that says which
    (`backend` names it, e.g. "the mamba_ssm selective-scan backend")."""
    if kernel() is None:
        raise EnvironmentProblem(f"{backend} was requested but cannot be imported ({kernel.error})",
                                 hint=install_hint)
    if not on_cuda:
        raise EnvironmentProblem(f"{backend} needs CUDA tensors",
                                 hint="move the model to a GPU or use the 'torch' backend")


class BackendChoice:
    """The backend names of one operator, and the one a `force(name)` block sets for calls that name none."""

    def __init__(self, operator: str, names: tuple[str, ...]):
        self.operator, self.names = operator, names
        self._forced: str | None = None

    def check(self, name: str) -> str:
        if name not in self.names:
            choices = ", ".join(self.names)
            raise ValueError(f"unknown {self.operator} backend {name!r}; choose one of {choices}")
        return name

    def requested(self, backend: str | None) -> str:
        """The call's backend, else the forced one, else "auto"."""
        return self.check(backend or self._forced or "auto")

    @contextlib.contextmanager
    def force(self, name: str) -> Iterator[None]:
        previous, self._forced = self._forced, self.check(name)
        try:
            yield
        finally:
            self._forced = previous
