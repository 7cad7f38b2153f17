"""Map scoring: hand-made truth/map pairs, the issues' reference scorer, held-out scenes."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from discomkd_geo.constants import CLASS_NODATA
from discomkd_geo.data.synthetic import make_scene
from discomkd_geo.demo import DEMO_TILES
from discomkd_geo.errors import SettingsError
from discomkd_geo.inference.engine import predict_to_file
from discomkd_geo.inference.scoring import boundary_band, map_to_grid, score_map
from discomkd_geo.inference.settings import MapSettings
from discomkd_geo.models.predictor import load_torch_predictor
from discomkd_geo.training.map_score import MapScore, score_scenes

REFERENCE = Path(__file__).parent / "data" / "score_map_reference.py"


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


def test_edge_oa_counts_the_band_within_3_px_of_a_boundary(tmp_path: Path) -> None:
    truth = np.zeros((20, 20), np.uint8)
    truth[:, 10:] = 1
    # Boundary pixels (unlike the left neighbour, wrapping as score_map.py's np.roll):
    # columns 10 and 0; dilated 3 px: columns 7-13 and 0-3, 11 of 20 columns.
    band = np.zeros((20, 20), bool)
    band[:, 7:14] = band[:, 0:4] = True
    assert np.array_equal(boundary_band(truth), band)
    pred = truth.copy()
    pred[:, 8:10] = 1  # 40 wrong pixels, all in the band
    pred[:, 16] = 0  # 20 wrong pixels, outside it
    pred[19, :] = CLASS_NODATA  # not scored
    _write_codes(tmp_path / "truth.tif", truth)
    _write_codes(tmp_path / "map.tif", pred)
    scores = score_map(tmp_path / "map.tif", tmp_path / "truth.tif", ["a", "b"])
    assert scores["pixels"] == 380
    assert scores["edge_share"] == pytest.approx(11 * 19 / 380)
    assert scores["edge_oa"] == pytest.approx(1 - 38 / (11 * 19))
    assert scores["oa"] == pytest.approx(1 - 57 / 380)


def test_score_map_resamples_a_map_on_another_grid(tmp_path: Path) -> None:
    truth = np.arange(100, dtype=np.uint8).reshape(10, 10) % 2
    _write_codes(tmp_path / "truth.tif", truth)
    _write_codes(tmp_path / "shifted.tif", truth, x0=500010.0)  # one pixel east
    scores = score_map(tmp_path / "shifted.tif", tmp_path / "truth.tif", ["a", "b"])
    assert scores["coverage"] == pytest.approx(0.9)  # first column not covered
    assert scores["oa"] == 0.0  # alternating columns, shifted by one: all wrong


def test_scores_agree_with_the_reference_scorer(tmp_path: Path) -> None:
    """A demo-like map (the truth with shifted boundaries and noise) scored both ways."""
    with rasterio.open(DEMO_TILES / "truth.tif") as src:
        truth, profile = src.read(1), src.profile
    rng = np.random.default_rng(0)
    pred = np.roll(truth, (3, -2), axis=(0, 1))  # boundaries moved: the band suffers
    noise = rng.random(truth.shape) < 0.1
    pred[noise] = rng.integers(0, 10, noise.sum())
    pred[:40, :] = CLASS_NODATA
    with rasterio.open(tmp_path / "map.tif", "w", **profile) as dst:
        dst.write(pred, 1)
    ours = score_map(tmp_path / "map.tif", DEMO_TILES / "truth.tif", [str(i) for i in range(10)])
    out = subprocess.run([sys.executable, str(REFERENCE), str(tmp_path / "map.tif"),
                          str(DEMO_TILES / "truth.tif")], capture_output=True, text=True,
                         check=True).stdout
    found = re.match(r"OA (\S+)  edge OA (\S+) ", out)
    assert found, out
    assert f"{ours['oa']:.3f}" == found[1] and f"{ours['edge_oa']:.3f}" == found[2]
    assert ours["oa"] - ours["edge_oa"] > 0.2  # the shift shows in the band only


@pytest.mark.slow
def test_each_scene_is_scored_against_its_own_truth(demo_sar_model: Path,
                                                    tmp_path: Path) -> None:
    """The map score pairs each SAR map with its scene's truth, whatever the order."""
    predictor = load_torch_predictor(demo_sar_model)
    scenes = []
    for seed in (101, 102):
        scenes.append(tmp_path / f"scene{seed}")
        make_scene(scenes[-1], size=128, seed=seed)
    (tmp_path / "alone").mkdir()
    alone = {}
    for scene in scenes:  # map each scene on its own
        alone[scene.name] = tmp_path / "alone" / f"{scene.name}.tif"
        predict_to_file(predictor, scene / "sar.tif", alone[scene.name],
                        MapSettings.of(stride=32, device="cpu", threads=1))
    # A third scene: scene101's SAR, and its map for truth: scored right, its OA is 1.
    perfect = tmp_path / "perfect"
    perfect.mkdir()
    shutil.copy(scenes[0] / "sar.tif", perfect / "sar.tif")
    with rasterio.open(scenes[0] / "truth.tif") as src:
        profile = src.profile
    with rasterio.open(perfect / "truth.tif", "w", **profile) as dst:
        dst.write(map_to_grid(alone["scene101"], scenes[0] / "truth.tif"), 1)
    scenes.append(perfect)
    found = score_scenes(predictor, scenes[::-1], tmp_path / "maps", MapScore(3, size=128),
                         threads=1)
    assert list(found) == ["perfect", "scene102", "scene101"]
    assert found["perfect"]["oa"] == found["perfect"]["edge_oa"] == 1.0
    classes = list(predictor.info.classes)
    for name in ("scene101", "scene102"):
        expected = score_map(alone[name], tmp_path / name / "truth.tif", classes)
        assert found[name] == {k: expected[k] for k in found[name]}
        assert found[name]["coverage"] > 0.9 and found[name]["oa"] < 1.0
    json.dumps(found)  # plain numbers


@pytest.mark.parametrize("values", [{"scenes": -1}, {"mode": "fast"}, {"stride": 0},
                                    {"size": 32}])
def test_map_score_settings_are_checked(values: dict) -> None:
    # Errors name the Python field (the CLI names its option); mode and stride are
    # checked by MapSettings, as predict checks them.
    with pytest.raises(SettingsError) as raised:
        MapScore(**values)
    assert raised.value.param == next(iter(values))
    assert MapScore(5).seeds == [101, 102, 103, 104, 105] and MapScore().seeds == []
