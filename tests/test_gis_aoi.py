"""Areas of interest: only the chunks that touch the area are read and classified."""

import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
from rasterio.windows import Window
from shapely.geometry import box
from test_inference import (
    CRS,
    ORIGIN,
    make_predictor,
    read,
    saved_sar_model,
    texture,
    write_scene,
)

from discomkd_geo.constants import CLASS_NODATA, S1_BANDS
from discomkd_geo.errors import InputFileError
from discomkd_geo.inference import engine, io
from discomkd_geo.inference.engine import predict_lazy, predict_to_file
from discomkd_geo.inference.settings import MapSettings

X0, Y0 = ORIGIN
SIZE = 192
#: 64 px chunks: the 192 px scene is 3 x 3 chunks.
TILES = MapSettings.of(stride=8, chunk_size=64)


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """192 x 192 px SAR scene at 10 m on EPSG:32631."""
    path = tmp_path_factory.mktemp("aoi") / "sar.tif"
    return write_scene(path, texture(2, SIZE, seed=3), list(S1_BANDS))


def aoi_file(path: Path, geometry: object, crs: str = CRS, layer: str = "aoi") -> Path:
    gpd.GeoDataFrame({"name": ["a"]}, geometry=[geometry], crs=crs).to_file(path, layer=layer)
    return path


#: The south-east quarter of the scene's north-west quarter-ish: rows/cols 20-70.
AREA = box(X0 + 200, Y0 - 700, X0 + 700, Y0 - 200)


def test_outside_is_nodata_inside_is_the_whole_map(scene: Path, tmp_path: Path) -> None:
    model = make_predictor("sar", list(S1_BANDS))
    predict_to_file(model, scene, tmp_path / "whole.tif", TILES)
    # The area given in WGS 84: reprojected to the scene's CRS.
    spec = aoi_file(tmp_path / "aoi.geojson", gpd.GeoSeries([AREA], crs=CRS)
                    .to_crs("EPSG:4326").iloc[0], crs="EPSG:4326")
    summary = predict_to_file(model, scene, tmp_path / "aoi.tif", TILES.replace(aoi=spec))
    whole, part = read(tmp_path / "whole.tif")[0], read(tmp_path / "aoi.tif")[0]
    inside = np.zeros_like(whole, dtype=bool)
    inside[20:70, 20:70] = True  # pixel centres inside AREA
    assert (part[~inside] == CLASS_NODATA).all()
    assert (part[inside] == whole[inside]).all() and (part[inside] != CLASS_NODATA).all()
    assert summary.mapped_pixels == 50 * 50
    assert summary.computed_chunks == 4 < summary.chunks == 9  # 64 px chunks
    # Dense mode computes whole blocks that touch the area: the same values inside.
    dense = TILES.replace(mode="dense", block_size=32)
    predict_to_file(model, scene, tmp_path / "dense.tif", dense)
    predict_to_file(model, scene, tmp_path / "dense_aoi.tif", dense.replace(aoi=spec))
    whole, part = read(tmp_path / "dense.tif")[0], read(tmp_path / "dense_aoi.tif")[0]
    assert (part[inside] == whole[inside]).all() and (part[~inside] == CLASS_NODATA).all()


