"""Per-pixel fusion: the rules, the source raster, and the same bytes however mapped."""

import json
from pathlib import Path
from typing import get_args

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from test_inference import MS_BANDS, make_predictor, read, texture, write_scene
from test_pixel_mode import pixel_predictor

from discomkd_geo.cli import main
from discomkd_geo.constants import CLASS_NODATA, S1_BANDS
from discomkd_geo.errors import SettingsError
from discomkd_geo.inference.classmap import read_class_map
from discomkd_geo.inference.engine import predict_lazy, predict_to_file
from discomkd_geo.inference.fusion import (
    FUSED,
    NONE,
    RULES,
    SOURCE_CODES,
    SOURCE_NODATA,
    Weighted,
    fusion_rule,
)
from discomkd_geo.inference.settings import FusionName, MapSettings
from discomkd_geo.models.predictor import Predictor

MS, SAR = SOURCE_CODES["ms"], SOURCE_CODES["sar"]


def test_rules_are_the_settings_choices() -> None:
    assert set(RULES) == set(get_args(FusionName))


def evidence() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Two classes, four pixels: both valid (two pixels), MS only, none."""
    ms = np.array([[0.9, 0.6, 0.7, 0.5], [0.1, 0.4, 0.3, 0.5]])[:, None, :]
    sar = np.array([[0.2, 0.3, 0.1, 0.5], [0.8, 0.7, 0.9, 0.5]])[:, None, :]
    return {"ms": (ms, np.array([[True, True, True, False]])),
            "sar": (sar, np.array([[True, True, False, False]]))}


@pytest.mark.parametrize(("name", "expected", "source"), [
    # 0.9 x 0.2 = 0.18 against 0.1 x 0.8 = 0.08; 0.6 x 0.3 = 0.18 against 0.28.
    ("product", [[0.18 / 0.26, 0.18 / 0.46], [0.08 / 0.26, 0.28 / 0.46]], [FUSED, FUSED]),
    ("confident", [[0.9, 0.3], [0.1, 0.7]], [MS, SAR]),
    ("average", [[0.55, 0.45], [0.45, 0.55]], [FUSED, FUSED]),
])
def test_each_rule_on_hand_made_probabilities(name: str, expected: list, source: list) -> None:
    probs, codes = fusion_rule(name, ["ms", "sar"], classes=2).fuse(evidence())
    np.testing.assert_allclose(probs[:, 0, :2], expected)
    # One branch valid: its own probabilities; none: zeros and NONE.
    np.testing.assert_array_equal(probs[:, 0, 2], [0.7, 0.3])
    np.testing.assert_array_equal(probs[:, 0, 3], [0.0, 0.0])
    assert codes.dtype == np.uint8 and codes[0].tolist() == [*source, MS, NONE]


def test_weighted_raises_each_branch_to_its_accuracy_weight() -> None:
    rule = fusion_rule("weighted", ["ms", "sar"], classes=2, accuracy={"ms": 0.9, "sar": 0.75})
    assert isinstance(rule, Weighted)
    weight = np.log(3.0) / np.log(9.0)  # log-odds of 0.75 over those of 0.9
    assert rule.weights == pytest.approx({"ms": 1.0, "sar": weight})
    probs, codes = rule.fuse(evidence())
    ms, sar = 0.9 * 0.2 ** weight, 0.1 * 0.8 ** weight
    np.testing.assert_allclose(probs[:, 0, 0], [ms / (ms + sar), sar / (ms + sar)])
    assert codes[0].tolist() == [FUSED, FUSED, MS, NONE]
    with pytest.raises(SettingsError, match="measured accuracy.*; missing sar"):
        fusion_rule("weighted", ["ms", "sar"], classes=2, accuracy={"ms": 0.9})
    with pytest.raises(SettingsError, match="branch_accuracy"):
        MapSettings.of(fusion="weighted", branch_accuracy="ms=0.9,sar")


def mixed_predictors() -> dict[str, Predictor]:
    """An MS branch without a decoder (windows) and a SAR branch with one (pixel)."""
    return {"ms": make_predictor("ms", MS_BANDS, patch=16, seed=2),
            "sar": pixel_predictor(modality="sar")}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """96 x 88 px MS and SAR scenes on one grid: MS nodata in the top rows (a cloud), SAR
    nodata in the left columns, both in the top-left corner."""
    folder = tmp_path_factory.mktemp("fusion")
    ms = texture(len(MS_BANDS), 96, seed=7)[:, :, :88]
    ms[:, :20, :] = np.nan
    sar = texture(2, 96, seed=8)[:, :, :88]
    sar[:, :, :24] = np.nan
    return {"ms": write_scene(folder / "ms.tif", ms, MS_BANDS),
            "sar": write_scene(folder / "sar.tif", sar, list(S1_BANDS))}


def test_no_pixel_takes_its_class_from_a_modality_without_data(scenes: dict[str, Path],
                                                               tmp_path: Path) -> None:
    """Mode auto: MS windowed inside pixel mode; where one scene is nodata the other
    decides, with the class its own map gives; where both are, nothing does."""
    predictors = mixed_predictors()
    settings = MapSettings.of(block_size=32, smoothing=0.0, overwrite=True)
    summary = predict_to_file(predictors, scenes, tmp_path / "fused.tif",
                              settings.replace(source=tmp_path / "source.tif"))
    assert summary.mode == "pixel" and summary.windowed == ("ms",)
    assert summary.fusion == "product"
    source, codes = read(tmp_path / "source.tif")[0], read(tmp_path / "fused.tif")[0]
    ms_gone = np.zeros_like(source, dtype=bool)
    ms_gone[:20] = True
    sar_gone = np.zeros_like(ms_gone)
    sar_gone[:, :24] = True
    assert (source[ms_gone & sar_gone] == NONE).all()
    assert (codes[ms_gone & sar_gone] == CLASS_NODATA).all()
    assert (source[ms_gone & ~sar_gone] == SAR).all()
    assert (source[sar_gone & ~ms_gone] == MS).all()
    assert (source[~ms_gone & ~sar_gone] == FUSED).all()
    for modality, alone in (("sar", ms_gone & ~sar_gone), ("ms", sar_gone & ~ms_gone)):
        predict_to_file(predictors[modality], scenes[modality], tmp_path / f"{modality}.tif",
                        settings.replace(mode="pixel" if modality == "sar" else "windows"))
        own = read(tmp_path / f"{modality}.tif")[0]
        assert (codes[alone] == own[alone]).all(), modality
    total = source.size
    assert summary.sources == pytest.approx({
        "none": (ms_gone & sar_gone).sum() / total, "ms": (sar_gone & ~ms_gone).sum() / total,
        "sar": (ms_gone & ~sar_gone).sum() / total,
        "fused": (~ms_gone & ~sar_gone).sum() / total}, abs=1e-6)


def test_fused_maps_and_sources_same_bytes_for_any_chunk_size_and_workers(
        scenes: dict[str, Path], tmp_path: Path) -> None:
    """Mixed modes, smoothed (two stages), every output: the same bytes however cut."""
    predictors = mixed_predictors()
    runs = {"c32w1": {"chunk_size": 32}, "c1024w1": {"chunk_size": 1024},
            "c64w2": {"chunk_size": 64, "workers": 2}}
    for name, kwargs in runs.items():
        settings = MapSettings.of(block_size=32, smoothing=4.0, smoothing_radius=4,
                                  smoothing_passes=2, probabilities=tmp_path / f"{name}.p.tif",
                                  source=tmp_path / f"{name}.s.tif", **kwargs)
        predict_to_file(predictors, scenes, tmp_path / f"{name}.tif", settings)
    for suffix in (".tif", ".p.tif", ".s.tif"):
        first, *others = [(tmp_path / f"{name}{suffix}").read_bytes() for name in runs]
        assert all(other == first for other in others), suffix
    # The lazy array holds the same sources as the raster, with the raster's legend.
    lazy = predict_lazy(predictors, scenes, settings.replace(chunk_size=48, probabilities=None,
                                                             source=None), what="source")
    assert lazy.attrs["sources"] == {0: "none", 1: "ms", 2: "sar", 3: "fused"}
    np.testing.assert_array_equal(lazy.compute().values, read(tmp_path / "c32w1.s.tif")[0])


@pytest.mark.slow
def test_fused_map_same_bytes_on_a_distributed_cluster(scenes: dict[str, Path],
                                                       tmp_path: Path) -> None:
    from distributed import LocalCluster

    settings = MapSettings.of(block_size=32, source=tmp_path / "local.s.tif")
    predict_to_file(mixed_predictors(), scenes, tmp_path / "local.tif",
                    settings.replace(chunk_size=32))
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster:
        predict_to_file(mixed_predictors(), scenes, tmp_path / "cluster.tif", settings.replace(
            chunk_size=64, scheduler=cluster.scheduler_address,
            source=tmp_path / "cluster.s.tif"))
    for suffix in (".tif", ".s.tif"):
        assert (tmp_path / f"cluster{suffix}").read_bytes() == \
            (tmp_path / f"local{suffix}").read_bytes()


def test_cli_source_raster_legend_and_json_shares(scenes: dict[str, Path], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Two scenes fuse by default (``--fuse`` says so explicitly); ``--modality`` maps one
    branch as before; the source raster is paletted, with its legend in its tags."""
    predictors = mixed_predictors()
    monkeypatch.setattr("discomkd_geo.models.loader.load_predictor",
                        lambda checkpoint, modality, **_: predictors[modality])
    model = tmp_path / "model.pt"
    model.touch()
    out, source = tmp_path / "map.tif", tmp_path / "source.tif"
    args = ["predict", "--checkpoint", str(model), "--ms", str(scenes["ms"]), "--sar",
            str(scenes["sar"]), "-o", str(out), "--block-size", "32", "--no-progress"]
    result = CliRunner().invoke(main, [*args, "--source", str(source), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["modalities"] == ["ms", "sar"] and summary["fusion"] == "product"
    assert summary["source"] == str(source)
    assert set(summary["sources"]) == {"none", "ms", "sar", "fused"}
    assert sum(summary["sources"].values()) == pytest.approx(1.0)
    codes = read(source)[0]
    counts = {name: (codes == code).mean() for code, name in
              enumerate(["none", "ms", "sar", "fused"])}
    assert summary["sources"] == pytest.approx(counts, abs=1e-6)
    with rasterio.open(source) as src:
        assert src.dtypes[0] == "uint8" and src.nodata == SOURCE_NODATA
        assert [src.colormap(1)[code][:3] for code in range(4)] == [
            (150, 150, 150), (240, 160, 40), (60, 110, 220), (60, 170, 80)]
        assert src.tags()["FUSION"] == "product"
    assert read_class_map(source).classes == ("none", "ms", "sar", "fused")
    item = json.loads(out.with_suffix(".stac.json").read_text())
    assert item["assets"]["source"]["href"] == "source.tif"
    # --fuse: the same map, explicitly; the human summary gives the shares.
    by_default = out.read_bytes()
    fused = CliRunner().invoke(main, [*args, "--fuse", "--overwrite"])
    assert fused.exit_code == 0, fused.output
    assert "decided by (product fusion): " in fused.output
    assert out.read_bytes() == by_default
    # --modality: one branch, as before (the SAR scene's own map, no fusion).
    one = CliRunner().invoke(main, [*args, "--modality", "sar", "--overwrite", "--json"])
    assert one.exit_code == 0, one.output
    summary = json.loads(one.output)
    assert summary["modalities"] == ["sar"] and summary["fusion"] is None
    assert summary["sources"]["ms"] == 0 and summary["sources"]["fused"] == 0
    refused = CliRunner().invoke(main, [*args, "--modality", "sar", "--fuse", "--overwrite"])
    assert refused.exit_code == 2 and "--modality maps one branch" in refused.output
