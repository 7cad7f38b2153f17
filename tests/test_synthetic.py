"""Synthetic data: published layouts, GeoTIFF facts, determinism, learnability, the CLI."""

import filecmp
import re
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from rasterio.features import rasterize
from rasterio.warp import transform_bounds

from discomkd_geo.cli import main
from discomkd_geo.constants import CLASS_NODATA, EUROSAT_CLASSES, EUROSAT_COLORS, S1_BANDS, S2_BANDS
from discomkd_geo.data.eurosat import EuroSATMSSAR, EuroSATOptions
from discomkd_geo.data.synthetic import (
    land_surface,
    make_eurosat,
    make_scene,
    ms_digital_numbers,
    render_class,
    sar_sigma0,
)
from discomkd_geo.errors import OutputExistsError

SPLITS = ("train", "val", "test")


def _files(root: Path) -> list[Path]:
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


# --------------------------------------------------------------------------- layouts
@pytest.mark.parametrize(("fixture", "layout"), [("eurosat_root", "eurosat"),
                                                 ("copernicus_root", "copernicus")])
def test_published_layout_is_read_by_the_dataset(fixture: str, layout: str,
                                                 request: pytest.FixtureRequest) -> None:
    root = request.getfixturevalue(fixture)
    seen: dict[str, set[str]] = {}
    for split in SPLITS:
        ds = EuroSATMSSAR(root, split=split,
                          options=EuroSATOptions(layout="auto", split_mode="published"))
        assert ds.layout == layout
        # stratified 60/20/20 of 10 per class
        assert np.bincount(ds.targets, minlength=10).tolist() == [{"train": 6}.get(split, 2)] * 10
        for ms, sar, i, label in zip(ds.paths["ms"], ds.paths["sar"], ds.ids, ds.targets,
                                     strict=True):
            assert Path(ms).name == Path(sar).name == f"{i}.tif"
            assert Path(ms).parent.name == EUROSAT_CLASSES[label]
            assert ms.startswith(str(root / EuroSATMSSAR.directories[layout]["ms"]))
            assert sar.startswith(str(root / EuroSATMSSAR.directories[layout]["sar"]))
        sample = ds[0]
        assert sample["image_ms"].shape == (13, 64, 64)
        assert sample["image_sar"].shape == (2, 64, 64)
        seen[split] = set(ds.ids)
    assert sum(map(len, seen.values())) == len(set().union(*seen.values())) == 100
    options = EuroSATOptions(split_mode="random")
    random = [len(EuroSATMSSAR(root, split=s, options=options)) for s in SPLITS]
    assert sum(random) == 100


def test_split_lists_use_the_published_format(eurosat_root: Path,
                                              copernicus_root: Path) -> None:
    line = re.compile(rf"^({'|'.join(EUROSAT_CLASSES)})_([1-9][0-9]*)\.jpg$")
    for split in SPLITS:
        lines = (eurosat_root / f"eurosat-{split}.txt").read_text().splitlines()
        assert lines and all(line.match(x) for x in lines)
        s2 = (copernicus_root / "eurosat_s2" / f"eurosat-{split}.txt").read_text()
        assert s2 == (copernicus_root / "eurosat_s1" / f"eurosat-{split}.txt").read_text()
        assert all(line.match(x) for x in s2.splitlines())


def test_patches_are_georeferenced_twins(eurosat_root: Path) -> None:
    ds = EuroSATMSSAR(eurosat_root, split="train", options=EuroSATOptions(split_mode="published"))
    zones = set()
    for ms_path, sar_path in list(zip(ds.paths["ms"], ds.paths["sar"], strict=True))[::6]:
        with rasterio.open(ms_path) as ms, rasterio.open(sar_path) as sar:
            assert (ms.count, ms.dtypes[0], ms.shape) == (13, "uint16", (64, 64))
            assert (sar.count, sar.dtypes[0], sar.shape) == (2, "float32", (64, 64))
            assert ms.descriptions == S2_BANDS and sar.descriptions == S1_BANDS
            assert ms.crs == sar.crs and ms.transform == sar.transform
            assert 32631 <= ms.crs.to_epsg() <= 32636
            assert ms.res == (10.0, 10.0)
            zones.add(ms.crs.to_epsg())
            dn, db = ms.read(), sar.read()
        assert dn.min() > 0 and 200 < np.median(dn[1:4]) < 3000  # visible bands, L1C DN
        assert np.isfinite(db).all() and -40 < db.mean() < 5
        assert (db[0].mean() > db[1].mean())  # VV above VH, as over land and water
    assert len(zones) > 1


