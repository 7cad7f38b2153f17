"""The command line: instant help, one-line errors."""

import subprocess
import sys

from click.testing import CliRunner

from discomkd_geo.cli import main


def test_help_does_not_import_heavy_libraries() -> None:
    """``--help`` must answer at once: no torch, rasterio or dask at import."""
    code = ("import sys; from discomkd_geo.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = {'torch', 'rasterio', 'dask', 'lightning', 'torchgeo'} & set(sys.modules)\n"
            "print(sorted(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip().endswith("[]"), out


def test_every_command_has_help() -> None:
    for command in main.commands:
        result = CliRunner().invoke(main, [command, "--help"])
        assert result.exit_code == 0 and "Usage:" in result.output, command


def test_unknown_command_fails() -> None:
    result = CliRunner().invoke(main, ["paint"])
    assert result.exit_code != 0 and "No such command 'paint'" in result.output
