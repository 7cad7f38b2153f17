"""The mapping modes: one class each behind one registry, the single source of their names."""

from typing import get_args

import click
import pytest
from test_qgis import plugin_list

from discomkd_geo.cli import compare, main
from discomkd_geo.errors import CheckpointError, SettingsError
from discomkd_geo.inference.modes import MODES, Auto, Dense, Pixel, Windows, mapping_mode
from discomkd_geo.inference.settings import MapSettings, Mode, setting_fields
from discomkd_geo.training.map_score import MapScore


class FakeBranch:
    """A branch that records which of the modes' requirements were asked of it."""

    def __init__(self, decoder: bool = True, dense: bool = True) -> None:
        self.has_decoder, self.dense = decoder, dense
        self.asked: list[str] = []

    def pixel_halo(self) -> int:
        self.asked.append("pixel")
        if not self.has_decoder:
            raise CheckpointError("no decoder")
        return 8

    def dense_halo(self) -> int:
        self.asked.append("dense")
        if not self.dense:
            raise CheckpointError("no encoder stages")
        return 8


def _choices(command: click.Command, flag: str) -> list[str]:
    option = next(p for p in command.params if flag in p.opts)
    return list(option.type.choices)


def test_the_registry_is_the_single_source_of_the_mode_names() -> None:
    names = list(MODES)
    assert names == ["auto", "pixel", "windows", "dense"]
    assert list(get_args(Mode)) == names
    assert _choices(main.commands["predict"], "--mode") == names
    assert _choices(compare, "--map-mode") == names
    assert plugin_list("MODES") == names  # the dialog's default is its first entry
    assert MapSettings().tiling.mode == MapScore.mode == names[0] == Auto.name


def test_the_mode_setting_help_is_each_mode_s_own() -> None:
    help_text = next(f.help for f in setting_fields() if f.name == "mode")
    assert help_text == "; ".join(f"{m.name}: {m.help}" for m in MODES.values()) + "."


@pytest.mark.parametrize("name", ["fast", "", None])
def test_an_unknown_mode_names_the_valid_ones(name: object) -> None:
    for make in (mapping_mode, lambda n: MapSettings.of(mode=n)):
        with pytest.raises(SettingsError) as raised:
            make(name)
        assert raised.value.param == "mode"
        assert str(raised.value) == ("mode: expected one of 'auto', 'pixel', 'windows', "
                                     f"'dense', got {name!r}")


def test_auto_resolves_to_each_branch_s_best_mode() -> None:
    both = {"ms": FakeBranch(), "sar": FakeBranch()}
    mixed = {"ms": FakeBranch(decoder=False), "sar": FakeBranch()}
    none = {"ms": FakeBranch(decoder=False), "sar": FakeBranch(decoder=False)}
    resolved = {name: (type(mode), windowed) for name, (mode, windowed) in
                (("both", Auto().resolve(both)), ("mixed", Auto().resolve(mixed)),
                 ("none", Auto().resolve(none)))}
    assert resolved == {"both": (Pixel, frozenset()), "mixed": (Pixel, frozenset({"ms"})),
                        "none": (Windows, frozenset())}
    for cls in (Pixel, Windows, Dense):
        mode = cls()
        assert mode.resolve(mixed) == (mode, frozenset())


def test_strides_and_block_units() -> None:
    assert [m().default_stride(64) for m in (Pixel, Windows, Dense)] == [32, 32, 16]
    assert [m().default_stride(2) for m in (Pixel, Windows, Dense)] == [1, 1, 1]
    assert [m().block_unit(64, 16) for m in (Pixel, Windows, Dense)] == [64, 16, 16]


def test_what_each_mode_asks_of_the_branches() -> None:
    branches = {"ms": FakeBranch(decoder=False), "sar": FakeBranch()}
    Windows().check(branches, frozenset(), coarse=True)
    assert [b.asked for b in branches.values()] == [[], []]
    Pixel().check(branches, frozenset({"ms"}), coarse=False)
    assert [b.asked for b in branches.values()] == [[], ["pixel"]]
    with pytest.raises(CheckpointError, match="no decoder"):
        Pixel().check(branches, frozenset(), coarse=False)
    with pytest.raises(SettingsError, match="mode 'pixel' maps every input pixel; coarse "
                                            "output is for modes 'windows' and 'dense'"):
        Pixel().check(branches, frozenset({"ms"}), coarse=True)
    Dense().check(branches, frozenset(), coarse=True)
    assert branches["ms"].asked == ["pixel", "dense"]
    with pytest.raises(CheckpointError, match="encoder stages"):
        Dense().check({"sar": FakeBranch(dense=False)}, frozenset(), coarse=False)


def test_flags_and_descriptions() -> None:
    flags = {name: (m.per_pixel, m.pools_windows, m.blocked, m.smooths)
             for name, m in MODES.items()}
    assert flags == {"auto": (False, False, False, False), "pixel": (True, False, True, True),
                     "windows": (False, False, False, False),
                     "dense": (False, True, True, False)}
    assert [m().describe(32) for m in MODES.values()] == [
        "mode auto (pixel with a decoder, else windows at stride 32)",
        "pixel mode (per-pixel decoder)", "windows mode, stride 32", "dense mode"]
