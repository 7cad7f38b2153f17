"""Scenes as users have them: units, scaling, band order, S1/S2 product shapes, xarray.

Real data: spyndex's ``S2_10m.json`` (MIT licence, https://github.com/awesome-spectral-indices/
spyndex), a 300 x 300 px Sentinel-2 L2A subset, bands B02, B03, B04, B08 in surface
reflectance x 10000, without georeferencing (we place it on a UTM grid). The Sentinel-1
shapes (dB, linear power, amplitude, digital numbers, one file per polarisation, GCP-only
rasters, .SAFE products) are SYNTHETIC values written with the metadata conventions of
the real products (band descriptions, ASF HyP3 RTC file names, GCPs in EPSG:4326).
"""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from click.testing import CliRunner
from rasterio.control import GroundControlPoint
from rasterio.rpc import RPC
from rasterio.transform import from_origin
from test_inference import ORIGIN, make_predictor, read, texture, write_scene

from discomkd_geo.cli import main
from discomkd_geo.constants import CLASS_NODATA, S1_BANDS, S2_BANDS
from discomkd_geo.data.eurosat import EuroSATMSSAR
from discomkd_geo.data.normalization import compute_stats
from discomkd_geo.data.synthetic import make_scene
from discomkd_geo.errors import InputFileError
from discomkd_geo.inference.checks import REVERSED_DECADES, check_scene, sample_windows
from discomkd_geo.inference.engine import predict_lazy, predict_to_file
from discomkd_geo.inference.fusion import FUSED, SOURCE_CODES
from discomkd_geo.inference.io import SceneInput, canonical_band, open_readers
from discomkd_geo.inference.settings import MapSettings
from discomkd_geo.models.predictor import Predictor, load_torch_predictor

spyndex = pytest.importorskip("spyndex")
S2_SUBSET_BANDS = ["B02", "B03", "B04", "B08"]
#: Percentiles of the synthetic EuroSat-SAR training data (VV, VH in dB).
SAR_PROFILE = {"p2": [-21.2, -26.7], "p50": [-11.8, -18.1], "p98": [-3.0, -9.0]}


@pytest.fixture(scope="module")
def s2_subset() -> np.ndarray:
    """The real Sentinel-2 subset, uint16 (4, 300, 300)."""
    path = Path(spyndex.__file__).parent / "data" / "S2_10m.json"
    return np.array(json.loads(path.read_text()), dtype=np.uint16)


@pytest.fixture(scope="module")
def ms4(ms4_run: Path) -> Predictor:
    return load_torch_predictor(ms4_run, "ms")


@pytest.fixture(scope="module")
def sar() -> Predictor:
    """An untrained SAR predictor whose statistics carry the training profile."""
    predictor = make_predictor("sar", list(S1_BANDS))
    predictor.stats.profile = SAR_PROFILE
    return predictor


def s1_db(size: int = 96, seed: int = 0) -> np.ndarray:
    """SYNTHETIC VV/VH backscatter in dB around the training medians."""
    return (texture(2, size, seed) + np.array([-11.8, -18.1])[:, None, None]).astype(np.float32)


@pytest.mark.slow
def test_checkpoints_carry_training_percentiles(ms4: Predictor) -> None:
    profile = ms4.stats.profile
    assert profile is not None and sorted(profile) == ["p2", "p50", "p98"]
    assert all(len(v) == 4 for v in profile.values())
    assert all(lo < mid < hi for lo, mid, hi in zip(*profile.values(), strict=True))
    # Older files without the profile load, and their scenes are mapped unchecked.
    payload = {"format": "discomkd_geo.predictor", "version": 1, "info": ms4.info.to_dict(),
               "stats": {k: v for k, v in ms4.stats.to_dict().items() if k != "profile"},
               "state_dict": ms4.branch.state_dict()}
    assert Predictor.from_payload(payload, "old.pt").stats.profile is None


