"""The tiled inference engine on real GeoTIFFs, real forward passes and real Dask schedulers."""

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from click.testing import CliRunner
from rasterio.transform import from_origin
from rasterio.warp import transform_bounds
from torch import nn

from discomkd_geo.cli import main
from discomkd_geo.constants import CLASS_NODATA, EUROSAT_CLASSES, EUROSAT_COLORS, S1_BANDS
from discomkd_geo.data.normalization import BandStats
from discomkd_geo.errors import InputFileError, OutputExistsError
from discomkd_geo.inference.engine import predict_lazy, predict_to_file
from discomkd_geo.inference.io import SceneInput
from discomkd_geo.inference.settings import MapSettings
from discomkd_geo.models.branches import build_branch
from discomkd_geo.models.predictor import Predictor, PredictorInfo

CRS = "EPSG:32631"
ORIGIN = (500000.0, 5000000.0)
MS_BANDS = ["B02", "B03", "B04"]


def make_predictor(modality: str, bands: list[str], patch: int = 16, seed: int = 0,
                   branch: nn.Module | None = None) -> Predictor:
    """A tiny, untrained but input-sensitive predictor (torch.nn modules only: picklable)."""
    torch.manual_seed(seed)
    if branch is None:
        branch = build_branch("mono", in_channels=len(bands), num_classes=10,
                              backbone="small_cnn", width=2)
        with torch.no_grad():  # sharper probabilities: several classes win across a scene
            branch.head.weight.mul_(8.0)
    info = PredictorInfo(modality, list(bands), list(EUROSAT_CLASSES), list(EUROSAT_COLORS),
                         patch, 10.0, "dB" if modality == "sar" else "dn")
    stats = BandStats("meanstd", list(bands), [0.0] * len(bands), [1.0] * len(bands))
    return Predictor(branch, stats, info).eval()


def write_scene(path: Path, data: np.ndarray, names: list[str] | None, *, crs: str | None = CRS,
                res: float = 10.0, origin: tuple[float, float] = ORIGIN,
                nodata: float | None = np.nan) -> Path:
    count, height, width = data.shape
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=count,
                       dtype=data.dtype, crs=crs, transform=from_origin(*origin, res, res),
                       nodata=nodata) as dst:
        dst.write(data)
        if names:
            dst.descriptions = tuple(names)
    return path


def texture(bands: int, size: int, seed: int) -> np.ndarray:
    """Smooth random fields (regions of different values) so the map has several classes."""
    rng = np.random.default_rng(seed)
    coarse = rng.normal(0, 2, (bands, size // 16 + 2, size // 16 + 2))
    fine = np.kron(coarse, np.ones((16, 16)))[:, :size, :size]
    return (fine + rng.normal(0, 0.3, (bands, size, size))).astype(np.float32)


@pytest.fixture(scope="module")
def sar_scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """160 x 144 px SAR scene with a nodata corner (40 x 48 px)."""
    data = texture(2, 160, seed=1)[:, :, :144]
    data[:, :40, :48] = np.nan
    return write_scene(tmp_path_factory.mktemp("scene") / "sar.tif", data, list(S1_BANDS))


@pytest.fixture(scope="module")
def sar() -> Predictor:
    return make_predictor("sar", list(S1_BANDS))


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


def test_output_is_a_styled_cloud_optimised_geotiff(sar: Predictor, sar_scene: Path,
                                                    tmp_path: Path) -> None:
    out = tmp_path / "map.tif"
    summary = predict_to_file(sar, sar_scene, out, MapSettings.of(chunk_size=64))
    with rasterio.open(sar_scene) as src, rasterio.open(out) as dst:
        assert dst.crs == src.crs and dst.transform == src.transform
        assert (dst.width, dst.height) == (src.width, src.height)
        assert dst.dtypes == ("uint8",) and dst.nodata == CLASS_NODATA
        assert dst.colormap(1)[1] == (*EUROSAT_COLORS[1], 255)
        assert dst.tags()["CLASS_9"] == "SeaLake"
        assert json.loads(dst.tags()["CLASSES"]) == list(EUROSAT_CLASSES)
        assert "0=AnnualCrop" in dst.descriptions[0]
        assert dst.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert dst.profile["tiled"] and dst.compression.name.lower() == "deflate"
        assert dst.overviews(1) == [2]  # 160 px: one halving keeps >= 64 px
        codes = dst.read(1)
    assert (codes[:40, :48] == CLASS_NODATA).all()  # the nodata corner
    assert (codes[40:, 48:] != CLASS_NODATA).all()
    assert len(np.unique(codes[codes != CLASS_NODATA])) >= 2
    hist = summary.histogram
    assert sum(hist.values()) == summary.mapped_pixels == (codes != CLASS_NODATA).sum()
    legend = json.loads(out.with_suffix(".legend.json").read_text())
    assert legend["nodata"] == CLASS_NODATA
    assert legend["classes"][8] == {"value": 8, "name": "River", "color": "#3c82e6"}
    qml = out.with_suffix(".qml").read_text()
    assert qml.count("<paletteEntry") == 10 and 'label="HerbaceousVegetation"' in qml
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map.legend.json", "map.qml",
                                                          "map.stac.json", "map.tif"]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["dense", "windows"])
