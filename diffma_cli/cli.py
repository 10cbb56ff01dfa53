"""The `diffma` command line: a thin Typer layer over the library.

Each command parses its options, calls one library function and turns known errors (`DiffmaError`) into
one line on stderr with a documented exit code. Heavy libraries (torch, SimpleITK, diffusers) are imported
inside the commands, never here, so that `diffma --help` answers at once.
"""

from __future__ import annotations

import functools
import sys
import traceback
import warnings
from collections.abc import Callable

import typer
from typer.core import TyperGroup

try:  # typer >= 0.2x carries its own copy of click
    from typer._click import exceptions as click_exceptions
except ImportError:  # older typer uses click itself
    from click import exceptions as click_exceptions

from diffma_cli import __version__
from diffma_cli.errors import DiffmaError, from_os_error


class OneLineUsageErrors(TyperGroup):
    """Click's usage errors (a bad option value, a missing argument) as one `diffma: error:` line with exit
    code 2, like every other bad input, instead of click's usage box on several lines."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click_exceptions.ClickException as error:
            if type(error).__name__ == "NoArgsIsHelpError":  # `diffma` alone: the help, as before
                error.show()
                sys.exit(error.exit_code)
            context = getattr(error, "ctx", None)
            where = f" (see `{context.command_path} --help`)" if context is not None else ""
            typer.echo(f"diffma: error: {error.format_message().rstrip('.')}{where}", err=True)
            sys.exit(error.exit_code)
        except typer.Abort:
            typer.echo("diffma: aborted", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    name="diffma",
    cls=OneLineUsageErrors,
    help="DiffMa (Diffusion Mamba) for radiotherapy: prepare paired CT/MR data, train, convert CT volumes "
    "into synthetic MR volumes, and evaluate them.\n\n"
    "Typical workflow: diffma prepare -> diffma train-embedder -> diffma train -> diffma convert -> "
    "diffma eval.  Try `diffma demo` for the whole pipeline on synthetic data.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_state = {"debug": False}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"diffma {__version__}")
        raise typer.Exit()


@app.callback()
def _main_options(
    debug: bool = typer.Option(False, "--debug", help="Show the full traceback of errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Show the version and exit."),
) -> None:
    _state["debug"] = debug


class Terminated(BaseException):
    """SIGTERM (what schedulers and `kill` send) turned into an exception, so that it unwinds like Ctrl-C:
    temporaries removed, one line, exit code 143."""


def _raise_terminated(signum, frame):
    raise Terminated()


# What to say after an interruption, by command: how to continue where it stopped.
RESUME_HINTS = {
    "train": "run the same command with --resume to continue from the last checkpoint",
    "train_embedder": "run the same command with --resume to continue from the last checkpoint",
    "train_vae": "run the same command with --resume to continue from the last checkpoint",
    "convert": "run the same command again: a folder run skips the cases already finished",
}


def _close_progress_bars() -> None:
    """End every open tqdm bar's line, so that a message is not glued to the end of a bar."""
    tqdm_module = sys.modules.get("tqdm.std")
    if tqdm_module is None:
        return
    for bar in list(getattr(tqdm_module.tqdm, "_instances", [])):
        try:
            bar.close()
        except Exception:  # a bar half torn down by the error itself: nothing more to show
            pass


def friendly_errors(command: Callable) -> Callable:
    """Turn a command's known errors into one line and an exit code (a traceback only with --debug)."""

    def stopped(message: str, code: int):
        hint = RESUME_HINTS.get(command.__name__)
        typer.echo(f"diffma: {message}" + (f" ({hint})" if hint else ""), err=True)
        return typer.Exit(code)

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        import signal
        import threading

        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, _raise_terminated)
        # Library warnings (the hub's UserWarnings, ...) are held back while the command runs: shown as
        # usual when it succeeds, dropped when it fails, so that the error is the one line a user reads.
        held = warnings.catch_warnings(record=True)
        caught = held.__enter__()
        failed = True
        try:
            result = command(*args, **kwargs)
            failed = False
            return result
        except (typer.Exit, typer.Abort):
            failed = False
            raise
        except DiffmaError as error:
            _close_progress_bars()
            if _state["debug"]:
                traceback.print_exc()
            typer.echo(f"diffma: error: {error}", err=True)
            raise typer.Exit(error.exit_code) from None
        except KeyboardInterrupt:
            _close_progress_bars()
            raise stopped("interrupted", 130) from None
        except Terminated:
            _close_progress_bars()
            raise stopped("terminated (SIGTERM)", 143) from None
        except Exception as error:  # a bug, not a user error: say so and how to see more
            _close_progress_bars()
            if _state["debug"]:
                traceback.print_exc()
            known = from_os_error(error)  # what the system refused: a full disk, a bad path, memory
            if known is not None:
                typer.echo(f"diffma: error: {known}", err=True)
                raise typer.Exit(known.exit_code) from None
            typer.echo(f"diffma: internal error: {type(error).__name__}: {error} "
                       "(run again with --debug for the traceback and report it)", err=True)
            raise typer.Exit(1) from None
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            held.__exit__(None, None, None)
            if not failed:
                for warning in caught:
                    warnings.warn_explicit(warning.message, warning.category, warning.filename,
                                           warning.lineno, source=warning.source)

    return wrapper


def register(name: str, function: Callable) -> None:
    """Add a library-facing command function to the app under `name`, with friendly errors."""
    app.command(name)(friendly_errors(function))


def _register_all() -> None:
    # Command modules only declare options; they import torch & co. inside the function bodies.
    from diffma_cli.commands import COMMANDS

    for name, function in COMMANDS:
        register(name, function)


_register_all()


def tolerate_narrow_terminals(*streams) -> None:
    """On a terminal whose locale cannot encode a character we print (a plain `C` locale knows only ASCII:
    "224²", "±", tqdm's bars), write it as an escape such as `\\xb2` instead of dying with a traceback."""
    for stream in streams:
        encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "")
        if encoding != "utf8" and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def main() -> None:
    tolerate_narrow_terminals(sys.stdout, sys.stderr)
    app(prog_name="diffma")


if __name__ == "__main__":
    sys.exit(main())