@pytest.mark.slow
def test_real_s2_subset_units_and_order(ms4: Predictor, s2_subset: np.ndarray,
                                        tmp_path: Path) -> None:
    right = write_scene(tmp_path / "s2.tif", s2_subset, S2_SUBSET_BANDS, nodata=0)
    summary = predict_to_file(ms4, right, tmp_path / "right.tif")
    assert summary.mapped_pixels == 300 * 300
    assert [b.verdict for b in summary.checks["ms"].bands] == ["ok"] * 4
    # Reflectance 0-1 given as digital numbers: refused, with the fix.
    unit = write_scene(tmp_path / "s2_01.tif", (s2_subset / 1e4).astype(np.float32),
                       S2_SUBSET_BANDS)
    with pytest.raises(InputFileError, match=r"s2_01.tif: band B0\d median 0.0\d+ is 4.\d "
                                             r"decades below .* pass scale=10000 \(or force=True"):
        predict_to_file(ms4, unit, tmp_path / "unit.tif")
    assert not (tmp_path / "unit.tif").exists()
    scaled = predict_to_file(ms4, SceneInput(unit, scale=1e4), tmp_path / "scaled.tif")
    assert (read(tmp_path / "scaled.tif") == read(tmp_path / "right.tif")).all()
    assert scaled.checks["ms"].units == "x 10000"
    # Reversed band names: refused as permuted; --force maps and keeps the figures.
    reversed_names = SceneInput(right, bands=S2_SUBSET_BANDS[::-1])
    with pytest.raises(InputFileError, match="band order looks permuted: B08 .* below"):
        predict_to_file(ms4, reversed_names, tmp_path / "reversed.tif")
    forced = predict_to_file(ms4, reversed_names, tmp_path / "reversed.tif",
                             MapSettings.of(force=True))
    check = forced.checks["ms"]
    assert check.forced and "permuted" in check.problems[0]
    assert {b.band: b.verdict for b in check.bands}["B08"] == "order"
    # The baseline-04.00 offset applied to a product that has none: negative values.
    with pytest.raises(InputFileError, match="not positive .* pass scale=1 and offset=0"):
        predict_to_file(ms4, SceneInput(right, offset=-1000), tmp_path / "offset.tif")


@pytest.mark.slow
def test_real_s2_as_band_files_at_mixed_resolutions(ms4: Predictor, s2_subset: np.ndarray,
                                                    tmp_path: Path) -> None:
    """L2A .SAFE naming; B08 also at 20 m (finest kept); B03 only at 20 m (resampled)."""
    safe = tmp_path / "S2B_MSIL2A_20230601T103629_N0509_R008_T31UFQ_20230601T134401.SAFE"
    img = safe / "GRANULE" / "L2A_T31UFQ_A032475_20230601T104410" / "IMG_DATA"
    (img / "R10m").mkdir(parents=True)
    (img / "R20m").mkdir()
    stem = "T31UFQ_20230601T103629"
    for band, data in zip(S2_SUBSET_BANDS, s2_subset, strict=True):
        if band != "B03":
            write_scene(img / "R10m" / f"{stem}_{band}_10m.tif", data[None], None, nodata=0)
        coarse = data.reshape(150, 2, 150, 2).mean(axis=(1, 3)).astype(np.uint16)[None]
        write_scene(img / "R20m" / f"{stem}_{band}_20m.tif", coarse, None, res=20.0, nodata=0)
    write_scene(img / "R20m" / f"{stem}_SCL_20m.tif", np.ones((1, 150, 150), np.uint8), None,
                nodata=0)
    summary = predict_to_file(ms4, safe, tmp_path / "safe.tif")
    assert (summary.width, summary.height) == (300, 300)
    assert summary.checks["ms"].units == "as stored"
    # The same files given one by one, in any order; names come from the file names.
    files = sorted((img / "R10m").glob("*.tif"), reverse=True) + [
        img / "R20m" / f"{stem}_B03_20m.tif"]
    predict_to_file(ms4, files, tmp_path / "files.tif")
    assert (read(tmp_path / "files.tif") == read(tmp_path / "safe.tif")).all()


