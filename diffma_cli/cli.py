"""The `diffma` command line: a thin Typer layer over the library.

Each command parses its options, calls one library function and turns known errors (`DiffmaError`) into
one line on stderr with a documented exit code. Heavy libraries (torch, SimpleITK, diffusers) are imported
inside the commands, never here, so that `diffma --help` answers at once.
"""

from __future__ import annotations

import functools
import sys
import traceback
from collections.abc import Callable

import typer

from diffma_cli import __version__
from diffma_cli.errors import DiffmaError

app = typer.Typer(
    name="diffma",
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


def friendly_errors(command: Callable) -> Callable:
    """Turn a command's known errors into one line and an exit code (a traceback only with --debug)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except DiffmaError as error:
            if _state["debug"]:
                traceback.print_exc()
            typer.echo(f"diffma: error: {error}", err=True)
            raise typer.Exit(error.exit_code) from None
        except KeyboardInterrupt:
            typer.echo("diffma: interrupted", err=True)
            raise typer.Exit(130) from None
        except Exception as error:  # a bug, not a user error: say so and how to see more
            if _state["debug"]:
                traceback.print_exc()
            typer.echo(f"diffma: internal error: {type(error).__name__}: {error} "
                       "(run again with --debug for the traceback and report it)", err=True)
            raise typer.Exit(1) from None

    return wrapper


def register(name: str, function: Callable) -> None:
    """Add a library-facing command function to the app under `name`, with friendly errors."""
    app.command(name)(friendly_errors(function))


def _register_all() -> None:
    # Command modules only declare options; they import torch & co. inside the function bodies.
    from diffma_cli.commands import registered

    for name, function in registered():
        register(name, function)


_register_all()


def main() -> None:
    app(prog_name="diffma")


if __name__ == "__main__":
    sys.exit(main())
