"""Mapping settings: one frozen, checked object, and the ``predict`` options made from it."""

import dataclasses
from pathlib import Path

import pytest
from click.testing import CliRunner

from discomkd_geo.cli import cli_words, error_message, main, predict
from discomkd_geo.errors import OutputExistsError, SettingsError
from discomkd_geo.files import check_outputs
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
    assert settings.tiling.mode == "auto"  # frozen: replace made a copy
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
    ({"strides": 8}, "strides", "is not a mapping setting; known: aoi, batch_size"),
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


def test_cli_range_errors_name_the_option(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["predict", "--checkpoint", str(tmp_path), "--sar", "x",
                                       "-o", str(tmp_path / "m.tif"), "--min-valid", "2"])
    assert result.exit_code == 2 and "'--min-valid'" in result.output


@pytest.mark.parametrize(("python", "cli"), [
    ("m.tif: already exists; pass overwrite=True to replace it",
     "m.tif: already exists; pass --overwrite to replace it"),
    ("pass sar_units='linear' (or force=True to map anyway)",
     "pass --sar-units linear (or --force to map anyway)"),
    ("pass scale=1 and offset=0", "pass --ms-scale 1 and --ms-offset 0"),
    ("name them with bands=, or config data.modalities.ms.bands: [B02]",
     "name them with --bands, or config data.modalities.ms.bands: [B02]"),
    ("check the address or raise scheduler_timeout",
     "check the address or raise --scheduler-timeout"),
    ("if it marks missing pixels, pass nodata=0", "if it marks missing pixels, pass --nodata 0"),
])
def test_library_words_become_options_on_the_command_line(python: str, cli: str) -> None:
    assert cli_words(python) == cli


def test_errors_carry_the_python_parameter(tmp_path: Path) -> None:
    existing = tmp_path / "m.tif"
    existing.write_bytes(b"")
    with pytest.raises(OutputExistsError) as raised:
        check_outputs({"map": existing}, overwrite=False)
    assert raised.value.param == "overwrite" and "overwrite=True" in str(raised.value)
    assert error_message(raised.value) == f"{existing}: already exists; pass --overwrite to " \
                                          "replace it"
    with pytest.raises(SettingsError) as bad:
        MapSettings.of(min_valid=2.0)
    assert error_message(bad.value) == "--min-valid: must be at most 1, got 2.0"


def test_a_bad_device_names_the_setting(tmp_path: Path) -> None:
    from test_inference import make_predictor, texture, write_scene

    from discomkd_geo.inference.engine import predict_to_file

    scene = write_scene(tmp_path / "s.tif", texture(2, 32, 0), ["VV", "VH"])
    with pytest.raises(SettingsError, match="^device: 'gpu7' is not a torch device") as raised:
        predict_to_file(make_predictor("sar", ["VV", "VH"]), scene, tmp_path / "m.tif",
                        MapSettings.of(device="gpu7"))
    assert raised.value.param == "device" and not (tmp_path / "m.tif").exists()