def test_chunks_away_from_the_area_are_never_read(scene: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[Window] = []
    original = io.RasterReader.read_raw_windows

    def spy(self: io.RasterReader, windows: Iterable[Window]
            ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        windows = list(windows)
        reads.extend(windows)
        return original(self, windows)

    # Every read goes through it: the map's blocks (read_raw) and the checks' sample.
    monkeypatch.setattr(io.RasterReader, "read_raw_windows", spy)
    corner = aoi_file(tmp_path / "corner.gpkg", box(X0, Y0 - 300, X0 + 300, Y0))  # 30 px
    model = make_predictor("sar", list(S1_BANDS))
    summary = predict_to_file(model, scene, tmp_path / "aoi.tif", TILES.replace(aoi=corner))
    assert summary.computed_chunks == 1 and summary.mapped_pixels == 30 * 30
    # Every read (statistics sample included) stays within the first chunk's windows and
    # their fill radius: the other 8 chunks are never read.
    reach = 64 + 16 + engine.FILL_RADIUS
    assert reads and all(w.col_off + w.width <= reach and w.row_off + w.height <= reach
                         for w in reads)


def test_lazy_map_with_an_area(scene: Path, tmp_path: Path) -> None:
    model = make_predictor("sar", list(S1_BANDS))
    spec = aoi_file(tmp_path / "aoi.gpkg", AREA)
    lazy = predict_lazy(model, scene, TILES.replace(aoi=spec)).compute()
    predict_to_file(model, scene, tmp_path / "aoi.tif", TILES.replace(aoi=spec))
    assert (lazy.values == read(tmp_path / "aoi.tif")[0]).all()


def test_area_errors(scene: Path, tmp_path: Path) -> None:
    model = make_predictor("sar", list(S1_BANDS))
    spec = aoi_file(tmp_path / "zones.gpkg", AREA, layer="district")
    aoi_file(tmp_path / "zones.gpkg", AREA, layer="other")
    gpd.GeoDataFrame(geometry=[], crs=CRS).to_file(tmp_path / "empty.gpkg")
    far = aoi_file(tmp_path / "far.gpkg", box(X0 + 1e5, Y0, X0 + 1e5 + 500, Y0 + 500))
    errors = {f"{spec}:roads": "has no layer 'roads'", spec: "has 2 layers",
              tmp_path / "empty.gpkg": "is empty", far: "does not overlap the scene"}
    for value, message in errors.items():
        with pytest.raises(InputFileError, match=message):
            predict_to_file(model, scene, tmp_path / "m.tif", MapSettings.of(aoi=value))
        assert not (tmp_path / "m.tif").exists()


def cli(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "discomkd_geo", *map(str, args)],
                          capture_output=True, text=True)


@pytest.mark.slow  # CLI subprocesses or a Dask cluster: seconds each
def test_cli_aoi_and_vector(scene: Path, tmp_path: Path) -> None:
    model = saved_sar_model(tmp_path / "sar.pt")
    spec = aoi_file(tmp_path / "zones.gpkg", AREA, layer="district")
    aoi_file(tmp_path / "zones.gpkg", AREA, layer="other")
    base = ["predict", "--checkpoint", model, "--sar", scene, "--stride", "16"]
    result = cli(*base, "-o", tmp_path / "map.tif", "--aoi", f"{spec}:district",
                 "--vector", tmp_path / "polygons.gpkg", "--mmu", "0.1ha")
    assert result.returncode == 0, result.stderr
    assert f"polygons: {tmp_path / 'polygons.gpkg'}" in result.stdout
    polygons = gpd.read_file(tmp_path / "polygons.gpkg", layer="polygons")
    assert polygons["area_m2"].sum() == pytest.approx(50 * 50 * 100)
    assert (polygons["area_m2"] >= 1000).all() and (tmp_path / "polygons.qml").exists()
    # One-line errors, nothing written: a missing layer; the raster's and the polygons'
    # styles at one path (refused before any work).
    result = cli(*base, "-o", tmp_path / "m.tif", "--aoi", f"{spec}:roads")
    assert result.returncode != 0 and "has no layer 'roads'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    result = cli(*base, "-o", tmp_path / "m.tif", "--vector", tmp_path / "m.gpkg")
    assert result.returncode != 0 and "give each its own path" in result.stderr
    assert not (tmp_path / "m.tif").exists()


def test_polygon_outputs_are_checked_before_the_map_and_may_be_shapefiles(
        scene: Path, tmp_path: Path) -> None:
    """An unknown vector format, and a minimum mapping unit larger than the scene, were
    refused once the map was written (and left it there); a Shapefile is written whole."""
    from discomkd_geo.errors import OutputError

    model = make_predictor("sar", list(S1_BANDS))
    with pytest.raises(OutputError, match=r"p.shx: unknown vector format .shx; use .gpkg, "
                                          r".geojson, .fgb or .shp$"):
        predict_to_file(model, scene, tmp_path / "m.tif", TILES.replace(vector=tmp_path /
                                                                         "p.shx"))
    with pytest.raises(InputFileError, match=rf"{scene}: is smaller \(36,864 px\) than the "
                                             r"minimum mapping unit \(40,000 px\)$"):
        predict_to_file(model, scene, tmp_path / "m.tif", TILES.replace(
            vector=tmp_path / "p.gpkg", mmu="400ha"))
    assert list(tmp_path.iterdir()) == []
    summary = predict_to_file(model, scene, tmp_path / "m.tif", TILES.replace(
        vector=tmp_path / "p.shp", mmu="0.1ha"))
    polygons = gpd.read_file(tmp_path / "p.shp")
    assert summary.vector == str(tmp_path / "p.shp") and polygons.crs == CRS
    assert list(polygons.columns) == ["class_code", "class_name", "color", "area_m2",
                                      "area_ha", "geometry"]
    assert polygons["area_m2"].sum() == pytest.approx(SIZE * SIZE * 100)
    assert sorted(p.name for p in tmp_path.iterdir() if p.stem == "p") == [
        "p.cpg", "p.dbf", "p.prj", "p.qml", "p.shp", "p.shx"]


def test_an_area_drawn_across_the_antimeridian_is_warned_of(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """179 -> -179 in longitudes reads as -179..179: say so; split at 180, no warning."""
    from shapely.geometry import MultiPolygon, Polygon

    from discomkd_geo.inference.aoi import read_aoi

    across = Polygon([(179, -17), (-179, -17), (-179, -16), (179, -16)])
    split = MultiPolygon([box(179, -17, 180, -16), box(-180, -17, -179, -16)])
    with caplog.at_level("WARNING", logger="discomkd_geo"):
        read_aoi(aoi_file(tmp_path / "split.gpkg", split, crs="EPSG:4326"))
        assert caplog.messages == []
        read_aoi(aoi_file(tmp_path / "across.gpkg", across, crs="EPSG:4326"))
    assert caplog.messages == [f"{tmp_path / 'across.gpkg'}: a polygon of the area of interest "
                               "spans longitudes -179 to 179 (358 degrees), read the long way "
                               "round; if it crosses the antimeridian, split it at 180 degrees"]


def test_read_aoi_needs_polygons(tmp_path: Path) -> None:
    from shapely.geometry import Point

    from discomkd_geo.inference.aoi import read_aoi

    path = aoi_file(tmp_path / "points.gpkg", Point(X0, Y0))
    with pytest.raises(InputFileError, match="holds no polygon"):
        read_aoi(path)
