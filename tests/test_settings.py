"""Mapping settings: one frozen, checked object, and the ``predict`` options made from it."""

import dataclasses
from pathlib import Path

import pytest
from click.testing import CliRunner

from discomkd_geo.cli import main, predict
from discomkd_geo.errors import SettingsError
from discomkd_geo.inference.settings import (
    Execution,
    MapSettings,
    Tiling,
    setting_fields,
)


def test_defaults_and_flat_names() -> None:
    settings = MapSettings.of(stride=8, workers=2, probabilities="p.tif", force=True)
    assert settings.tiling == Tiling(stride=8)
    assert settings.execution == Execution(workers=2)
    assert settings.outputs.probabilities == "p.tif" and settings.checks.force
    assert settings.replace(mode="dense").tiling.mode == "dense"
    assert settings.tiling.mode == "windows"  # frozen: replace made a copy
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.tiling.stride = 4  # type: ignore[misc]
    assert MapSettings().to_dict()["tiling"]["chunk_size"] == 1024


@pytest.mark.parametrize(("values", "param", "problem"), [
    ({"stride": 0}, "stride", "must be at least 1, got 0"),
    ({"min_valid": 1.5}, "min_valid", "must be at most 1, got 1.5"),
    ({"scheduler_timeout": 0}, "scheduler_timeout", "must be above 0"),
    ({"mode": "fast"}, "mode", "expected one of 'auto', 'pixel', 'windows', 'dense', got 'fast'"),
    ({"chunk_size": 64.0}, "chunk_size", "expected int, got 64.0"),
    ({"overwrite": "yes"}, "overwrite", "expected bool, got 'yes'"),
    ({"strides": 8}, "strides", "is not a mapping setting; known: batch_size, block_size"),
])
def test_bad_values_name_the_field(values: dict, param: str, problem: str) -> None:
    with pytest.raises(SettingsError) as raised:
        MapSettings.of(**values)
    assert raised.value.param == param
    assert str(raised.value).startswith(f"{param}: {problem}")


def test_groups_are_checked() -> None:
    with pytest.raises(SettingsError, match="tiling: expected a Tiling"):
        MapSettings(tiling=Execution())  # type: ignore[arg-type]


def test_predict_options_are_generated_from_the_settings() -> None:
    """Every setting is an option of ``predict`` with its default and help: no drift."""
    options = {p.name: p for p in predict.params}
    for f in setting_fields():
        option = options[f.name]
        assert option.opts == [f.flag]
        assert option.default == f.default and option.help == f.help
    help_text = CliRunner().invoke(main, ["predict", "--help"]).output
    for flag in ("--pad", "--min-valid", "--batch-size", "--device", "--block-size",
                 "--threads", "--no-progress"):
        assert flag in help_text
    assert "--quiet" not in help_text  # the deprecated alias is hidden


def test_cli_range_errors_name_the_option(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["predict", "--checkpoint", str(tmp_path), "--sar", "x",
                                       "-o", str(tmp_path / "m.tif"), "--min-valid", "2"])
    assert result.exit_code == 2 and "'--min-valid'" in result.output


def test_quiet_is_a_deprecated_alias_of_no_progress() -> None:
    result = CliRunner().invoke(main, ["train", "--print-config", "--quiet"])
    assert result.exit_code == 0
    assert "--quiet after the command is deprecated; use --no-progress" in result.stderr
    assert "method:" in result.stdout