def test_band_matching_rules(tmp_path: Path) -> None:
    assert [canonical_band(n) for n in ("B4", "b04", "red", "B8A", "nir08", "Sigma0_VV_db",
                                        "S1A_IW_20230101T060000_DVP_RTC30_G_gpuned_1A2B_VH",
                                        "Band 1")] == [
        "B04", "B04", "B04", "B8A", "B8A", "VV", "VH", "BAND 1"]
    data = texture(4, 64, 2) + 1000
    # A 4-band scene for a 13-band model: the fix is a model trained on those bands.
    with pytest.raises(InputFileError, match=r"lacks bands \['B01', .*use a model trained on "
                                             r"the scene's bands \(config data\."
                                             r"modalities.ms.bands: \[B02,B03,B04,B08\]\)"):
        predict_to_file(make_predictor("ms", list(S2_BANDS)),
                        write_scene(tmp_path / "four.tif", data, S2_SUBSET_BANDS),
                        tmp_path / "x.tif")
    # Duplicate names are an error (issue 9, item 12).
    with pytest.raises(InputFileError, match="band VV appears 2 times \\(bands 1, 3\\)"):
        predict_to_file(make_predictor("sar", list(S1_BANDS)),
                        write_scene(tmp_path / "dup.tif", texture(3, 64, 3), ["VV", "VH", "VV"]),
                        tmp_path / "x.tif")
    # A model trained without B10 maps a 12-band L2A stack named in any order.
    no_b10 = [b for b in S2_BANDS if b != "B10"]
    l2a = write_scene(tmp_path / "l2a.tif", texture(12, 64, 4) + 1000, no_b10[::-1])
    summary = predict_to_file(make_predictor("ms", no_b10), l2a, tmp_path / "l2a_map.tif")
    assert summary.mapped_pixels == 64 * 64
    assert summary.checks["ms"].bands[0].verdict == "not checked"  # no profile


@pytest.mark.parametrize(("storage", "units", "error"), [
    ("db", None, None),
    ("linear", "linear", None),
    ("amplitude", "amplitude", None),
    ("linear", None, "decades above .* it looks like linear power: pass sar_units='linear'"),
    ("amplitude", "linear", "it looks like amplitude: pass sar_units='amplitude'"),
    ("db", "linear", "values <= 0, which cannot be linear power; it looks like dB: pass "
                       "sar_units='db'"),
    ("dn", None, "no usual storage fits .* calibrate the product first"),
])
def test_sar_units(sar: Predictor, tmp_path: Path, storage: str, units: str | None,
                   error: str | None) -> None:
    """SYNTHETIC S1 backscatter stored as dB, linear power, amplitude or GRD numbers."""
    db = s1_db()
    values = {"db": db, "linear": 10 ** (db / 10), "amplitude": 10 ** (db / 20),
              "dn": np.round(10 ** (db / 20) * 1500)}[storage].astype(np.float32)
    path = write_scene(tmp_path / f"{storage}.tif", values, list(S1_BANDS))
    scene = SceneInput(path, sar_units=units)
    if error is None:
        summary = predict_to_file(sar, scene, tmp_path / "map.tif",
                                  MapSettings.of(probabilities=tmp_path / "p.tif"))
        reference = write_scene(tmp_path / "ref.tif", db, list(S1_BANDS))
        predict_to_file(sar, reference, tmp_path / "ref_map.tif",
                        MapSettings.of(probabilities=tmp_path / "ref_p.tif"))
        np.testing.assert_allclose(read(tmp_path / "p.tif"), read(tmp_path / "ref_p.tif"),
                                   atol=1e-4)
        assert summary.checks["sar"].problems == []
    else:
        with pytest.raises(InputFileError, match=f"^{path}: .*{error}"):
            predict_to_file(sar, scene, tmp_path / "map.tif")
        assert not (tmp_path / "map.tif").exists()


