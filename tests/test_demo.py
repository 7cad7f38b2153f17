"""The built-in demo end to end (tiny settings), and map scoring against a truth raster."""

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from rasterio.transform import from_origin

from discomkd_geo.cli import main
from discomkd_geo.constants import CLASS_NODATA, EUROSAT_CLASSES
from discomkd_geo.demo import DEMO_TILES
from discomkd_geo.inference.scoring import score_map

TINY = ("--set", "model.width=8", "--set", "trainer.max_epochs=1",
        "--set", "data.batch_size=16", "--set", "trainer.accelerator=cpu")


def _write_codes(path: Path, codes: np.ndarray, x0: float = 500000.0) -> None:
    profile = {"driver": "GTiff", "width": codes.shape[1], "height": codes.shape[0],
               "count": 1, "dtype": "uint8", "crs": "EPSG:32631", "nodata": CLASS_NODATA,
               "transform": from_origin(x0, 5000000.0, 10.0, 10.0)}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(codes, 1)


def test_score_map_counts_agreement_on_the_truth_grid(tmp_path: Path) -> None:
    truth = np.zeros((20, 20), np.uint8)
    truth[:, 10:] = 1
    truth[0, :] = CLASS_NODATA  # left out
    pred = truth.copy()
    pred[5:10, 0:10] = 1  # 50 wrong pixels of class 0
    pred[19, :] = CLASS_NODATA  # not mapped: lowers coverage, not accuracy
    _write_codes(tmp_path / "truth.tif", truth)
    _write_codes(tmp_path / "map.tif", pred)
    scores = score_map(tmp_path / "map.tif", tmp_path / "truth.tif", ["a", "b"])
    assert scores["pixels"] == 18 * 20
    assert scores["coverage"] == pytest.approx(18 / 19)
    assert scores["oa"] == pytest.approx(1 - 50 / 360)
    assert scores["f1"]["a"] < scores["f1"]["b"] < 1.0


def test_score_map_resamples_a_map_on_another_grid(tmp_path: Path) -> None:
    truth = np.arange(100, dtype=np.uint8).reshape(10, 10) % 2
    _write_codes(tmp_path / "truth.tif", truth)
    _write_codes(tmp_path / "shifted.tif", truth, x0=500010.0)  # one pixel east
    scores = score_map(tmp_path / "shifted.tif", tmp_path / "truth.tif", ["a", "b"])
    assert scores["coverage"] == pytest.approx(0.9)  # first column not covered
    assert scores["oa"] == 0.0  # alternating columns, shifted by one: all wrong


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISCOMKD_GEO_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    result = CliRunner().invoke(main, ["demo", "--out", str(out), "--per-class", "6",
                                       "--no-progress", *TINY])
    assert result.exit_code == 0, result.output
    assert "[4/4]" in result.output
    with rasterio.open(out / "landcover_sar.tif") as src, \
            rasterio.open(DEMO_TILES / "sar.tif") as sar:
        assert src.crs == sar.crs and src.transform == sar.transform
        assert src.dtypes[0] == "uint8" and src.nodata == CLASS_NODATA
        codes = src.read(1)
    assert set(np.unique(codes)) <= set(range(len(EUROSAT_CLASSES))) | {CLASS_NODATA}
    assert (out / "quicklook.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    accuracy = json.loads((out / "accuracy.json").read_text())
    assert accuracy["pixels"] > 0 and 0.0 <= accuracy["oa"] <= 1.0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["patch_test"]) == {"ms", "sar"}

    again = CliRunner().invoke(main, ["demo", "--out", str(out), "--no-progress", *TINY])
    assert again.exit_code != 0
    assert "already exists" in again.output and len(again.output.strip().splitlines()) == 1