def test_render_class_spectra_look_physical() -> None:
    """Vegetation: red edge and NIR plateau; water: dark in NIR/SWIR; SAR: water lowest."""
    b = {name: i for i, name in enumerate(S2_BANDS)}
    mean = {}
    for name in ("Forest", "SeaLake", "Industrial"):
        ms, sar = render_class(EUROSAT_CLASSES.index(name), 64, np.random.default_rng(5))
        assert ms.dtype == np.uint16 and sar.dtype == np.float32
        mean[name] = (ms.reshape(13, -1).mean(1), sar.reshape(2, -1).mean(1))
    forest, water, built = (mean[n][0] for n in ("Forest", "SeaLake", "Industrial"))
    assert forest[b["B08"]] > 3 * forest[b["B04"]]  # NIR plateau above red
    assert forest[b["B07"]] > 1.5 * forest[b["B05"]]  # red edge
    assert water[b["B08"]] < water[b["B03"]] and water[b["B11"]] < 300
    assert built[b["B04"]] > forest[b["B04"]] and built[b["B11"]] > forest[b["B11"]]
    assert mean["SeaLake"][1][0] < mean["Forest"][1][0] - 5  # VV dB
    assert mean["Forest"][1][1] > mean["SeaLake"][1][1] + 5  # VH dB


# --------------------------------------------------------------------------- behaviour
def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    make_eurosat(tmp_path / "a", per_class=2, seed=3)
    make_eurosat(tmp_path / "b", per_class=2, seed=3)
    make_eurosat(tmp_path / "c", per_class=2, seed=4)
    files = _files(tmp_path / "a")
    assert len(files) == 2 * 2 * 10 + 3 and files == _files(tmp_path / "b")
    match, mismatch, errors = filecmp.cmpfiles(tmp_path / "a", tmp_path / "b", files,
                                               shallow=False)
    assert not mismatch and not errors
    tifs = [f for f in files if f.suffix == ".tif"]
    assert len(filecmp.cmpfiles(tmp_path / "a", tmp_path / "c", tifs, shallow=False)[1]) \
        == len(tifs)

    make_scene(tmp_path / "s1", size=64, seed=7)
    make_scene(tmp_path / "s2", size=64, seed=7)
    make_scene(tmp_path / "s3", size=64, seed=8)
    rasters = ["ms.tif", "sar.tif", "truth.tif"]
    assert filecmp.cmpfiles(tmp_path / "s1", tmp_path / "s2", rasters, shallow=False)[0] == rasters
    differ = filecmp.cmpfiles(tmp_path / "s1", tmp_path / "s3", rasters, shallow=False)[1]
    assert {"ms.tif", "sar.tif"} <= set(differ)


def test_bad_arguments_and_existing_output(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="per_class"):
        make_eurosat(tmp_path / "x", per_class=0)
    with pytest.raises(ValueError, match="layout"):
        make_eurosat(tmp_path / "x", per_class=1, layout="sentinelhub")
    with pytest.raises(ValueError, match="size"):
        make_scene(tmp_path / "x", size=32)
    assert not (tmp_path / "x").exists()
    (tmp_path / "empty").mkdir()
    make_eurosat(tmp_path / "empty", per_class=1)  # an empty directory counts as absent
    with pytest.raises(OutputExistsError, match="already exists"):
        make_eurosat(tmp_path / "empty", per_class=2)
    make_eurosat(tmp_path / "empty", per_class=2, overwrite=True)
    published = EuroSATOptions(split_mode="published")
    assert len(EuroSATMSSAR(tmp_path / "empty", split="train", options=published)) == 10
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left


