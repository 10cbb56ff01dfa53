"""The command line itself: fast help without torch, one-line errors, version."""

import subprocess
import sys

from typer.testing import CliRunner

from diffma_cli import __version__
from diffma_cli.cli import app, friendly_errors
from diffma_cli.errors import InputError


def test_importing_the_cli_does_not_import_torch():
    code = "import sys, diffma_cli.cli; print('torch' in sys.modules, 'SimpleITK' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, encoding="utf-8",
                         check=True).stdout
    assert out.split() == ["False", "False"]


def test_help_lists_commands_and_version():
    runner = CliRunner()
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "Usage" in result.output
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


def test_python_dash_m_works_like_the_script():
    result = subprocess.run([sys.executable, "-m", "diffma_cli", "--version"], capture_output=True,
                            encoding="utf-8")
    assert result.returncode == 0 and __version__ in result.stdout


def test_known_errors_become_one_line_and_exit_code(capsys):
    import typer

    def broken():
        raise InputError("is not a CT volume", path="x.nii.gz", hint="give a CT in HU")

    try:
        friendly_errors(broken)()
    except typer.Exit as exit_:
        assert exit_.exit_code == 2
    err = capsys.readouterr().err
    assert err.strip() == "diffma: error: x.nii.gz: is not a CT volume (give a CT in HU)"
    assert "Traceback" not in err


def test_a_terminal_that_knows_only_ascii_gets_escapes_not_a_traceback():
    import io

    from diffma_cli.cli import tolerate_narrow_terminals

    raw = io.BytesIO()
    ascii_terminal = io.TextIOWrapper(raw, encoding="ascii")
    tolerate_narrow_terminals(ascii_terminal)
    print("slices of 224\u00b2, MAE 0.25 \u00b1 0.03", file=ascii_terminal)
    ascii_terminal.flush()
    assert raw.getvalue() == b"slices of 224\\xb2, MAE 0.25 \\xb1 0.03\n"
    utf8_terminal = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    tolerate_narrow_terminals(utf8_terminal)
    assert utf8_terminal.errors == "strict"  # a terminal that can print everything is left alone
