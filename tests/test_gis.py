"""GIS chains: polygons from a map (vectorize) and class areas per zone (zonal)."""

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from pyproj import Geod
from rasterio.transform import from_origin
from shapely.geometry import box

from discomkd_geo.errors import InputFileError, OutputExistsError
from discomkd_geo.inference.settings import parse_area
from discomkd_geo.inference.vector_input import read_layer, split_layer
from discomkd_geo.inference.vectorize import vectorize, vectorize_to_file
from discomkd_geo.inference.zonal import zonal_areas, zonal_to_file

CLASSES = ["A", "B", "C"]
COLORS = ["#ff0000", "#00ff00", "#0000ff"]
UTM = "EPSG:32631"
X0, Y0 = 500000.0, 4000040.0


def write_map(path: Path, codes: np.ndarray, crs: str = UTM,
              transform: rasterio.Affine | None = None) -> Path:
    """A class map as predict writes it: uint8, nodata 255, CLASSES/CLASS_COLORS tags."""
    transform = transform or from_origin(X0, Y0, 10, 10)
    with rasterio.open(path, "w", driver="GTiff", width=codes.shape[1], height=codes.shape[0],
                       count=1, dtype="uint8", crs=crs, transform=transform, nodata=255) as dst:
        dst.write(codes.astype(np.uint8), 1)
        dst.update_tags(CLASSES=json.dumps(CLASSES), CLASS_COLORS=json.dumps(COLORS))
    return path


#: 4 x 4 px of 10 m: A top-left, B top-right, C bottom-left, nodata bottom-right.
QUADRANTS = np.array([[0, 0, 1, 1],
                      [0, 0, 1, 1],
                      [2, 2, 255, 255],
                      [2, 2, 255, 255]])


def cli(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "discomkd_geo", *map(str, args)],
                          capture_output=True, text=True)


# --------------------------------------------------------------------------- vectorize
def test_vectorize_one_feature_per_region(tmp_path: Path) -> None:
    frame = vectorize(write_map(tmp_path / "map.tif", QUADRANTS))
    assert frame.crs == UTM
    assert sorted(frame["class_name"]) == CLASSES  # nodata left out
    colors = frame.set_index("class_name")["color"].to_dict()
    assert colors == dict(zip(CLASSES, COLORS, strict=True))
    assert np.allclose(frame["area_m2"], 400) and np.allclose(frame["area_ha"], 0.04)
    assert frame.is_valid.all()
    a = frame[frame["class_name"] == "A"].geometry.iloc[0]
    assert a.equals(box(X0, Y0 - 20, X0 + 20, Y0))


def test_mmu_merges_small_regions_and_drops_islands(tmp_path: Path) -> None:
    codes = np.zeros((8, 8), dtype=np.uint8)
    codes[2, 2] = 1                  # one B pixel inside A: merged into A
    codes[:, 6:] = 255               # nodata strip ...
    codes[4, 7] = 2                  # ... with a C pixel island: nothing to merge into
    path = write_map(tmp_path / "map.tif", codes)
    raw = vectorize(path)
    assert sorted(raw["class_name"]) == ["A", "B", "C"]
    sieved = vectorize(path, mmu=parse_area("150m2"))  # 2 px
    assert list(sieved["class_name"]) == ["A"]
    assert sieved["area_m2"].iloc[0] == pytest.approx(8 * 6 * 100)
    assert len(vectorize(path, mmu=100.0)) == 3  # one pixel already is the MMU


def test_parse_area() -> None:
    assert parse_area("0.5ha") == 5000
    assert parse_area("5000m2") == parse_area("5000") == parse_area(" 5e3 M2") == 5000
    assert parse_area("2km2") == 2e6
    with pytest.raises(ValueError, match="not an area"):
        parse_area("half a hectare")


def test_geographic_map_areas_are_geodesic(tmp_path: Path) -> None:
    """On EPSG:4326 areas are m2 on an equal-area projection, not square degrees."""
    codes = np.zeros((50, 50), dtype=np.uint8)
    codes[:, 25:] = 1
    path = write_map(tmp_path / "geo.tif", codes, crs="EPSG:4326",
                     transform=from_origin(10.0, 60.0, 1e-4, 1e-4))
    frame = vectorize(path)
    geod = Geod(ellps="WGS84")
    for geometry, area in zip(frame.geometry, frame["area_m2"], strict=True):
        expected = abs(geod.geometry_area_perimeter(geometry)[0])
        assert area == pytest.approx(expected, rel=1e-4)
    # at 60 N a 1e-4 degree pixel is about 5.6 m x 11.1 m
    assert frame["area_m2"].sum() == pytest.approx(2500 * 5.58 * 11.13, rel=0.01)