def test_swapped_polarisations_and_all_nodata(sar: Predictor, tmp_path: Path) -> None:
    swapped = write_scene(tmp_path / "swap.tif", s1_db(), ["VH", "VV"])
    with pytest.raises(InputFileError, match="permuted: VV .* below VH"):
        predict_to_file(sar, swapped, tmp_path / "m.tif")
    empty = write_scene(tmp_path / "empty.tif", np.full((2, 64, 64), np.nan, np.float32),
                        list(S1_BANDS))
    for force in (False, True):  # --force cannot map nothing
        with pytest.raises(InputFileError, match="empty.tif: holds no valid pixel"):
            predict_to_file(sar, empty, tmp_path / "m.tif", MapSettings.of(force=force))
    # Nodata except a patch that the sample windows miss: the full pass finds it.
    patch = np.full((2, 1200, 1200), np.nan, np.float32)
    patch[:, 600:640, 100:140] = s1_db(40)
    summary = predict_to_file(sar, write_scene(tmp_path / "patch.tif", patch,
                                               list(S1_BANDS)), tmp_path / "c.tif",
                              MapSettings.of(stride=16, coarse=True))
    assert summary.mapped_pixels > 0
    assert summary.checks["sar"].sampled_pixels == 1200 * 1200
    assert summary.checks["sar"].valid_share == pytest.approx(40 * 40 / 1200 ** 2)


def test_s1_product_shapes(sar: Predictor, tmp_path: Path) -> None:
    """SYNTHETIC values in the layouts of real S1 products."""
    db = s1_db(64, seed=5)
    reference = write_scene(tmp_path / "ref.tif", db, list(S1_BANDS))
    predict_to_file(sar, reference, tmp_path / "ref.tif.map.tif",
                    MapSettings.of(probabilities=tmp_path / "ref.p.tif"))
    expected = read(tmp_path / "ref.p.tif")
    # ASF HyP3 RTC: one gamma0 power COG per polarisation; units read from the name.
    stem = "S1A_IW_20230101T060000_DVP_RTC10_G_gpuned_1A2B"
    vh = write_scene(tmp_path / f"{stem}_VH.tif", 10 ** (db[1:] / 10), None)
    vv = write_scene(tmp_path / f"{stem}_VV.tif", 10 ** (db[:1] / 10), None)
    summary = predict_to_file(sar, [vh, vv], tmp_path / "rtc.tif",
                              MapSettings.of(probabilities=tmp_path / "rtc.p.tif"))
    assert summary.checks["sar"].units == "linear power -> dB"
    np.testing.assert_allclose(read(tmp_path / "rtc.p.tif"), expected, atol=1e-4)
    # The same files named by option: --sar-vv/--sar-vh (CLI) are explicit band names.
    plain = [write_scene(tmp_path / f"pol{i}.tif", 10 ** (db[i:i + 1] / 10), None)
             for i in range(2)]
    predict_to_file(sar, SceneInput(plain, bands=["VV", "VH"], sar_units="linear"),
                    tmp_path / "named.tif", MapSettings.of(probabilities=tmp_path / "named.p.tif"))
    np.testing.assert_allclose(read(tmp_path / "named.p.tif"), expected, atol=1e-4)
    # Raw GRD .SAFE (directory, manifest, measurement file, zip): a one-line refusal.
    safe = tmp_path / "S1A_IW_GRDH_1SDV_20230101T060000_20230101T060025_046581_059540_1A2B.SAFE"
    (safe / "measurement").mkdir(parents=True)
    (safe / "manifest.safe").write_text("<xfdu/>")
    grd = write_scene(safe / "measurement" / "s1a-iw-grd-vv-20230101t060000-001.tiff",
                      np.ones((1, 8, 8), np.uint16), None, nodata=0)
    for path in (safe, safe / "manifest.safe", grd, Path(f"{safe}.zip")):
        with pytest.raises(InputFileError, match="raw Sentinel-1 product .* calibrate .* "
                                                 "terrain-correct .* ESA SNAP .* pyroSAR"):
            predict_to_file(sar, path, tmp_path / "raw.tif")


