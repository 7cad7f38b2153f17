"""The built-in demo end to end (tiny settings); its map scorer: tests/test_scoring.py."""

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

from discomkd_geo.cli import main
from discomkd_geo.constants import CLASS_NODATA, EUROSAT_CLASSES
from discomkd_geo.demo import DEMO_TILES

TINY = ("--set", "model.width=8", "--set", "trainer.max_epochs=1",
        "--set", "data.batch_size=16", "--set", "trainer.accelerator=cpu")


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
    assert 0.0 <= accuracy["edge_oa"] <= 1.0 and 0.0 < accuracy["edge_share"] < 1.0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["patch_test"]) == {"ms", "sar"}

    again = CliRunner().invoke(main, ["demo", "--out", str(out), "--no-progress", *TINY])
    assert again.exit_code != 0
    assert "already exists" in again.output and len(again.output.strip().splitlines()) == 1