def test_vectorize_to_file_writes_gpkg_and_style(tmp_path: Path, scene_dir: Path) -> None:
    out = tmp_path / "polygons.gpkg"
    frame = vectorize_to_file(scene_dir / "truth.tif", out, layer="landcover")
    back = gpd.read_file(out, layer="landcover")
    assert len(back) == len(frame) > 3
    with rasterio.open(scene_dir / "truth.tif") as src:
        truth = src.read(1)
        assert back.crs == src.crs
    assert back["area_m2"].sum() == pytest.approx((truth != 255).sum() * 100)
    assert set(back["class_code"]) == set(np.unique(truth[truth != 255]).tolist())
    style = out.with_suffix(".qml").read_text()
    assert 'type="categorizedSymbol" attr="class_code"' in style
    with rasterio.open(scene_dir / "truth.tif") as src:
        r, g, b, _ = src.colormap(1)[int(back["class_code"].iloc[0])]
    assert f'value="{r},{g},{b},255"' in style
    assert sorted(p.name for p in tmp_path.iterdir()) == ["polygons.gpkg", "polygons.qml"]
    with sqlite3.connect(out) as db:  # the default style QGIS loads with the layer
        rows = db.execute("SELECT f_table_name, f_geometry_column, styleQML, useAsDefault "
                          "FROM layer_styles").fetchall()
    assert rows == [("landcover", "geom", style, 1)]
    assert len(read_layer(out)) == len(frame)  # the style table is no second layer
    with pytest.raises(OutputExistsError):
        vectorize_to_file(scene_dir / "truth.tif", out)


@pytest.mark.slow  # CLI subprocesses or a Dask cluster: seconds each
def test_vectorize_cli_errors(tmp_path: Path) -> None:
    result = cli("vectorize", tmp_path / "missing.tif", "-o", tmp_path / "p.gpkg")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith(f"Error: {tmp_path / 'missing.tif'}")
    empty = np.full((4, 4), 255)
    result = cli("vectorize", write_map(tmp_path / "empty.tif", empty), "-o", tmp_path / "p.gpkg")
    assert "holds no mapped pixel" in result.stderr and not (tmp_path / "p.gpkg").exists()
    result = cli("vectorize", write_map(tmp_path / "m.tif", QUADRANTS), "-o", tmp_path / "p.gpkg",
                 "--mmu", "lots")
    assert result.returncode == 2 and "not an area" in result.stderr
    result = cli("vectorize", tmp_path / "m.tif", "-o", tmp_path / "p.gpkg", "--mmu", "0.5ha")
    assert "is smaller (16 px) than the minimum mapping unit (50 px)" in result.stderr
    result = cli("vectorize", tmp_path / "m.tif", "-o", tmp_path / "p.gpkg", "--mmu", "300m2")
    assert result.returncode == 0, result.stderr
    assert "3 polygons, 0.12 ha" in result.stdout
    result = cli("vectorize", tmp_path / "m.tif", "-o", tmp_path / "p.gpkg")
    assert result.returncode != 0 and "already exists" in result.stderr


# --------------------------------------------------------------------------- zonal
def zones_frame() -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame(
        {"name": ["west", "east"]},
        geometry=[box(X0, Y0 - 40, X0 + 20, Y0),           # columns 0-1, every row
                  box(X0 + 12, Y0 - 28, X0 + 60, Y0)],     # cols 1-3 + 2 beyond, rows 0-2
        crs=UTM)