def test_byte_identical_for_any_chunk_size_and_workers(sar: Predictor, sar_scene: Path,
                                                       tmp_path: Path, mode: str) -> None:
    runs = {"c40w1": {"chunk_size": 40}, "c1024w1": {"chunk_size": 1024},
            "c24w2": {"chunk_size": 24, "workers": 2}}
    for name, kwargs in runs.items():
        settings = MapSettings.of(stride=8, mode=mode, block_size=16, confidence=True,
                                  probabilities=tmp_path / f"{name}.p.tif", **kwargs)
        summary = predict_to_file(sar, sar_scene, tmp_path / f"{name}.tif", settings)
        assert summary.mode == mode and (summary.chunks > 1) == (name != "c1024w1")
    for suffix in (".tif", ".p.tif", ".confidence.tif"):
        first, *others = [(tmp_path / f"{name}{suffix}").read_bytes() for name in runs]
        assert all(other == first for other in others), suffix
    # The map is the argmax of the stored probabilities.
    probs = read(tmp_path / "c40w1.p.tif")
    codes = read(tmp_path / "c40w1.tif")[0]
    valid = codes != CLASS_NODATA
    assert (probs.argmax(axis=0)[valid] == codes[valid]).all()
    assert np.isnan(probs[:, ~valid]).all()


@pytest.mark.slow
def test_same_bytes_on_a_distributed_cluster(sar: Predictor, sar_scene: Path,
                                             tmp_path: Path) -> None:
    from distributed import LocalCluster

    predict_to_file(sar, sar_scene, tmp_path / "local.tif",
                    MapSettings.of(chunk_size=32, mode="dense", block_size=32))
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster:
        summary = predict_to_file(sar, sar_scene, tmp_path / "cluster.tif",
                                  MapSettings.of(chunk_size=64, mode="dense", block_size=32,
                                                 scheduler=cluster.scheduler_address))
    assert summary.chunks == 9
    assert (tmp_path / "cluster.tif").read_bytes() == (tmp_path / "local.tif").read_bytes()


def test_stitched_map_equals_each_window_alone(tmp_path: Path) -> None:
    """Hand-computed 40 x 40 case: patch 16, stride 8, reflect padding of margin 4."""
    predictor = make_predictor("sar", list(S1_BANDS), patch=16)
    data = texture(2, 48, seed=3)[:, :40, :40]
    scene = write_scene(tmp_path / "s.tif", data, list(S1_BANDS))
    padded = np.pad(data, ((0, 0), (4, 4 + 8), (4, 4 + 8)), mode="reflect")
    grid = {(i, j): padded[None, :, 8 * i:8 * i + 16, 8 * j:8 * j + 16]
            for i in range(5) for j in range(5)}
    with torch.no_grad():
        alone = {k: predictor(torch.from_numpy(np.ascontiguousarray(w)))[0].double().numpy()
                 for k, w in grid.items()}
    total = np.zeros((10, 40, 40))
    count = np.zeros((40, 40))
    for (i, j), p in alone.items():  # window (i, j) covers pixels [8i - 4, 8i + 12)
        rows = slice(max(8 * i - 4, 0), min(8 * i + 12, 40))
        cols = slice(max(8 * j - 4, 0), min(8 * j + 12, 40))
        total[:, rows, cols] += p[:, None, None]
        count[rows, cols] += 1
    expected = total / count
    predict_to_file(predictor, scene, tmp_path / "fine.tif",
                    MapSettings.of(stride=8, chunk_size=16, mode="windows",
                                   probabilities=tmp_path / "fine.p.tif"))
    np.testing.assert_allclose(read(tmp_path / "fine.p.tif"), expected, atol=1e-6)
    assert (read(tmp_path / "fine.tif")[0] == expected.argmax(axis=0)).all()
    # Coarse: one pixel per stride cell, holding its window's own probabilities.
    predict_to_file(predictor, scene, tmp_path / "coarse.tif",
                    MapSettings.of(stride=8, coarse=True, mode="windows",
                                   probabilities=tmp_path / "coarse.p.tif"))
    coarse = read(tmp_path / "coarse.p.tif")
    assert coarse.shape == (10, 5, 5)
    np.testing.assert_allclose(coarse[:, 2, 3], alone[2, 3], atol=1e-6)
    with rasterio.open(tmp_path / "coarse.tif") as src:
        assert src.transform == from_origin(*ORIGIN, 80.0, 80.0)


