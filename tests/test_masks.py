"""Clouds in the simulator, and masks in: SCL, Fmask, 0/1 and s2cloudless masks.

Every raster here is SYNTHETIC: scenes from ``make_scene`` (with ``cloud_cover``) and
masks written with rasterio in the layouts of the real products (an L2A ``.SAFE`` with
its ``SCL_20m`` raster, Fmask codes, 0/1 masks, a STAC Item with an ``scl`` asset).
"""

import hashlib
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from rasterio.enums import Resampling
from rasterio.warp import reproject
from test_inference import ORIGIN, make_predictor, read, saved_sar_model, texture, write_scene

from discomkd_geo.cli import main
from discomkd_geo.constants import CLASS_NODATA, S1_BANDS, S2_BANDS
from discomkd_geo.data.synthetic import CLOUD_FILES, SCL, make_scene
from discomkd_geo.errors import InputFileError, SettingsError
from discomkd_geo.inference.engine import predict_to_file
from discomkd_geo.inference.fusion import FUSED, SOURCE_CODES
from discomkd_geo.inference.io import Grid, SceneInput, open_readers
from discomkd_geo.inference.masks import DETECTOR_BANDS, MaskReader, read_on_grid
from discomkd_geo.inference.settings import MapSettings
from discomkd_geo.inference.stac import read_item
from discomkd_geo.inference.tiling import chunk_layout
from discomkd_geo.models.branches import build_branch

MS4 = ["B02", "B03", "B04", "B08"]
#: sha256 of the pixels of make_scene(size=64, seed=0) before clouds existed.
CLEAR_PIXELS = {
    "ms.tif": "3f67fa080c5a4ae2a08c396d17c6265002fdf555854b216ba0bd0ab5c4ce5504",
    "sar.tif": "ca7dcf424a9f84098e1f86ac91a3afbf04c0fd0d8c73ea84e0e1c5b87a4ebd9b",
    "truth.tif": "7b5a3343c4759045cbcc64c93f4b8b1bbe47c5ec00eb6736b9df3c1afe752dc7",
}


def band(ms: np.ndarray, name: str) -> np.ndarray:
    """One band of a 13-band scene as top-of-atmosphere reflectance."""
    return ms[S2_BANDS.index(name)] / 10_000