def test_zonal_matches_hand_computation(tmp_path: Path) -> None:
    """Centre rule on the 4 x 4 map, counted by hand.

    west: pixel centres x 5, 15 (m from the origin) x all 4 rows: A 4 px, C 4 px.
    east: centres x 15, 25, 35 inside the map and 45, 55 beyond it; y rows 0-2.
    Inside: row 0 = A B B, row 1 = A B B, row 2 = C nodata nodata -> A 2, B 4, C 1,
    nodata 2; outside: 3 rows x 2 columns = 6. Total 15 px of 100 m2.
    """
    table = zonal_areas(write_map(tmp_path / "map.tif", QUADRANTS), zones_frame())
    west, east = table.iloc[0], table.iloc[1]
    assert west["name"] == "west" and west["pixels"] == 8
    assert (west["A_ha"], west["B_ha"], west["C_ha"]) == pytest.approx((0.04, 0, 0.04))
    assert (west["A_pct"], west["C_pct"], west["nodata_pct"]) == pytest.approx((50, 50, 0))
    assert west["zone_ha"] == pytest.approx(0.08)
    assert east["pixels"] == 15
    expected = {"A": 2, "B": 4, "C": 1, "nodata": 2, "outside": 6}
    for name, pixels in expected.items():
        assert east[f"{name}_ha"] == pytest.approx(pixels * 100 / 1e4), name
        assert east[f"{name}_pct"] == pytest.approx(100 * pixels / 15), name
    assert east["zone_ha"] == pytest.approx(48 * 28 / 1e4)


def test_zonal_repairs_a_self_intersecting_zone(tmp_path: Path) -> None:
    """A bow-tie over the 4 x 4 map: two triangles of 40 x 20 m meeting in the middle.

    Its ring's signed area is 0; repaired (as ``--aoi`` repairs it), 800 m2. The centre
    rule counts 8 px of 100 m2, repaired or not: column 0, and rows 1-2 of columns 1 and 3.
    """
    from shapely.geometry import Polygon

    bowtie = Polygon([(X0, Y0), (X0 + 40, Y0 - 40), (X0 + 40, Y0), (X0, Y0 - 40)])
    assert not bowtie.is_valid and bowtie.area == 0
    zones = gpd.GeoDataFrame({"name": ["bow-tie"]}, geometry=[bowtie], crs=UTM)
    table = zonal_areas(write_map(tmp_path / "map.tif", QUADRANTS), zones)
    row = table.iloc[0]
    assert row["zone_ha"] == pytest.approx(0.08) and row["pixels"] == 8
    assert table.geometry.iloc[0].equals(bowtie)  # the zones as given


def test_zonal_zones_in_another_crs(tmp_path: Path) -> None:
    path = write_map(tmp_path / "map.tif", QUADRANTS)
    utm = zonal_areas(path, zones_frame())
    wgs84 = zonal_areas(path, zones_frame().to_crs("EPSG:4326"))
    assert wgs84.crs == "EPSG:4326"  # the zones come back in their own CRS
    numbers = [c for c in utm.columns if c not in ("name", "geometry")]
    np.testing.assert_allclose(wgs84[numbers].to_numpy(float), utm[numbers].to_numpy(float),
                               rtol=1e-6)


def test_zonal_geographic_map(tmp_path: Path) -> None:
    """On a geographic map each pixel weighs its own (equal-area) surface."""
    codes = np.zeros((100, 10), dtype=np.uint8)
    codes[50:] = 1  # B in the southern half
    path = write_map(tmp_path / "geo.tif", codes, crs="EPSG:4326",
                     transform=from_origin(10.0, 61.0, 0.01, 0.01))
    zone = gpd.GeoDataFrame(geometry=[box(10.0, 60.0, 10.1, 61.0)], crs="EPSG:4326")
    row = zonal_areas(path, zone).iloc[0]
    geod = Geod(ellps="WGS84")
    north = abs(geod.geometry_area_perimeter(box(10.0, 60.5, 10.1, 61.0))[0])
    south = abs(geod.geometry_area_perimeter(box(10.0, 60.0, 10.1, 60.5))[0])
    assert row["A_ha"] == pytest.approx(north / 1e4, rel=1e-3)
    assert row["B_ha"] == pytest.approx(south / 1e4, rel=1e-3)
    assert row["B_pct"] > 50  # the southern half is larger


def test_zonal_to_file_csv_and_gpkg(tmp_path: Path, scene_dir: Path) -> None:
    regions = scene_dir / "regions.gpkg"
    csv = zonal_to_file(scene_dir / "truth.tif", str(regions), tmp_path / "areas.csv")
    back = __import__("pandas").read_csv(tmp_path / "areas.csv")
    assert list(back.columns) == list(csv.columns) and "geometry" not in back.columns
    # each synthetic region is one class: ~100% of its counted pixels are its own class
    for _, row in back.iterrows():
        assert row[f"{row['class_name']}_pct"] > 99
    zonal_to_file(scene_dir / "truth.tif", read_layer(regions), tmp_path / "areas.gpkg")
    layer = gpd.read_file(tmp_path / "areas.gpkg")
    assert len(layer) == len(back) and layer.crs == gpd.read_file(regions).crs