def _mean_features(clouds: bool) -> dict[str, np.ndarray]:
    """Per image: MS log mean spectrum minus its band mean (shape), SAR mean dB; 40/class."""
    features: dict[str, list[np.ndarray]] = {"ms": [], "sar": []}
    for label in range(10):
        for n in range(40):
            ms, sar = render_class(label, 64, np.random.default_rng([0, label, n]), clouds)
            spectrum = np.log(ms.reshape(13, -1).astype(np.float64)).mean(1)
            features["ms"].append(spectrum - spectrum.mean())
            features["sar"].append(sar.reshape(2, -1).mean(1))
    return {m: np.stack(v) for m, v in features.items()}


def _nearest_mean_accuracy(x: np.ndarray) -> float:
    """Nearest class mean of standardised features, first 30 images per class to fit."""
    y = np.repeat(np.arange(10), 40)
    fit = np.tile(np.arange(40), 10) < 30
    z = (x - x[fit].mean(0)) / x[fit].std(0)
    means = np.stack([z[fit & (y == k)].mean(0) for k in range(10)])
    dist = ((z[~fit][:, None] - means[None]) ** 2).sum(-1)
    return float((dist.argmin(1) == y[~fit]).mean())


@pytest.mark.slow
def test_mean_spectrum_classifier_ms_far_better_than_sar_until_clouds() -> None:
    """Nearest class mean of per-image mean bands: clear MS >> SAR > chance (0.1), and the
    thin clouds on some MS images cost MS (never SAR: one generator per sensor)."""
    clear, cloudy = _mean_features(clouds=False), _mean_features(clouds=True)
    assert np.array_equal(clear["sar"], cloudy["sar"])
    accuracy = {"ms": _nearest_mean_accuracy(clear["ms"]),
                "ms_cloudy": _nearest_mean_accuracy(cloudy["ms"]),
                "sar": _nearest_mean_accuracy(clear["sar"])}
    print(f"\nnearest class-mean accuracy: {accuracy}")
    assert accuracy["ms"] > 0.65
    assert accuracy["sar"] > 0.2
    assert accuracy["ms"] - accuracy["sar"] > 0.25
    assert accuracy["ms_cloudy"] < accuracy["ms"] - 0.1


def test_moisture_is_seen_by_both_sensors() -> None:
    """The shared latent: a wetter surface darkens MS SWIR and brightens SAR, same sample."""
    wet, dry = np.random.default_rng(3), np.random.default_rng(3)
    surface = land_surface(EUROSAT_CLASSES.index("AnnualCrop"), (64, 64), wet)
    dried = land_surface(EUROSAT_CLASSES.index("AnnualCrop"), (64, 64), dry)
    dried.moisture = np.full_like(surface.moisture, 0.05)
    surface.moisture = np.full_like(surface.moisture, 0.45)
    b11 = S2_BANDS.index("B11")
    ms = {k: ms_digital_numbers(s, np.random.default_rng(1), clouds=False)[b11].mean()
          for k, s in (("wet", surface), ("dry", dried))}
    sar = {k: sar_sigma0(s, np.random.default_rng(1))[0].mean()
           for k, s in (("wet", surface), ("dry", dried))}
    assert ms["wet"] < 0.8 * ms["dry"]
    assert 10 * np.log10(sar["wet"] / sar["dry"]) > 3  # dB