@pytest.fixture(scope="module")
def cloudy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 160 px scene under 40% cloud cover, and its clear twin beside it."""
    root = tmp_path_factory.mktemp("cloudy")
    make_scene(root / "clear", size=160, seed=4)
    make_scene(root / "cloudy", size=160, seed=4, cloud_cover=0.4)
    return root / "cloudy"


# --------------------------------------------------------------------------- simulator
def test_cloud_cover_zero_is_the_clear_scene_of_before(tmp_path: Path) -> None:
    make_scene(tmp_path / "s", size=64, seed=0, cloud_cover=0.0)
    for name, digest in CLEAR_PIXELS.items():
        assert hashlib.sha256(read(tmp_path / "s" / name).tobytes()).hexdigest() == digest
    assert not any((tmp_path / "s" / f).exists() for f in [*CLOUD_FILES, "scl.tif"])
    with pytest.raises(ValueError, match="cloud_cover"):
        make_scene(tmp_path / "x", size=64, cloud_cover=1.5)


def test_clouds_masks_and_scl_agree_with_what_was_rendered(cloudy: Path) -> None:
    ms = read(cloudy / "ms.tif").astype(np.float64)
    masks = {f.removesuffix(".tif"): read(cloudy / f)[0].astype(bool) for f in CLOUD_FILES}
    scl = read(cloudy / "scl.tif")[0]
    valid = (ms > 0).all(axis=0)
    cloud, cirrus, shadow = masks["cloud"], masks["cirrus"], masks["shadow"]
    clear = valid & ~cloud & ~cirrus & ~shadow
    # Each pixel in at most one mask; the SCL says the same, with surface codes elsewhere.
    assert not (cloud & cirrus).any() and not (shadow & (cloud | cirrus)).any()
    assert (np.isin(scl, [SCL["cloud"], SCL["opaque"]]) == (cloud & valid)).all()
    assert ((scl == SCL["cirrus"]) == (cirrus & valid)).all()
    assert ((scl == SCL["shadow"]) == (shadow & valid)).all()
    assert (scl[~valid] == SCL["no_data"]).all()
    assert set(np.unique(scl[clear])) <= {SCL["vegetation"], SCL["not_vegetated"], SCL["water"]}
    assert abs((cloud | cirrus)[valid].mean() - 0.4) < 0.05
    # Thick clouds: bright and nearly flat across the VNIR.
    vnir = np.stack([band(ms, b) for b in ("B02", "B03", "B04", "B08")])
    assert np.median(vnir[:, cloud].mean(0)) > 2.5 * np.median(vnir[:, clear].mean(0))
    flatness = vnir.std(0) / np.maximum(vnir.mean(0), 1e-6)
    assert np.median(flatness[cloud]) < 0.5 * np.median(flatness[clear])
    # Cirrus: high in B10 (above Sen2Cor's 0.012 thin-cirrus threshold), the clear day not.
    twin = read(cloudy.parent / "clear" / "ms.tif").astype(np.float64)
    assert np.median(band(ms, "B10")[cirrus]) > 0.012 > np.percentile(
        band(twin, "B10")[valid], 99)
    # Shadows (on ground bright in the NIR): darker, lit by a skylight bluer than the sun.
    lit = shadow & (band(twin, "B08") > 0.15)
    ratio = {b: np.median(band(ms, b)[lit] / band(twin, b)[lit]) for b in ("B02", "B08")}
    assert ratio["B08"] < 0.5 and ratio["B02"] > ratio["B08"]
    # Clouds are an MS matter: the SAR scene and the truth are the clear day's.
    for name in ("sar.tif", "truth.tif"):
        assert np.array_equal(read(cloudy / name), read(cloudy.parent / "clear" / name),
                              equal_nan=True)


# --------------------------------------------------------------------------- masks in
def saved_ms_model(path: Path, bands: list[str] = MS4) -> Path:
    """An untrained MS predictor of ``bands`` saved as a file ``predict`` takes."""
    spec = {"kind": "mono", "in_channels": len(bands), "num_classes": 10,
            "backbone": "small_cnn", "width": 2}
    predictor = make_predictor("ms", bands, branch=build_branch(**spec))
    predictor.info.branch_spec = spec
    predictor.save(path)
    return path


def write_safe(root: Path, scl: np.ndarray, data: np.ndarray) -> Path:
    """An L2A .SAFE of 10 m band files (MS4) and a 20 m SCL_20m raster."""
    safe = root / "S2B_MSIL2A_20230601T103629_N0509_R008_T31UFQ_20230601T134401.SAFE"
    img = safe / "GRANULE" / "L2A_T31UFQ_A032475_20230601T104410" / "IMG_DATA"
    (img / "R10m").mkdir(parents=True)
    (img / "R20m").mkdir()
    stem = "T31UFQ_20230601T103629"
    for name, values in zip(MS4, data, strict=True):
        write_scene(img / "R10m" / f"{stem}_{name}_10m.tif", values[None], None, nodata=0)
    write_scene(img / "R20m" / f"{stem}_SCL_20m.tif", scl[None], None, res=20.0, nodata=None)
    return safe


def write_item(path: Path, safe: Path, scl: Path | None = None) -> dict[str, dict]:
    """A STAC Item (Earth Search's layout) whose assets are the bands of ``safe`` and an
    SCL (default: the one in ``safe``)."""
    assets = {b.stem.split("_")[2]: {"href": str(b), "type": "image/tiff", "roles": ["data"]}
              for b in sorted(safe.rglob("*_10m.tif"))}
    assets["scl"] = {"href": str(scl or next(safe.rglob("*SCL_20m.tif"))),
                     "type": "image/tiff", "roles": ["data"]}
    path.write_text(json.dumps({
        "type": "Feature", "stac_version": "1.0.0", "id": "s2", "properties": {
            "datetime": "2023-06-01T10:36:29Z"}, "geometry": None, "links": [],
        "assets": assets}))
    return assets


def cloudy_safe(root: Path) -> tuple[Path, np.ndarray]:
    """An L2A .SAFE with shadows, clouds and cirrus in its SCL, and which 10 m pixels they
    cover (True: a masked code)."""
    data = (texture(4, 64, 3) * 200 + 2000).astype(np.uint16)
    scl = np.full((32, 32), 4, np.uint8)
    scl[:8, :8], scl[8:16, :8], scl[:8, 8:16], scl[20:, 20:] = 3, 8, 10, 9
    on_10m = np.kron(scl, np.ones((2, 2), np.uint8))  # the 20 m codes on the 10 m grid
    return write_safe(root, scl, data), np.isin(on_10m, [3, 8, 9, 10])


def test_scl_of_a_safe_masks_its_codes_and_the_stac_item_says_so(tmp_path: Path) -> None:
    data = (texture(4, 64, 3) * 200 + 2000).astype(np.uint16)
    scl = np.full((32, 32), 4, np.uint8)
    scl[:8, :8], scl[8:16, :8], scl[:8, 8:16], scl[20:, 20:] = 3, 8, 10, 9
    safe = write_safe(tmp_path, scl, data)
    model = make_predictor("ms", MS4)
    on_10m = np.kron(scl, np.ones((2, 2), np.uint8))  # the 20 m codes on the 10 m grid
    out = tmp_path / "map.tif"
    summary = predict_to_file(model, SceneInput(safe, mask="scl"), out)
    mapped = read(out)[0] != CLASS_NODATA
    assert (mapped == ~np.isin(on_10m, [3, 8, 9, 10])).all()
    assert summary.mapped_pixels == int(mapped.sum())
    item = json.loads(out.with_suffix(".stac.json").read_text())
    record = item["properties"]["discomkd:masks"]["ms"]
    assert record["kind"] == "scl" and record["codes"] == [3, 8, 9, 10]
    assert any(link["rel"] == "derived_from" and "SCL_20m" in link["href"]
               and link["title"].startswith("ms mask (scl: 3 cloud shadows")
               for link in item["links"])
    # Other codes: cloud of high probability only.
    predict_to_file(model, SceneInput(safe, mask="scl", mask_codes=[9]), out,
                    MapSettings.of(overwrite=True))
    assert ((read(out)[0] == CLASS_NODATA) == (on_10m == 9)).all()
    # A STAC Item's scl asset serves as the mask: `predict --stac ... --ms-mask scl`.
    item_path = tmp_path / "item.json"
    assets = write_item(item_path, safe)
    assert read_item(item_path).scl == assets["scl"]["href"]
    path = saved_ms_model(tmp_path / "ms4.pt")
    result = CliRunner().invoke(main, ["predict", "--checkpoint", str(path), "--stac",
                                       str(item_path), "--ms-mask", "scl", "-o",
                                       str(tmp_path / "stac.tif"), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert ((read(tmp_path / "stac.tif")[0] == CLASS_NODATA)
            == np.isin(on_10m, [3, 8, 9, 10])).all()


def test_an_l2a_safe_is_masked_by_its_scl_by_default_unless_mask_none(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Issue 26: an L2A product's own SCL masks its clouds without being asked, recorded
    as an explicit mask='scl' is; mask='none' maps every pixel; a GeoTIFF of the same
    pixels, or an L1C .SAFE, gets no mask."""
    safe, cloudy = cloudy_safe(tmp_path)
    model = make_predictor("ms", MS4)
    out, explicit = tmp_path / "map.tif", tmp_path / "explicit.tif"
    with caplog.at_level(logging.INFO, logger="discomkd_geo"):
        summary = predict_to_file(model, SceneInput(safe), out)
    scl = str(next(safe.rglob("*SCL_20m.tif")))
    assert [r.getMessage() for r in caplog.records if "by default" in r.getMessage()] == [
        f"{safe}: cloudy pixels masked by default with the scene classification {scl} "
        "(codes 3 cloud shadows, 8 cloud medium probability, 9 cloud high probability, 10 "
        "thin cirrus); pass mask='none' (--ms-mask none) to map them from this scene"]
    assert ((read(out)[0] == CLASS_NODATA) == cloudy).all()
    assert summary.mapped_pixels == int((~cloudy).sum())
    predict_to_file(model, SceneInput(safe, mask="scl"), explicit)
    assert np.array_equal(read(out), read(explicit))
    item, asked = (json.loads(p.with_suffix(".stac.json").read_text()) for p in (out, explicit))
    assert item["properties"]["discomkd:masks"] == asked["properties"]["discomkd:masks"]
    assert item["properties"]["discomkd:masks"]["ms"]["source"] == scl
    assert [link for link in item["links"] if "mask" in link.get("title", "")] == [
        link for link in asked["links"] if "mask" in link.get("title", "")] != []
    # mask='none': the clouds are mapped from the MS scene, and nothing records a mask.
    summary = predict_to_file(model, SceneInput(safe, mask="none"), out,
                              MapSettings.of(overwrite=True))
    assert (read(out)[0] != CLASS_NODATA).all() and summary.mapped_pixels == 64 * 64
    assert "discomkd:masks" not in json.loads(out.with_suffix(".stac.json").read_text())[
        "properties"]
    with pytest.raises(SettingsError, match="^mask_codes: given without a mask$"):
        SceneInput(safe, mask="none", mask_codes=[9])
    # The command line: --ms-mask none opts out, no option masks.
    path = saved_ms_model(tmp_path / "ms4.pt")
    for option, masked in (["--ms-mask", "none"], False), ([], True):
        result = CliRunner().invoke(main, ["predict", "--checkpoint", str(path), "--ms",
                                           str(safe), *option, "-o", str(tmp_path / "cli.tif"),
                                           "--overwrite", "--no-progress"])
        assert result.exit_code == 0, result.output
        assert ((read(tmp_path / "cli.tif")[0] == CLASS_NODATA) == (cloudy & masked)).all()
        assert ("masked by default" in result.output) == masked
    # No SCL, no mask: the same pixels as a GeoTIFF (an SCL beside it is no product's) ...
    plain = tmp_path / "plain"
    plain.mkdir()
    stack = np.stack([read(f)[0] for f in sorted(safe.rglob("*_10m.tif"))])
    shutil.copy(scl, plain / "T31UFQ_20230601T103629_SCL_20m.tif")
    # ... and an L1C .SAFE of them.
    l1c = tmp_path / "S2B_MSIL1C_20230601T103629_N0509_R008_T31UFQ_20230601T124101.SAFE"
    shutil.copytree(safe, l1c, ignore=shutil.ignore_patterns("*SCL*"))
    for scene in (write_scene(plain / "ms.tif", stack, sorted(MS4), nodata=0), l1c):
        _, readers = open_readers({"ms": SceneInput(scene)}, {"ms": model.info})
        assert readers["ms"].mask is None


def test_a_fused_map_takes_the_clouds_of_an_l2a_safe_from_sar_by_default(
        tmp_path: Path) -> None:
    """The default SCL mask hands the cloudy pixels to SAR (the source raster says 2);
    with mask='none' both scenes are fused there."""
    safe, cloudy = cloudy_safe(tmp_path)
    sar = write_scene(tmp_path / "sar.tif", texture(2, 64, 6) - 12, list(S1_BANDS))
    predictors = {"ms": make_predictor("ms", MS4), "sar": make_predictor("sar", list(S1_BANDS))}
    source = tmp_path / "source.tif"
    for mask, under_clouds in ((None, SOURCE_CODES["sar"]), ("none", FUSED)):
        predict_to_file(predictors, {"ms": SceneInput(safe, mask=mask), "sar": sar},
                        tmp_path / "fused.tif", MapSettings.of(source=source, overwrite=True))
        evidence = read(source)[0]
        assert (evidence[cloudy] == under_clouds).all()
        assert (evidence[~cloudy] == FUSED).all()
    assert (read(tmp_path / "fused.tif")[0] != CLASS_NODATA).all()


def test_a_stac_items_scl_asset_masks_by_default(tmp_path: Path) -> None:
    """predict --stac without --ms-mask masks the Item's scl asset and says so; --ms-mask
    none maps every pixel."""
    safe, cloudy = cloudy_safe(tmp_path)
    # The SCL out of the .SAFE, whose band files would find it: only the Item names it.
    scl = next(safe.rglob("*SCL_20m.tif")).rename(tmp_path / "T31UFQ_SCL_20m.tif")
    item = tmp_path / "item.json"
    write_item(item, safe, scl)
    path = saved_ms_model(tmp_path / "ms4.pt")
    out = tmp_path / "stac.tif"
    for option, masked in ([], True), (["--ms-mask", "none"], False):
        result = CliRunner().invoke(main, ["predict", "--checkpoint", str(path), "--stac",
                                           str(item), *option, "-o", str(out), "--overwrite",
                                           "--no-progress"])
        assert result.exit_code == 0, result.output
        assert ((read(out)[0] == CLASS_NODATA) == (cloudy & masked)).all()
        said = [line for line in result.output.splitlines() if "by default" in line]
        assert said == ([f"{item}: cloudy pixels masked by default with the scene "
                         f"classification {scl} (codes 3 cloud shadows, 8 cloud medium "
                         "probability, 9 cloud high probability, 10 thin cirrus); pass "
                         "mask='none' (--ms-mask none) to map them from this scene"]
                        if masked else [])
        masks = json.loads(out.with_suffix(".stac.json").read_text())["properties"].get(
            "discomkd:masks")
        assert masks == ({"ms": {"kind": "scl", "source": str(scl), "codes": [3, 8, 9, 10],
                                 "meaning": "3 cloud shadows, 8 cloud medium probability, 9 "
                                            "cloud high probability, 10 thin cirrus"}}
                         if masked else None)


def test_binary_and_fmask_masks_on_other_grids_are_resampled(tmp_path: Path) -> None:
    scene = write_scene(tmp_path / "ms.tif", (texture(4, 64, 5) * 200 + 2000).astype(np.uint16),
                        MS4, nodata=0)
    model = make_predictor("ms", MS4)
    rng = np.random.default_rng(0)
    # Fmask codes at 30 m on a grid shifted by 5 m, in the scene's CRS.
    fmask = rng.choice([0, 1, 2, 3, 4], size=(24, 24), p=[0.5, 0.1, 0.15, 0.05, 0.2])
    fmask_path = write_scene(tmp_path / "LC08_Fmask4.tif", fmask.astype(np.uint8)[None], None,
                             res=30.0, origin=(ORIGIN[0] - 35.0, ORIGIN[1] + 25.0), nodata=255)
    # A 0/1 mask in geographic coordinates.
    grid, _ = open_readers({"ms": SceneInput(scene)}, {"ms": model.info})
    binary = np.zeros((grid.height, grid.width), np.uint8)
    binary[10:30, 5:50] = 1
    geo = tmp_path / "clouds01.tif"
    with rasterio.open(geo, "w", driver="GTiff", width=70, height=70, count=1, dtype="uint8",
                       crs="EPSG:4326", transform=rasterio.transform.from_bounds(
                           *rasterio.warp.transform_bounds(grid.crs, "EPSG:4326", *rasterio.
                                                          transform.array_bounds(
                                                              64, 64, grid.transform)),
                           70, 70)) as dst:
        warped = np.zeros((70, 70), np.uint8)
        reproject(binary, warped, src_transform=grid.transform, src_crs=grid.crs,
                  dst_transform=dst.transform, dst_crs=dst.crs, resampling=Resampling.nearest)
        dst.write(warped[None])
    for mask, codes in ((fmask_path, [2, 4]), (geo, [1])):
        _, readers = open_readers({"ms": SceneInput(scene, mask=mask)}, {"ms": model.info})
        reader = readers["ms"]
        assert reader.mask.record()["codes"] == codes
        expected = np.zeros((grid.height, grid.width), np.uint8)
        with rasterio.open(mask) as src:  # nearest neighbour, as an independent warp
            reproject(src.read(1), expected, src_transform=src.transform, src_crs=src.crs,
                      dst_transform=grid.transform, dst_crs=grid.crs, src_nodata=src.nodata,
                      dst_nodata=254, resampling=Resampling.nearest)
        unavailable = read_on_grid(reader.mask, grid)
        assert (unavailable == np.isin(expected, codes)).all()
        # No pixel under the mask is mapped from the masked modality.
        out = tmp_path / f"map_{mask.stem}.tif"
        predict_to_file(model, SceneInput(scene, mask=mask), out)
        assert (read(out)[0][unavailable] == CLASS_NODATA).all()
    assert abs(read_on_grid(readers["ms"].mask, grid).mean() - binary.mean()) < 0.05


def test_a_sar_mask_from_the_command_line(tmp_path: Path) -> None:
    scene = write_scene(tmp_path / "sar.tif", texture(2, 64, 6) - 12, list(S1_BANDS))
    mask = np.zeros((1, 64, 64), np.uint8)
    mask[0, 16:40, 8:56] = 1
    mask_path = write_scene(tmp_path / "sar_mask.tif", mask, None, nodata=None)
    model = saved_sar_model(tmp_path / "sar.pt")
    out = tmp_path / "map.tif"
    result = CliRunner().invoke(main, ["predict", "--checkpoint", str(model), "--sar",
                                       str(scene), "--sar-mask", str(mask_path), "-o",
                                       str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert ((read(out)[0] == CLASS_NODATA) == mask[0].astype(bool)).all()


def test_a_sar_scene_takes_only_the_masks_of_its_sensor(tmp_path: Path) -> None:
    """The sensor profile says which masks apply: a Sentinel-1 scene takes a 0/1 mask, not
    a scene classification or cloud detection; a file named SCL is read as 0/1."""
    scene = write_scene(tmp_path / "sar.tif", texture(2, 64, 6) - 12, list(S1_BANDS))
    scl = write_scene(tmp_path / "T31UFQ_SCL_20m.tif", np.full((1, 64, 64), 4, np.uint8), None,
                      nodata=None)
    infos = {"sar": make_predictor("sar", list(S1_BANDS)).info}
    cases = [(SettingsError, SceneInput(scene, mask=scl, mask_kind="scl"),
              r"^mask_kind: must be one of \['binary'\] for a Sentinel-1 SAR scene, got 'scl'$"),
             (SettingsError, SceneInput(scene, mask="auto"), "^mask: 'auto' detects clouds"),
             (SettingsError, SceneInput(scene, mask="scl"), "^mask: a Sentinel-1 SAR scene has no"),
             (InputFileError, SceneInput(scene, mask=scl), "holds values 4 besides 0 and 1")]
    for error, sar, problem in cases:
        with pytest.raises(error, match=problem):
            open_readers({"sar": sar}, infos)


def test_bad_masks_are_refused_in_one_line(tmp_path: Path) -> None:
    scene = write_scene(tmp_path / "ms.tif", (texture(4, 64, 7) * 200 + 2000).astype(np.uint16),
                        MS4, nodata=0)
    model = make_predictor("ms", MS4)
    ones = np.ones((1, 64, 64), np.uint8)
    far = write_scene(tmp_path / "far.tif", ones, None, origin=(600000.0, ORIGIN[1]),
                      nodata=None)
    everything = write_scene(tmp_path / "all.tif", ones, None, nodata=None)
    codes = write_scene(tmp_path / "codes.tif", np.arange(64 * 64, dtype=np.uint16).reshape(
        1, 64, 64) % 14, None, nodata=None)
    scl = write_scene(tmp_path / "T31UFQ_SCL_20m.tif", (np.arange(64 * 64).reshape(
        1, 64, 64) % 14).astype(np.uint8), None, nodata=None)
    cases = [
        (far, f"^{far}: does not overlap {scene}$"),
        (everything, f"^{everything}: masks every pixel of {scene} \\(codes 1 unavailable\\)"),
        (codes, f"^{codes}: holds values 2, 3, 4, 5, 6, 7, 8, 9, ... besides 0 and 1"),
        (scl, f"^{scl}: holds values 12, 13 that are not Sentinel-2 scene classification"),
    ]
    (tmp_path / "out").mkdir()
    for mask, problem in cases:
        with pytest.raises(InputFileError, match=problem) as err:
            predict_to_file(model, SceneInput(scene, mask=mask), tmp_path / "out" / "map.tif")
        assert "\n" not in str(err.value)
    with pytest.raises(SettingsError, match="mask_codes: 12 not Sentinel-2 scene"):
        open_readers({"ms": SceneInput(scene, mask=scl, mask_codes=[3, 12])},
                     {"ms": model.info})
    with pytest.raises(InputFileError, match="holds no scene classification \\(SCL\\) raster"):
        open_readers({"ms": SceneInput(scene, mask="scl")}, {"ms": model.info})
    assert not any((tmp_path / "out").iterdir())
    # The command line: one line naming the file and its option, non-zero exit.
    path = saved_ms_model(tmp_path / "ms4.pt")
    args = ["predict", "--checkpoint", str(path), "--ms", str(scene), "-o",
            str(tmp_path / "out" / "cli.tif"), "--ms-mask"]
    whole = CliRunner().invoke(main, [*args, str(everything)])
    assert whole.exit_code == 1 and whole.output.strip().endswith(
        "nothing is left to map from it (--ms-mask none maps it unmasked)")
    result = CliRunner().invoke(main, [*args, str(codes)])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"Error: {codes}: holds values 2, 3, 4, 5, 6, 7, 8, 9, ... besides 0 and 1 (1 = "
        "unavailable); if it is a scene classification or Fmask raster, pass --ms-mask-kind "
        "scl or --ms-mask-kind fmask"]
    result = CliRunner().invoke(main, [*args, str(scl), "--ms-mask-codes", "3,x"])
    assert result.exit_code == 2 and "--ms-mask-codes" in result.output
    assert not any((tmp_path / "out").iterdir())


# --------------------------------------------------------------------------- s2cloudless
@pytest.mark.slow
def test_s2cloudless_detects_the_simulated_clouds(tmp_path: Path) -> None:
    pytest.importorskip("s2cloudless")
    make_scene(tmp_path / "l1c", size=64, seed=2, cloud_cover=0.5)
    model = make_predictor("ms", list(S2_BANDS))
    scene = SceneInput(tmp_path / "l1c" / "ms.tif", mask="auto")
    grid, readers = open_readers({"ms": scene}, {"ms": model.info})
    detected = read_on_grid(readers["ms"].mask, grid)
    cloud = read(tmp_path / "l1c" / "cloud.tif")[0].astype(bool)
    assert (detected & cloud).sum() / (detected | cloud).sum() > 0.5
    assert (detected[cloud]).mean() > 0.9
    out = tmp_path / "map.tif"
    summary = predict_to_file(model, scene, out)
    assert (read(out)[0][detected] == CLASS_NODATA).all()
    assert 0 < summary.mapped_pixels <= (~detected).sum()
    # Level-2A or without B10: one line saying why.
    l2a = write_safe(tmp_path, np.full((32, 32), 4, np.uint8),
                     (texture(4, 64, 3) * 200 + 2000).astype(np.uint16))
    ms4 = {"ms": make_predictor("ms", MS4).info}
    with pytest.raises(InputFileError, match="is a Level-2A product .*\\(mask 'scl'\\)$"):
        open_readers({"ms": SceneInput(l2a, mask="auto")}, ms4)
    no_b10 = write_scene(tmp_path / "ms4.tif", (texture(4, 64, 3) * 200 + 2000).astype(
        np.uint16), MS4, nodata=0)
    with pytest.raises(InputFileError, match="^.*ms4.tif: has no B10 \\(cirrus\\) band"):
        open_readers({"ms": SceneInput(no_b10, mask="auto")}, ms4)


def read_in_chunks(reader: MaskReader, grid: Grid, side: int) -> np.ndarray:
    """The whole mask read window by window, as the engine reads it in ``side`` px chunks."""
    out = np.zeros((grid.height, grid.width), dtype=bool)
    windows = chunk_layout(grid.height, grid.width, side)
    for window, unavailable in zip(windows, reader.read_windows(windows), strict=True):
        out[window.toslices()] = unavailable
    return out


def test_cloud_detection_at_60_m_runs_on_6x6_blocks_of_the_scene(tmp_path: Path) -> None:
    """mask_resolution=60 on a 10 m scene: s2cloudless on the mean reflectance of 6 x 6
    blocks from the scene's top left corner (the last ones cut by its edge, 100 = 16 x 6
    + 4), no averaging disk (2 px at 10 m is under half a 60 m pixel), each map pixel
    taking its block's verdict; the same mask whatever the chunks it is read through, at
    60 m as at 10 m."""
    detector = pytest.importorskip("s2cloudless").S2PixelCloudDetector
    make_scene(tmp_path / "l1c", size=100, seed=5, cloud_cover=0.5)
    info = {"ms": make_predictor("ms", list(S2_BANDS)).info}
    masks = {}
    for resolution in (None, 60):
        scene = SceneInput(tmp_path / "l1c" / "ms.tif", mask="auto", mask_resolution=resolution)
        grid, readers = open_readers({"ms": scene}, info)
        reader = readers["ms"].mask
        masks[resolution] = read_on_grid(reader, grid)
        for side in (7, 37, 64):  # chunks that do not align with the 6 px blocks
            assert np.array_equal(read_in_chunks(reader, grid, side), masks[resolution])
    assert reader.record()["resolution"] == 60.0 and reader.record()["average_over"] == 0
    # Independently: block means of the bands (float32, as the scene is read), the
    # package's detector, blocks back to 10 m.
    ms = read(tmp_path / "l1c" / "ms.tif").astype(np.float64)
    padded = np.pad(ms[[S2_BANDS.index(b) for b in DETECTOR_BANDS]],
                    ((0, 0), (0, 2), (0, 2)))  # to 102 = 17 x 6
    counts = np.pad(np.ones((100, 100)), ((0, 2), (0, 2))).reshape(17, 6, 17, 6).sum((1, 3))
    means = (padded.reshape(10, 17, 6, 17, 6).sum((2, 4)) / counts).astype(np.float32)
    blocks = detector(threshold=0.4, average_over=0, dilation_size=0).get_cloud_masks(
        np.moveaxis(means / 10_000, 0, -1)[None])[0].astype(bool)
    assert np.array_equal(masks[60], np.kron(blocks, np.ones((6, 6), bool))[:100, :100])
    assert masks[60].any() and not masks[60].all()
    # Not the 10 m mask: the option is honoured.
    assert not np.array_equal(masks[60], masks[None])
    cloud = read(tmp_path / "l1c" / "cloud.tif")[0].astype(bool)
    assert masks[60][cloud].mean() > 0.9


@pytest.mark.slow
def test_ms_mask_resolution_from_the_command_line(tmp_path: Path) -> None:
    """predict --ms-mask auto --ms-mask-resolution 60 masks the 60 m blocks and records the
    resolution; a resolution that is no whole multiple of the map's pixels, or one without
    --ms-mask auto, is refused in one line naming the option."""
    pytest.importorskip("s2cloudless")
    make_scene(tmp_path / "l1c", size=96, seed=5, cloud_cover=0.5)
    scene = tmp_path / "l1c" / "ms.tif"
    path = saved_ms_model(tmp_path / "ms.pt", list(S2_BANDS))
    out = tmp_path / "map.tif"
    args = ["predict", "--checkpoint", str(path), "--ms", str(scene), "-o", str(out),
            "--no-progress", "--ms-mask"]
    result = CliRunner().invoke(main, [*args, "auto", "--ms-mask-resolution", "60"])
    assert result.exit_code == 0, result.output
    grid, readers = open_readers({"ms": SceneInput(scene, mask="auto", mask_resolution=60)},
                                 {"ms": make_predictor("ms", list(S2_BANDS)).info})
    detected = read_on_grid(readers["ms"].mask, grid)
    assert (read(out)[0][detected] == CLASS_NODATA).all()
    record = json.loads(out.with_suffix(".stac.json").read_text())["properties"][
        "discomkd:masks"]["ms"]
    assert record["kind"] == "s2cloudless" and record["resolution"] == 60.0
    for option, problem in ((["auto", "--ms-mask-resolution", "45"],
                             "--ms-mask-resolution: must be a whole multiple of the map's "
                             "pixel size, 10 m (e.g. 60), got 45"),
                            ([str(tmp_path / "l1c" / "cloud.tif"), "--ms-mask-resolution",
                              "60"], "--ms-mask-resolution: is the resolution of cloud "
                                     "detection: it goes with --ms-mask auto only")):
        result = CliRunner().invoke(main, [*args, *option, "-o", str(tmp_path / "x.tif")])
        assert result.exit_code == 1
        assert result.output.strip().splitlines() == [f"Error: {problem}"]