@pytest.mark.slow
def test_gcp_georeferenced_raster_is_warped(sar: Predictor, tmp_path: Path) -> None:
    """SYNTHETIC dB values on GCP-only and RPC-only rasters (as L1 products come)."""
    path = tmp_path / "gcp.tif"
    gcps = [GroundControlPoint(row=r, col=c, x=3.0 + c * 1.3e-4, y=45.0 - r * 0.9e-4)
            for r in (0, 96) for c in (0, 96)]
    values = s1_db(96, seed=6)
    with rasterio.open(path, "w", driver="GTiff", width=96, height=96, count=2,
                       dtype="float32", gcps=gcps, crs="EPSG:4326", nodata=np.nan) as dst:
        dst.write(values)
        dst.descriptions = tuple(S1_BANDS)
    # The warped values are the raster's own (a WarpedVRT onto an explicit grid reads
    # other pixels of a GCP-only raster).
    _, readers = open_readers({"sar": SceneInput(path)}, {"sar": sar.info})
    warped, valid = readers["sar"].read_raw(readers["sar"].grid.window)
    assert valid.mean() > 0.5
    np.testing.assert_allclose(np.median(warped[:, valid], axis=1),
                               np.median(values, axis=(1, 2)), atol=0.5)
    lazy = predict_lazy(sar, path)
    assert lazy.rio.crs.to_epsg() == 32631  # UTM zone of the scene centre (3 E, 45 N)
    assert lazy.rio.transform().a == 10.0  # the model's pixel size
    assert (lazy.compute(scheduler="sync").values != 255).mean() > 0.5
    named = predict_lazy(sar, SceneInput(path, crs="EPSG:3035"))
    assert named.rio.crs.to_epsg() == 3035
    # As a second modality it is checked for overlap like any other raster (it lies
    # about 16 km south of this MS scene).
    ms_bands = ["B02", "B03", "B04"]
    ms = write_scene(tmp_path / "ms.tif", texture(3, 64, 9), ms_bands)
    with pytest.raises(InputFileError, match=f"^{path}: does not overlap {ms}$"):
        open_readers({"ms": SceneInput(ms), "sar": SceneInput(path)},
                     {"ms": make_predictor("ms", ms_bands).info, "sar": sar.info})
    # RPC-only (optical and SAR L1 products): warped through GDAL's RPC transformer.
    rpc = RPC(height_off=0, height_scale=100, lat_off=45.0, lat_scale=0.004, long_off=3.0,
              long_scale=0.006, line_off=48, line_scale=48, samp_off=48, samp_scale=48,
              line_num_coeff=[0, 0, -1] + [0] * 17, line_den_coeff=[1] + [0] * 19,
              samp_num_coeff=[0, 1] + [0] * 18, samp_den_coeff=[1] + [0] * 19)
    with rasterio.open(tmp_path / "rpc.tif", "w", driver="GTiff", width=96, height=96, count=2,
                       dtype="float32", rpcs=rpc, nodata=np.nan) as dst:
        dst.write(s1_db(96, seed=7))
        dst.descriptions = tuple(S1_BANDS)
    from_rpc = predict_lazy(sar, tmp_path / "rpc.tif")
    assert from_rpc.rio.crs.to_epsg() == 32631
    assert (from_rpc.compute(scheduler="sync").values != 255).mean() > 0.5
    nothing = write_scene(tmp_path / "nothing.tif", s1_db(32), list(S1_BANDS), crs=None)
    with pytest.raises(InputFileError, match="no georeferencing .* gdal_translate -a_srs"):
        predict_lazy(sar, nothing)


@pytest.mark.slow
def test_xarray_input_matches_the_file(ms4: Predictor, s2_subset: np.ndarray,
                                       tmp_path: Path) -> None:
    import rioxarray  # noqa: F401

    array = spyndex.datasets.open("sentinel").transpose("band", "y", "x")
    array = array.rio.write_crs("EPSG:32631").rio.write_transform(
        from_origin(*ORIGIN, 10.0, 10.0))
    path = write_scene(tmp_path / "s2.tif", s2_subset, S2_SUBSET_BANDS, nodata=0)
    predict_to_file(ms4, path, tmp_path / "file.tif")
    from_array = predict_to_file(ms4, array, tmp_path / "array.tif")
    assert (read(tmp_path / "array.tif") == read(tmp_path / "file.tif")).all()
    assert from_array.checks["ms"].source == "xarray input"
    lazy = predict_lazy(ms4, array.chunk({"x": 100, "y": 100}))
    assert (lazy.compute(scheduler="threads").values == read(tmp_path / "file.tif")[0]).all()
    with pytest.raises(InputFileError, match="xarray input: has no CRS"):
        predict_lazy(ms4, spyndex.datasets.open("sentinel"))