def test_split_layer() -> None:
    assert split_layer("zones.gpkg:districts") == ("zones.gpkg", "districts")
    assert split_layer("zones.gpkg") == ("zones.gpkg", None)
    assert split_layer(r"C:\data\zones.gpkg") == (r"C:\data\zones.gpkg", None)
    assert split_layer(r"C:\data\zones.gpkg:districts") == (r"C:\data\zones.gpkg", "districts")
    url = "/vsicurl/https://example.org/zones.gpkg"
    assert split_layer(url) == (url, None)
    assert split_layer(url + ":districts") == (url, "districts")


def test_read_layer_errors(tmp_path: Path) -> None:
    path = tmp_path / "zones.gpkg"
    zones_frame().to_file(path, layer="a")
    zones_frame().to_file(path, layer="b")
    with pytest.raises(InputFileError, match="has 2 layers"):
        read_layer(path)
    with pytest.raises(InputFileError, match="has no layer 'c'"):
        read_layer(f"{path}:c")
    assert len(read_layer(f"{path}:b")) == 2
    zones_frame().iloc[:0].to_file(tmp_path / "empty.gpkg")
    with pytest.raises(InputFileError, match="is empty"):
        read_layer(tmp_path / "empty.gpkg")
    with pytest.raises(InputFileError, match="no such file"):
        read_layer(tmp_path / "none.gpkg")


@pytest.mark.slow  # CLI subprocesses or a Dask cluster: seconds each
def test_zonal_cli(tmp_path: Path) -> None:
    path = write_map(tmp_path / "map.tif", QUADRANTS)
    zones_frame().to_file(tmp_path / "zones.gpkg", layer="districts")
    out = tmp_path / "areas.csv"
    result = cli("zonal", path, f"{tmp_path / 'zones.gpkg'}:districts", "-o", out)
    assert result.returncode == 0, result.stderr
    assert "2 zones" in result.stdout and out.exists()
    result = cli("zonal", path, f"{tmp_path / 'zones.gpkg'}:roads", "-o", tmp_path / "b.csv")
    assert result.returncode != 0 and "has no layer 'roads'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    result = cli("zonal", path, tmp_path / "zones.gpkg", "-o", out)
    assert result.returncode != 0 and "already exists" in result.stderr
    result = cli("zonal", path, tmp_path / "zones.gpkg", "-o", tmp_path / "areas.xlsx")
    assert result.returncode != 0 and ".csv or .gpkg" in result.stderr


def test_vector_settings() -> None:
    from discomkd_geo.errors import SettingsError
    from discomkd_geo.inference.settings import MapSettings

    settings = MapSettings.of(vector=Path("p.gpkg"), mmu="0.5ha", aoi=Path("/d/z.gpkg"))
    assert settings.outputs.mmu == 5000.0 and settings.tiling.aoi == "/d/z.gpkg"
    assert MapSettings.of(aoi="/vsicurl/https://h/z.gpkg:l").tiling.aoi.count("//") == 1
    with pytest.raises(SettingsError, match="mmu: applies to the polygons"):
        MapSettings.of(mmu=5000.0)
    with pytest.raises(SettingsError, match="mmu: 'big' is not an area"):
        MapSettings.of(vector="p.gpkg", mmu="big")
    with pytest.raises(SettingsError, match="mmu: must be at least 0"):
        MapSettings.of(vector="p.gpkg", mmu=-1.0)


def test_areas_of_a_crs_in_feet_are_square_metres(tmp_path: Path) -> None:
    """EPSG:2263 (New York, US survey feet): a 10 ft pixel is 9.29 m2."""
    path = write_map(tmp_path / "feet.tif", QUADRANTS, crs="EPSG:2263",
                     transform=from_origin(1e6, 2e5, 10, 10))
    frame = vectorize(path)
    assert frame["area_m2"].to_numpy() == pytest.approx(4 * (10 * 1200 / 3937) ** 2)
    table = zonal_areas(path, gpd.GeoDataFrame(geometry=[box(1e6, 2e5 - 40, 1e6 + 40, 2e5)],
                                               crs="EPSG:2263"))
    assert table["A_ha"].iloc[0] == pytest.approx(4 * (10 * 1200 / 3937) ** 2 / 1e4)