def test_mostly_nodata_windows_are_skipped(sar: Predictor, tmp_path: Path) -> None:
    data = texture(2, 64, seed=4)
    data[:, 10:13, 10:13] = np.nan  # a small hole: windows still classified, hole stays nodata
    data[:, 32:, :] = -9999.0  # bottom half nodata (nodata value, not NaN)
    scene = write_scene(tmp_path / "s.tif", data, list(S1_BANDS), nodata=-9999.0)
    predict_to_file(sar, scene, tmp_path / "m.tif", MapSettings.of(stride=16, coarse=True))
    predict_to_file(sar, scene, tmp_path / "f.tif", MapSettings.of(stride=8))
    coarse, fine = read(tmp_path / "m.tif")[0], read(tmp_path / "f.tif")[0]
    # Coarse cells (stride 16, patch 16): rows 0-1 are valid, rows 2-3 all nodata.
    assert (coarse[:2] != CLASS_NODATA).all() and (coarse[2:] == CLASS_NODATA).all()
    assert (fine[32:] == CLASS_NODATA).all() and (fine[10:13, 10:13] == CLASS_NODATA).all()
    assert (fine[:10] != CLASS_NODATA).all()


@pytest.mark.slow
def test_fused_modalities_on_different_grids(tmp_path: Path) -> None:
    """MS defines the grid; SAR in lon/lat is warped onto it; fusion averages probabilities."""
    ms_pred = make_predictor("ms", MS_BANDS, seed=1)
    sar_pred = make_predictor("sar", list(S1_BANDS), seed=2)
    ms = write_scene(tmp_path / "ms.tif", texture(3, 96, seed=5), MS_BANDS)
    west, south, east, north = transform_bounds(CRS, "EPSG:4326", ORIGIN[0] - 200,
                                                ORIGIN[1] - 1200, ORIGIN[0] + 1200, ORIGIN[1] + 200)
    sar = write_scene(tmp_path / "sar.tif", texture(2, 64, seed=6), list(S1_BANDS),
                      crs="EPSG:4326", origin=(west, north), res=(east - west) / 64)
    predictors = {"ms": ms_pred, "sar": sar_pred}
    scenes = {"ms": ms, "sar": sar}
    for size in (32, 96):
        predict_to_file(predictors, scenes, tmp_path / f"fused{size}.tif",
                        MapSettings.of(chunk_size=size, mode="dense", block_size=32,
                                       probabilities=tmp_path / f"fused{size}.p.tif"))
    assert (tmp_path / "fused32.tif").read_bytes() == (tmp_path / "fused96.tif").read_bytes()
    predict_to_file(ms_pred, ms, tmp_path / "ms_only.tif",
                    MapSettings.of(mode="dense", probabilities=tmp_path / "ms.p.tif"))
    with rasterio.open(tmp_path / "fused32.tif") as fused, rasterio.open(ms) as grid:
        assert fused.transform == grid.transform and fused.shape == (96, 96)
    fused_p, ms_p = read(tmp_path / "fused32.p.tif"), read(tmp_path / "ms.p.tif")
    assert np.isfinite(fused_p).all() and not np.allclose(fused_p, ms_p)


@pytest.mark.slow
def test_generated_scene_pair_fuses_identically_for_any_chunking(tmp_path: Path) -> None:
    """The generator's MS (UTM) / SAR (lon/lat, NaN margins) pair, warped and fused."""
    synthetic = pytest.importorskip("discomkd_geo.data.synthetic")
    from discomkd_geo.constants import S2_BANDS

    synthetic.make_scene(tmp_path / "scene", size=256, seed=0)
    predictors = {"ms": make_predictor("ms", list(S2_BANDS)), "sar": make_predictor(
        "sar", list(S1_BANDS))}
    scenes = {m: tmp_path / "scene" / f"{m}.tif" for m in predictors}
    predict_to_file(predictors, scenes, tmp_path / "a.tif",
                    MapSettings.of(chunk_size=100, mode="dense", block_size=64))
    predict_to_file(predictors, scenes, tmp_path / "b.tif",
                    MapSettings.of(chunk_size=1000, mode="dense", block_size=64, workers=2))
    assert (tmp_path / "a.tif").read_bytes() == (tmp_path / "b.tif").read_bytes()
    with rasterio.open(tmp_path / "a.tif") as out, rasterio.open(scenes["ms"]) as ms:
        assert out.crs == ms.crs and out.transform == ms.transform