@pytest.mark.slow
def test_cli_inspect_and_predict_options(ms4_run: Path, s2_subset: np.ndarray,
                                         tmp_path: Path) -> None:
    unit = write_scene(tmp_path / "s2_01.tif", (s2_subset / 1e4).astype(np.float32),
                       S2_SUBSET_BANDS)
    runner = CliRunner()
    result = runner.invoke(main, ["inspect", str(unit), "--checkpoint", str(ms4_run),
                                  "--modality", "ms"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[1].split()[:2] == ["band", "unit"]
    assert lines[2].startswith("B02    reflectance 0-1") and lines[2].endswith("units")
    assert lines[-1].startswith("predict refuses this scene: band B0")
    args = ["predict", "--checkpoint", str(ms4_run), "--ms", str(unit), "-o",
            str(tmp_path / "m.tif"), "--no-progress"]
    result = runner.invoke(main, args)
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
    assert "pass --ms-scale 10000" in result.output and not (tmp_path / "m.tif").exists()
    result = runner.invoke(main, [*args, "--ms-scale", "10000", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["checks"]["ms"]["problems"] == []
    result = runner.invoke(main, [*args, "--force", "--overwrite"])
    assert result.exit_code == 0 and "warning: mapped with --force" in result.output


def test_summary_is_json_serialisable_with_checks(sar: Predictor, tmp_path: Path) -> None:
    summary = predict_to_file(sar, write_scene(tmp_path / "s.tif", s1_db(48), list(S1_BANDS)),
                              tmp_path / "m.tif")
    check = json.loads(json.dumps(summary.to_dict()))["checks"]["sar"]
    assert check["valid_share"] == 1.0 and check["units"] == "dB"
    assert [b["band"] for b in check["bands"]] == ["VV", "VH"]
    assert torch.tensor([b["decades"] for b in check["bands"]]).abs().max() < 0.5


@pytest.mark.parametrize("res", [10.0, 20.0])  # 20 m: warped onto the 10 m grid
def test_untagged_fill_is_refused_until_named(sar: Predictor, tmp_path: Path,
                                              res: float) -> None:
    """SNAP/Earth Engine exports: 0 in every band outside the swath, not tagged nodata."""
    tagged = s1_db(96)
    tagged[:, :, :30] = np.nan  # the swath's edge, as a tagged export has it
    filled = np.nan_to_num(tagged, nan=0.0)
    ref = write_scene(tmp_path / "tagged.tif", tagged, list(S1_BANDS), res=res)
    path = write_scene(tmp_path / "fill.tif", filled, list(S1_BANDS), res=res, nodata=None)
    with pytest.raises(InputFileError, match=r"fill.tif: \d+% of the sampled valid pixels "
                                             r"hold 0 in every band, .* pass nodata=0 \(or "
                                             r"force=True to map anyway\)$"):
        predict_to_file(sar, path, tmp_path / "m.tif")
    assert not (tmp_path / "m.tif").exists()
    settings = MapSettings.of(probabilities=tmp_path / "p.tif")
    named = predict_to_file(sar, SceneInput(path, nodata=0), tmp_path / "m.tif", settings)
    predict_to_file(sar, ref, tmp_path / "ref.tif", settings.replace(
        probabilities=tmp_path / "ref.p.tif"))
    assert named.checks["sar"].problems == []
    assert named.mapped_pixels < 0.75 * named.pixels  # the fill is nodata, not land
    assert (read(tmp_path / "m.tif") == read(tmp_path / "ref.tif")).all()
    np.testing.assert_array_equal(read(tmp_path / "p.tif"), read(tmp_path / "ref.p.tif"))


def test_cli_nodata_option(tmp_path: Path) -> None:
    from test_inference import saved_sar_model

    filled = s1_db(96)
    filled[:, :, :30] = 0.0
    path = write_scene(tmp_path / "fill.tif", filled, list(S1_BANDS), nodata=None)
    args = ["predict", "--checkpoint", str(saved_sar_model(tmp_path / "sar.pt")), "--sar",
            str(path), "-o", str(tmp_path / "m.tif"), "--no-progress"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
    assert result.output.strip().endswith("pass --nodata 0 (or --force to map anyway)")
    result = CliRunner().invoke(main, [*args, "--nodata", "0", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["mapped_pixels"] < 96 * 66 + 96 * 8  # fill unmapped
    result = CliRunner().invoke(main, [*args, "--nodata", "ms=0"])
    assert result.exit_code == 2 and "no 'ms' scene given" in result.output


def test_impossible_values_are_refused_whatever_their_share(sar: Predictor, tmp_path: Path
                                                            ) -> None:
    """dB with an int16 export's untagged -32768 fill (NaN elsewhere): no backscatter is
    -32768 dB. A block too small for the fill-share check, or between the sampled windows
    (found while mapping), is refused with the nodata fix; named, it is nodata."""
    data = s1_db(576)[:, :32]
    data[:, :, :8] = np.nan
    sampled, missed = data.copy(), data.copy()
    sampled[:, 4:12, 300:308] = -32768  # 0.3% of the scene, inside a sampled window
    missed[0, 10:12, 66:70] = -32768  # one band, between the windows at 0-64 and 73-137
    assert not any(w.col_off <= 66 < w.col_off + w.width for w in sample_windows(32, 576))
    for where, scene, block in (("of the sample", sampled, np.s_[4:12, 300:308]),
                                ("in rows 0-32", missed, np.s_[10:12, 66:70])):
        out = tmp_path / "map.tif"
        path = write_scene(tmp_path / "s1.tif", scene, list(S1_BANDS))
        with pytest.raises(InputFileError, match=rf"s1.tif: \d+ pixels {where} hold values "
                                                 r"that no SAR backscatter .* most often "
                                                 r"-32768 \(band VV\); .*pass nodata=-32768 "
                                                 r"\(or force=True to map anyway\)$"):
            predict_to_file(sar, path, out)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["s1.tif"]  # nothing left
        named = predict_to_file(sar, SceneInput(path, nodata=-32768), out)
        assert named.checks["sar"].problems == [] and (read(out)[0][block] == 255).all()
        forced = predict_to_file(sar, path, out, MapSettings.of(overwrite=True, force=True))
        assert forced.mapped_pixels > named.mapped_pixels  # --force maps them, as asked
        for written in tmp_path.iterdir():
            written.unlink()


def test_saturated_pixels_are_unavailable_not_refused(sar: Predictor, tmp_path: Path) -> None:
    """Sentinel-2's saturation code, DN 65535 in any band, marks pixels without a
    measurement: unavailable like nodata (nodata in an MS map, mapped from SAR in a fused
    one), where it used to refuse the scene as an impossible value; other impossible
    values are still refused."""
    ms = (texture(4, 64, 9) * 200 + 2000).astype(np.uint16)
    ms[3, 8:16, 20:40] = 65535  # B08 saturated over a bright roof
    ms[:, 40:44, 4:12] = 65535
    saturated = (ms == 65535).any(axis=0)
    path = write_scene(tmp_path / "ms.tif", ms, S2_SUBSET_BANDS, nodata=0)
    model = make_predictor("ms", S2_SUBSET_BANDS)
    reader = open_readers({"ms": SceneInput(path)}, {"ms": model.info})[1]["ms"]
    assert (reader.read_raw(reader.grid.window)[1] == ~saturated).all()
    summary = predict_to_file(model, path, tmp_path / "ms_map.tif")
    assert summary.checks["ms"].problems == []
    codes = read(tmp_path / "ms_map.tif")[0]
    assert (codes[saturated] == CLASS_NODATA).all() and (codes[~saturated] != CLASS_NODATA).any()
    sar_path = write_scene(tmp_path / "sar.tif", s1_db(64), list(S1_BANDS))
    predict_to_file({"ms": model, "sar": sar}, {"ms": path, "sar": sar_path},
                    tmp_path / "fused.tif", MapSettings.of(source=tmp_path / "source.tif"))
    source = read(tmp_path / "source.tif")[0]
    assert (source[saturated] == SOURCE_CODES["sar"]).all()
    assert (source[~saturated] == FUSED).all()
    ms[0, 50:52, 50:52] = 50000  # no reflectance is 5 (x 10000), nor a saturation code
    bad = write_scene(tmp_path / "bad.tif", ms, S2_SUBSET_BANDS, nodata=0)
    with pytest.raises(InputFileError, match=r"bad.tif: 4 pixels of the sample hold values "
                                             r"that no reflectance .* most often 50000 "
                                             r"\(band B02\); .*pass nodata=50000"):
        predict_to_file(model, bad, tmp_path / "bad_map.tif")


@pytest.mark.slow
def test_what_clouds_leave_of_a_scene_keeps_its_band_order(eurosat_root: Path,
                                                           tmp_path: Path) -> None:
    """75% cloud cover masked by the scene's SCL: the clear rest (8% of the scene, half of
    it sea) has its B06 median below B01's, as water has, which the order check used to
    refuse as permuted bands; the land in it keeps B06 above B01 at the bright end (p98),
    and a real permutation of the same rest is still refused."""
    training = EuroSATMSSAR(eurosat_root, "train", modalities=("ms",))
    model = make_predictor("ms", list(S2_BANDS))
    model.stats.profile = compute_stats(training, "ms", list(S2_BANDS), progress=False).profile
    make_scene(tmp_path / "s", size=320, seed=204, cloud_cover=0.75)
    masked = SceneInput(tmp_path / "s" / "ms.tif", mask=tmp_path / "s" / "scl.tif")
    reader = open_readers({"ms": masked}, {"ms": model.info})[1]["ms"]
    check = check_scene(model, reader, "ms")
    assert check.problems == [] and check.valid_share < 0.1
    figures = {b.band: b.scene for b in check.bands}
    assert figures["B06"][1] < figures["B01"][1] / 10 ** REVERSED_DECADES  # medians
    assert figures["B06"][2] > figures["B01"][2]  # bright ends
    permuted = replace(masked, bands=S2_BANDS[::-1])
    reader = open_readers({"ms": permuted}, {"ms": model.info})[1]["ms"]
    assert check_scene(model, reader, "ms").problems[0].startswith("band order looks permuted")


def test_windows_read_together_open_each_file_once(sar: Predictor, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The scene checks' sampled windows: each file opened once, the values of read_raw."""
    db = s1_db(128, seed=3)
    vv = write_scene(tmp_path / "s1_VV.tif", db[:1], None)
    coarse = db[1:].reshape(1, 64, 2, 64, 2).mean(axis=(2, 4))
    vh = write_scene(tmp_path / "s1_VH.tif", coarse, None, res=20.0)  # warped onto VV's grid
    reader = open_readers({"sar": SceneInput([vv, vh])}, {"sar": sar.info})[1]["sar"]
    assert reader.warped == {str(vh)}
    windows = sample_windows(reader.grid.height, reader.grid.width)
    opened: list[str] = []
    real_open = rasterio.open
    monkeypatch.setattr(rasterio, "open",
                        lambda path, *a, **k: opened.append(str(path)) or real_open(path, *a, **k))
    together = list(reader.read_raw_windows(windows))
    assert sorted(opened) == sorted([str(vv), str(vh)])
    for window, (data, valid) in zip(windows, together, strict=True):
        one, one_valid = reader.read_raw(window)
        assert valid.any() and (valid == one_valid).all()
        np.testing.assert_array_equal(data, one)
    assert len(windows) == 4 and len(opened) == 2 + 2 * 4  # a 128 px scene: 4 tiles