# --------------------------------------------------------------------------- scene
def test_scene_grids_nodata_and_georeferencing(scene_dir: Path) -> None:
    with rasterio.open(scene_dir / "truth.tif") as truth, \
            rasterio.open(scene_dir / "ms.tif") as ms, rasterio.open(scene_dir / "sar.tif") as sar:
        assert (truth.count, truth.dtypes[0], truth.nodata) == (1, "uint8", CLASS_NODATA)
        assert truth.colormap(1)[1] == (*EUROSAT_COLORS[1], 255)
        assert (ms.count, ms.dtypes[0], ms.nodata) == (13, "uint16", 0)
        assert ms.descriptions == S2_BANDS
        assert (sar.count, sar.dtypes[0]) == (2, "float32") and np.isnan(sar.nodata)
        assert sar.descriptions == S1_BANDS
        assert ms.crs == truth.crs and ms.transform == truth.transform
        assert ms.shape == truth.shape == (256, 256) and ms.res == (10.0, 10.0)
        assert truth.crs.to_epsg() in range(32631, 32637)
        assert sar.crs.to_epsg() == 4326 and sar.transform != truth.transform
        for src in (truth, ms, sar):
            assert src.block_shapes[0] == (256, 256) and src.compression is not None
        # SAR pixels measure about 10 m on the ground: its grid spans about as many pixels
        west, south, east, north = transform_bounds(truth.crs, sar.crs, *truth.bounds)
        assert abs((east - west) / sar.res[0] - 256) < 20
        assert abs((north - south) / sar.res[1] - 256) < 20
        # the SAR footprint covers the scene
        sw, ss, se, sn = sar.bounds
        assert sw <= west and se >= east and ss <= south and sn >= north

        t, image, radar = truth.read(1), ms.read(), sar.read()
    ms_void = (image == 0).all(0)
    assert ((image == 0).any(0) == ms_void).all()  # nodata is all-bands
    assert ms_void[:8].all() and ms_void[-1, -1] and 0.05 < ms_void.mean() < 0.2
    sar_void = np.isnan(radar).all(0)
    assert (np.isnan(radar).any(0) == sar_void).all()
    assert sar_void[:, -8:].all() and sar_void[0, 0] and 0.05 < sar_void.mean() < 0.3
    assert np.isfinite(radar[:, ~sar_void]).all() and -45 < np.nanmean(radar) < 5
    assert (t != CLASS_NODATA).all()


def test_scene_truth_matches_regions(scene_dir: Path) -> None:
    regions = gpd.read_file(scene_dir / "regions.gpkg")
    with rasterio.open(scene_dir / "truth.tif") as truth:
        assert regions.crs == truth.crs
        codes = truth.read(1)
        burnt = rasterize(zip(regions.geometry, regions.class_code, strict=True),
                          out_shape=truth.shape, transform=truth.transform, fill=CLASS_NODATA,
                          dtype="uint8")
    assert (burnt == codes).all()
    assert set(np.unique(codes)) == set(regions.class_code)
    assert list(regions.class_name) == [EUROSAT_CLASSES[c] for c in regions.class_code]
    for geometry in regions.geometry:  # a 64 px (640 m) window fits in every region
        assert geometry.buffer(-320).area > 0


# --------------------------------------------------------------------------- CLI
def test_cli_synth(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "data"
    result = runner.invoke(main, ["synth", "eurosat", str(out), "--per-class", "1",
                                  "--layout", "copernicus"])
    assert result.exit_code == 0, result.output
    assert "10 MS/SAR pairs" in result.output
    assert len(list((out / "eurosat_s1" / "all_imgs").rglob("*.tif"))) == 10

    again = runner.invoke(main, ["synth", "eurosat", str(out), "--per-class", "1"])
    assert again.exit_code != 0
    assert again.output.strip().splitlines() == [
        f"Error: {out}: already exists; pass --overwrite to replace it"]
    replaced = runner.invoke(main, ["synth", "eurosat", str(out), "--per-class", "1",
                                    "--overwrite"])
    assert replaced.exit_code == 0 and (out / "EuroSAT-SAR").is_dir()

    zero = runner.invoke(main, ["synth", "eurosat", str(tmp_path / "z"), "--per-class", "0"])
    assert zero.exit_code != 0 and "--per-class" in zero.output
    assert not (tmp_path / "z").exists()
    unknown = runner.invoke(main, ["synth", "mars", str(tmp_path / "m")])
    assert unknown.exit_code != 0 and "No such command 'mars'" in unknown.output

    scene = runner.invoke(main, ["synth", "scene", str(tmp_path / "s"), "--size", "64"])
    assert scene.exit_code == 0, scene.output
    assert {p.name for p in (tmp_path / "s").iterdir()} == {"ms.tif", "sar.tif", "truth.tif",
                                                            "regions.gpkg"}
    small = runner.invoke(main, ["synth", "scene", str(tmp_path / "t"), "--size", "10"])
    assert small.exit_code != 0 and "--size" in small.output