def test_linear_sar_converted_to_db_and_band_mapping(sar: Predictor, tmp_path: Path) -> None:
    db = texture(2, 64, seed=7)
    in_db = write_scene(tmp_path / "db.tif", db, list(S1_BANDS))
    # Linear power, bands swapped and unnamed: sar_units and an explicit band list.
    linear = write_scene(tmp_path / "lin.tif", (10.0 ** (db[::-1] / 10.0)).astype(np.float32),
                         None)
    predict_to_file(sar, in_db, tmp_path / "a.tif",
                    MapSettings.of(probabilities=tmp_path / "a.p.tif"))
    predict_to_file(sar, SceneInput(linear, bands=["VH", "VV"], sar_units="linear"),
                    tmp_path / "b.tif", MapSettings.of(probabilities=tmp_path / "b.p.tif"))
    np.testing.assert_allclose(read(tmp_path / "b.p.tif"), read(tmp_path / "a.p.tif"),
                               atol=1e-4)


class Exploding(nn.Module):
    """A branch that fails on its third batch: a run that dies half-way."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.linear = nn.Linear(2, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == 3:
            raise RuntimeError("out of memory (simulated)")
        return self.linear(x.mean(dim=(2, 3)))


def test_failed_run_leaves_no_file_and_keeps_the_old_one(sar_scene: Path, tmp_path: Path) -> None:
    predictor = make_predictor("sar", list(S1_BANDS), branch=Exploding())
    with pytest.raises(RuntimeError, match="simulated"):
        predict_to_file(predictor, sar_scene, tmp_path / "new.tif",
                        MapSettings.of(chunk_size=32, batch_size=4,
                                       probabilities=tmp_path / "new.p.tif"))
    assert list(tmp_path.iterdir()) == []
    old = tmp_path / "old.tif"
    old.write_bytes(b"previous map")
    predictor.branch.calls = 0
    with pytest.raises(RuntimeError, match="simulated"):
        predict_to_file(predictor, sar_scene, old,
                        MapSettings.of(chunk_size=32, batch_size=4, overwrite=True))
    assert old.read_bytes() == b"previous map" and list(tmp_path.iterdir()) == [old]


def test_refuses_to_overwrite(sar: Predictor, sar_scene: Path, tmp_path: Path) -> None:
    old = tmp_path / "map.tif"
    old.write_bytes(b"previous map")
    with pytest.raises(OutputExistsError, match="map.tif: already exists; pass overwrite=True"):
        predict_to_file(sar, sar_scene, old)
    assert old.read_bytes() == b"previous map"
    predict_to_file(sar, sar_scene, old, MapSettings.of(overwrite=True))
    assert read(old).shape == (1, 160, 144)


def test_input_errors_name_the_file(sar: Predictor, tmp_path: Path) -> None:
    data = texture(2, 64, seed=8)
    cases = {
        "names.tif": (write_scene(tmp_path / "names.tif", data, ["HH", "HV"]),
                      r"lacks bands \['VV', 'VH'\]"),
        "count.tif": (write_scene(tmp_path / "count.tif", texture(3, 64, 8), None),
                      "has 3 unnamed of 3 bands, the model reads 2"),
        "nocrs.tif": (write_scene(tmp_path / "nocrs.tif", data, list(S1_BANDS), crs=None),
                      "has no georeferencing"),
    }
    junk = tmp_path / "junk.tif"
    junk.write_bytes(b"not a raster at all")
    cases["junk.tif"] = (junk, "cannot read raster")
    cases["missing.tif"] = (tmp_path / "missing.tif", "no such file")
    (tmp_path / "out").mkdir()  # outputs go into existing directories only
    for name, (path, problem) in cases.items():
        with pytest.raises(InputFileError, match=problem) as err:
            predict_to_file(sar, path, tmp_path / "out" / name)
        assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)
    far = write_scene(tmp_path / "far.tif", data, list(S1_BANDS), origin=(600000.0, ORIGIN[1]))
    ms = write_scene(tmp_path / "ms.tif", texture(3, 64, 9), MS_BANDS)
    with pytest.raises(InputFileError, match=f"^{far}: does not overlap {ms}$"):
        predict_to_file({"ms": make_predictor("ms", MS_BANDS), "sar": sar},
                        {"ms": ms, "sar": far}, tmp_path / "out" / "fused.tif")
    assert not any((tmp_path / "out").iterdir())


@pytest.mark.slow
def test_lazy_result_matches_the_file(sar: Predictor, sar_scene: Path, tmp_path: Path) -> None:
    lazy = predict_lazy(sar, sar_scene, MapSettings.of(chunk_size=64))
    assert lazy.chunks == ((64, 64, 32), (64, 64, 16))
    out = tmp_path / "map.tif"
    predict_to_file(sar, sar_scene, out)
    with rasterio.open(out) as src:
        assert lazy.rio.crs == src.crs and lazy.rio.transform() == src.transform
        assert (lazy.compute(scheduler="threads").values == src.read(1)).all()
    probs = predict_lazy(sar, sar_scene, what="probabilities")
    assert probs.dims == ("band", "y", "x") and list(probs.band.values) == list(EUROSAT_CLASSES)


def saved_sar_model(path: Path) -> Path:
    """An untrained small-CNN SAR predictor saved as a file ``predict --checkpoint`` takes."""
    spec = {"kind": "mono", "in_channels": 2, "num_classes": 10, "backbone": "small_cnn",
            "width": 8}
    predictor = make_predictor("sar", list(S1_BANDS), branch=build_branch(**spec))
    predictor.info.branch_spec = spec
    predictor.save(path)
    return path


@pytest.mark.slow
def test_cli_predict_end_to_end(sar_scene: Path, tmp_path: Path) -> None:
    model = saved_sar_model(tmp_path / "sar.pt")
    out = tmp_path / "cli.tif"
    args = ["predict", "--checkpoint", str(model), "--sar", str(sar_scene), "-o", str(out),
            "--stride", "8", "--chunk-size", "64", "--workers", "2", "--confidence"]
    result = CliRunner().invoke(main, [*args, "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["pixels"] == 160 * 144 and summary["stride"] == 8
    assert read(out).shape == (1, 160, 144) and out.with_suffix(".confidence.tif").exists()
    assert summary["mode"] == "windows"
    dense = CliRunner().invoke(main, [*args, "--mode", "dense", "--overwrite", "--json"])
    assert dense.exit_code == 0 and json.loads(dense.output)["mode"] == "dense"
    # The same command as `rio discomkd predict` (entry point), with the human summary.
    from rasterio.rio.main import main_group

    result = CliRunner().invoke(main_group, ["discomkd", *args, "--overwrite", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "px/s" in result.output and "(nodata)" in result.output
    # One-line errors: existing output, wrong bands.
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1 and result.output.strip().endswith("pass --overwrite to "
                                                                     "replace it")
    result = CliRunner().invoke(main, [*args[:4], str(tmp_path / "nope.tif"), *args[5:],
                                       "--overwrite"])
    assert result.exit_code == 1 and "nope.tif: no such file" in result.output
    result = CliRunner().invoke(main, [*args, "--overwrite", "--stride", "40"])
    assert result.exit_code == 1 and "stride 40 does not fit" in result.output


def test_cli_settings_options_match_the_api(sar: Predictor, sar_scene: Path,
                                            tmp_path: Path) -> None:
    """Options that were Python-only reach the engine from the command line, unchanged."""
    model = saved_sar_model(tmp_path / "sar.pt")
    loaded = Predictor.load(model)
    values = {"pad": "constant", "min_valid": 0.9, "batch_size": 4, "device": "cpu",
              "threads": 1, "stride": 8}
    flags = ["--pad", "constant", "--min-valid", "0.9", "--batch-size", "4", "--device", "cpu",
             "--threads", "1", "--stride", "8"]
    result = CliRunner().invoke(main, ["predict", "--checkpoint", str(model), "--sar",
                                       str(sar_scene), "-o", str(tmp_path / "cli.tif"), *flags,
                                       "--json"])
    assert result.exit_code == 0, result.output
    api = predict_to_file(loaded, sar_scene, tmp_path / "api.tif", MapSettings.of(**values))
    assert (tmp_path / "cli.tif").read_bytes() == (tmp_path / "api.tif").read_bytes()
    assert json.loads(result.output)["mapped_pixels"] == api.mapped_pixels
    # min_valid acts: the default maps more of the nodata corner's edge.
    default = predict_to_file(loaded, sar_scene, tmp_path / "default.tif",
                              MapSettings.of(stride=8))
    assert default.mapped_pixels > api.mapped_pixels
