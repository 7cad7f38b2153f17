"""Accuracy assessment and error-adjusted areas (``discomkd_geo.assessment``, ``sample``,
``assess``): the estimators against Olofsson et al.'s (2014) worked example, the honesty
of their intervals on the demo map, and the chain sample -> label -> assess on real files.
"""

import json
import warnings
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from rasterio.transform import from_origin
from shapely.geometry import Point, box

from discomkd_geo.assessment import allocate, sample_size, stratified_estimates
from discomkd_geo.assessment.assess import POST_STRATIFIED, STRATIFIED, assess
from discomkd_geo.assessment.estimators import DEFAULT_INTERVAL, INTERVALS, Z95, interval
from discomkd_geo.assessment.reference import raster_labels
from discomkd_geo.assessment.sampling import ALLOCATIONS, draw
from discomkd_geo.assessment.strata import centres_of
from discomkd_geo.cli import main
from discomkd_geo.demo import DEMO_TILES
from discomkd_geo.errors import SettingsError
from discomkd_geo.inference.classmap import read_class_map, row_areas

DATA = Path(__file__).parent / "data"
CLASSES = ["A", "B", "C"]
UTM = "EPSG:32631"


def invoke(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


# ------------------------------------------------------------------- the estimators
#: Olofsson et al. (2014), section 5's example: sample counts (rows: map class, columns:
#: reference class) of deforestation, forest gain, stable forest, stable non-forest, and
#: the mapped areas in 30 m pixels (their Table 8, p. 55). The counts and areas are as in
#: the example of the R package mapaccuracy (github.com/hagc/mapaccuracy,
#: man/olofsson.Rd); the published figures asserted below as in the tests of
#: github.com/boothmanrylan/accuracyAssessmentTools (tests/test_olofsson.py), which
#: transcribe them from the paper.
OLOFSSON_COUNTS = np.array([[66, 0, 5, 4], [0, 55, 8, 12], [1, 0, 153, 11], [2, 1, 9, 313]])
OLOFSSON_PIXELS = np.array([200_000, 150_000, 3_200_000, 6_450_000])


def test_olofsson_2014_worked_example() -> None:
    """The paper's published figures, and the formulas worked by hand for some of them.

    The paper's intervals are Wald's (``estimate +- 1.96 SE``): the ``wald`` kind.
    """
    weights = OLOFSSON_PIXELS / OLOFSSON_PIXELS.sum()
    e = stratified_estimates(OLOFSSON_COUNTS, weights)
    wald = INTERVALS["wald"]
    total_ha = OLOFSSON_PIXELS.sum() * 0.09
    # By hand: p_.1 = sum_i W_i n_i1 / n_i. and its standard error.
    p1 = 0.02 * 66 / 75 + 0.32 * 1 / 165 + 0.645 * 2 / 325
    se1 = np.sqrt(0.02 ** 2 * (66 / 75) * (9 / 75) / 74
                  + 0.32 ** 2 * (1 / 165) * (164 / 165) / 164
                  + 0.645 ** 2 * (2 / 325) * (323 / 325) / 324)
    assert e.area[0] == pytest.approx(p1) and e.area_se[0] == pytest.approx(se1)
    assert e.proportions[0, 0] == pytest.approx(0.02 * 66 / 75)
    assert e.users_se[2] == pytest.approx(np.sqrt((153 / 165) * (12 / 165) / 164))
    pa1 = 0.02 * 66 / 75 / p1
    pa1_var = (0.02 ** 2 * (1 - pa1) ** 2 * (66 / 75) * (9 / 75) / 74
               + pa1 ** 2 * (0.32 ** 2 * (1 / 165) * (164 / 165) / 164
                             + 0.645 ** 2 * (2 / 325) * (323 / 325) / 324)) / p1 ** 2
    assert e.producers[0] == pytest.approx(pa1)
    assert e.producers_se[0] == pytest.approx(np.sqrt(pa1_var))
    # Published (section 5.2.2, p. 54): areas in ha +- 1.96 SE, to the hectare, and
    # deforestation's in pixels, 235,086 +- 68,418.
    for k, (area, half) in enumerate([(21_158, 6_158), (11_686, 3_756), (285_770, 15_510),
                                      (581_386, 16_282)]):
        assert round(e.area[k] * total_ha) == area
        assert round(1.96 * e.area_se[k] * total_ha) == half
    assert round(e.area[0] * OLOFSSON_PIXELS.sum()) == 235_086
    assert round(1.96 * e.area_se[0] * OLOFSSON_PIXELS.sum()) == 68_418
    low, high = wald.area(e)
    np.testing.assert_allclose(high - e.area, Z95 * e.area_se)
    np.testing.assert_allclose(e.area - low, Z95 * e.area_se)
    # Table 9 (p. 55): the estimated area proportions.
    np.testing.assert_allclose(np.round(e.proportions, 4), [
        [0.0176, 0.0, 0.0013, 0.0011], [0.0, 0.011, 0.0016, 0.0024],
        [0.0019, 0.0, 0.2967, 0.0213], [0.004, 0.002, 0.0179, 0.6212]])
    # Section 5.2.1 (p. 54): accuracies +- 1.96 SE. Producer's half-widths are printed as
    # 0.21, 0.23, 0.03, 0.01; the paper's own equation (7) gives 0.254 and 0.018 for
    # forest gain and stable non-forest (as both sources above found), asserted here.
    assert round(float(e.overall), 2) == 0.95 and round(1.96 * float(e.overall_se), 2) == 0.02
    assert np.round(e.users, 2).tolist() == [0.88, 0.73, 0.93, 0.96]
    assert np.round(1.96 * e.users_se, 2).tolist() == [0.07, 0.10, 0.04, 0.02]
    assert np.round(e.producers, 2).tolist() == [0.75, 0.85, 0.93, 0.96]
    assert np.round(1.96 * e.producers_se, 2).tolist() == [0.21, 0.25, 0.03, 0.02]
    low, high = wald.overall(e)
    assert round(float(high - e.overall), 2) == 0.02
    # Batched: the same estimates for a stack of matrices.
    stacked = stratified_estimates(np.stack([OLOFSSON_COUNTS] * 3), weights)
    np.testing.assert_allclose(stacked.area, np.tile(e.area, (3, 1)))


def _constrained_statistic(x: np.ndarray, n: np.ndarray, c: np.ndarray,
                           value: float) -> float:
    """The score statistic of ``c1 q1 + c2 q2 = value`` for two binomial strata, by brute
    force: the shares' likelihood maximised over a fine grid of ``q1``."""
    q1 = np.linspace(1e-9, 1 - 1e-9, 400_001)
    q2 = (value - c[0] * q1) / c[1]
    q1, q2 = q1[(q2 > 0) & (q2 < 1)], q2[(q2 > 0) & (q2 < 1)]
    loglik = (x[0] * np.log(q1) + (n[0] - x[0]) * np.log(1 - q1)
              + x[1] * np.log(q2) + (n[1] - x[1]) * np.log(1 - q2))
    best = np.argmax(loglik)
    variance = (c[0] ** 2 * q1[best] * (1 - q1[best]) / n[0]
                + c[1] ** 2 * q2[best] * (1 - q2[best]) / n[1])
    return float((c @ (x / n) - value) ** 2 / variance)


def test_score_intervals() -> None:
    """Wilson's interval for one stratum; for two, bounds where the score statistic, its
    constrained maximum likelihood found by brute force, equals 1.96^2."""
    assert DEFAULT_INTERVAL == "score"
    score = INTERVALS["score"]
    # One stratum: the area and the user's accuracy are Wilson's interval of 3 in 50.
    e = stratified_estimates(np.array([[47, 3], [0, 0]]), [1.0, 0.0])
    centre, half = (3 + Z95 ** 2 / 2) / (50 + Z95 ** 2), Z95 / (50 + Z95 ** 2) * np.sqrt(
        3 * 47 / 50 + Z95 ** 2 / 4)
    low, high = score.area(e)
    assert low[1] == pytest.approx(centre - half) and high[1] == pytest.approx(centre + half)
    low, high = score.users(e)
    assert low[0] == pytest.approx(1 - centre - half) and high[0] == pytest.approx(
        1 - centre + half)
    # Two strata, the second (0.7 of the area) with none of class 1 among its 40 points.
    counts, weights = np.array([[12, 38], [0, 40]]), np.array([0.3, 0.7])
    e = stratified_estimates(counts, weights)
    x, n = counts[:, 0].astype(float), counts.sum(1).astype(float)
    low, high = score.area(e)
    assert low[0] < e.area[0] < high[0]
    for bound in (low[0], high[0]):
        assert _constrained_statistic(x, n, weights, bound) == pytest.approx(Z95 ** 2,
                                                                             rel=1e-3)
    # The upper bound lets the second stratum hold some of class 1; Wald's does not.
    assert high[0] > INTERVALS["wald"].area(e)[1][0] + 0.02
    # Producer's accuracy of class 0 (0.3 * 12/50 / p_.0 = 1 here, no omission seen):
    # P is tested as 0.3 (1 - P) q1 - 0.7 P q2 = 0.
    counts = np.array([[12, 38], [1, 39]])
    e = stratified_estimates(counts, weights)
    x = counts[:, 0].astype(float)
    low, high = score.producers(e)
    assert low[0] < e.producers[0] < high[0] <= 1
    for bound in (low[0], high[0]):
        c = weights * np.array([1 - bound, -bound])
        assert _constrained_statistic(x, n, c, 0.0) == pytest.approx(Z95 ** 2, rel=1e-3)
    # Olofsson et al.'s example: intervals around the estimates, batched as one by one.
    e = stratified_estimates(np.stack([OLOFSSON_COUNTS] * 2), OLOFSSON_PIXELS / 10_000_000)
    for bounds, estimate in ((score.overall(e), e.overall), (score.users(e), e.users),
                             (score.producers(e), e.producers), (score.area(e), e.area)):
        assert (bounds[0] < estimate).all() and (estimate < bounds[1]).all()
        np.testing.assert_array_equal(bounds[0][0], bounds[0][1])


def test_olofsson_2014_sample_size() -> None:
    """Their example: U = 0.7, 0.6, 0.9, 0.95 and S(O) = 0.01 give n = 641."""
    weights = OLOFSSON_PIXELS / OLOFSSON_PIXELS.sum()
    assert sample_size(weights, [0.7, 0.6, 0.9, 0.95], 0.01) == 641
    with pytest.raises(SettingsError, match="expected_ua"):
        sample_size(weights, [1.0, 0.6, 0.9, 0.95], 0.01)


def test_degenerate_strata_give_nan_not_numbers() -> None:
    counts = np.array([[3, 1], [1, 0]])  # stratum 1: one point, no variance
    e = stratified_estimates(counts, [0.5, 0.5])
    assert np.isnan(e.users_se[1]) and np.isnan(e.overall_se)
    low, high = interval(np.array([0.02]), np.array([0.05]), high=1.0)
    assert low[0] == 0.0 and high[0] == pytest.approx(0.02 + 1.959964 * 0.05)
    # a mapped stratum without points: no bounds either, and no warning on the way
    empty = stratified_estimates(np.array([[3, 1], [0, 0]]), [0.5, 0.5])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for kind in INTERVALS.values():
            for figure in (kind.overall, kind.producers, kind.area):
                assert np.isnan(figure(empty)).all()


def test_allocations() -> None:
    pixels = np.array([10_000, 1_000, 30, 0])
    assert allocate(100, pixels, "proportional").tolist() == [91, 9, 0, 0]
    # equal: 34/33/33, but C has 30 pixels: A and B share the other 70
    assert allocate(100, pixels, "equal").tolist() == [35, 35, 30, 0]
    # olofsson: 50 each where the stratum has them, the rest proportional
    olofsson = allocate(200, pixels, "olofsson", min_per_class=50)
    assert olofsson.tolist() == [120, 50, 30, 0]
    assert olofsson.sum() == 200 and (olofsson <= pixels).all()
    with pytest.raises(SettingsError, match="min_per_class"):
        allocate(100, pixels, "olofsson", min_per_class=50)
    with pytest.raises(SettingsError, match="pixels"):
        allocate(20_000, pixels, "equal")
    # the CLI offers the library's allocations
    [option] = [p for p in main.commands["sample"].params if p.name == "allocation"]
    assert sorted(option.type.choices) == sorted(ALLOCATIONS)


# ------------------------------------------------------------------- honest intervals
@pytest.fixture(scope="module")
def demo_population() -> dict:
    """The demo SAR map's pixels with the truth's class under each pixel centre.

    ``tests/data/demo_sar_map.tif`` is ``demo_out/landcover_sar.tif`` of ``discomkd-geo
    demo --out demo_out`` (the demo DisCoM-KD model, SAR only, pixel mode; commit
    0e78777), copied with ``rasterio.shutil.copy(..., driver="GTiff", COMPRESS="LZW",
    TILED="YES")``: 526 x 526 px on the SAR scene's EPSG:4326 grid, OA 0.815 against
    ``tiles/demo/truth.tif``. The population is the map's pixels that have a class and a
    truth (the scene's nodata margin left out).
    """
    classmap = read_class_map(DATA / "demo_sar_map.tif")
    with rasterio.open(classmap.path) as src:
        codes = src.read(1).astype(np.int64)
    rows, cols = np.indices(codes.shape)
    xs, ys = centres_of(classmap, rows.ravel(), cols.ravel())
    names = raster_labels(DEMO_TILES / "truth.tif", xs, ys, classmap.crs, classmap.classes)
    code_of = {name: code for code, name in enumerate(classmap.classes)}
    truth = np.array([-1 if n is None else code_of[n] for n in names]).reshape(codes.shape)
    valid = (codes != classmap.nodata) & (truth >= 0)
    codes[~valid] = classmap.nodata
    k = len(classmap.classes)
    pixel_ha = np.broadcast_to(row_areas(classmap), codes.shape) / 10_000
    return {"classes": classmap.classes, "codes": codes, "truth": truth, "k": k,
            "mapped_ha": np.bincount(codes[valid], weights=pixel_ha[valid], minlength=k),
            "true_ha": np.bincount(truth[valid], weights=pixel_ha[valid], minlength=k),
            "pixels": np.bincount(codes[valid], minlength=k)}


CLASS_NAMES = ["AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial",
               "Pasture", "PermanentCrop", "Residential", "River", "SeaLake"]

#: Coverage of the 95 % area intervals over the 400 samples of 500 (seed 0). The paper's
#: Wald intervals: AnnualCrop 0.945, Forest 0.875, HerbaceousVegetation 0.950, Highway
#: 0.9375, Industrial 0.9325, Pasture 0.940, PermanentCrop 0.965, Residential 0.8525,
#: River 0.9425, SeaLake 0.940. 16 % of Forest's area lies in the Herbaceous stratum
#: (4.9 % of it: 2.5 expected points of 50); the 29 % of samples that draw 0 or 1 of them
#: estimate Forest 10-16 % low with a standard error 0.3-0.7 times the true one, and
#: Wald's interval covers 19-57 % of them. Residential's stratum is 97.6 % Residential
#: (1.2 expected errors of 50) and 1.0 % of Industrial is Residential (0.5 points); the
#: 20 % of samples that draw neither give a standard error a tenth of the true one (Wald
#: covers 11 % of them). The score intervals (the default) cover: AnnualCrop 0.9525,
#: Forest 0.965, HerbaceousVegetation 0.9625, Highway 0.9575, Industrial 0.985, Pasture
#: 0.9575, PermanentCrop 0.9775, Residential 0.995, River 0.9475, SeaLake 0.995.
#: Over 4,000 samples each of n = 500 (another seed), n = 300 (30 per class), n = 1,000
#: (50 per class, the rest proportional) and n = 500 proportional, no class falls below
#: 0.933 (Wald: 0.684); the largest is 0.999 (docs/guide/assessment.md has the table).
#: They over-cover the classes whose user's accuracy is near 1 and whose errors hide in
#: no large stratum: where 0 of 50 points of a stratum holding 15-18 % of the map are
#: SeaLake, the data cannot rule out a few percent of it being SeaLake, and the score
#: interval says so; this population happens to hold none. Wider, not wrong.
OVER_COVERED = {"Industrial": 0.985, "Residential": 0.995, "SeaLake": 0.995}


@pytest.fixture(scope="module")
def coverage(demo_population: dict) -> dict:
    """400 stratified samples of 500 points (olofsson: 50 per class), estimated at once."""
    pop = demo_population
    k, codes, truth = pop["k"], pop["codes"], pop["truth"].ravel()
    allocation = allocate(500, pop["pixels"], "olofsson", 50, areas=pop["mapped_ha"])
    rng = np.random.default_rng(0)
    counts = []
    for _ in range(400):
        index = draw(codes, allocation, rng)
        counts.append(np.bincount(codes.ravel()[index] * k + truth[index],
                                  minlength=k * k).reshape(k, k))
    total = pop["mapped_ha"].sum()
    e = stratified_estimates(np.stack(counts), pop["mapped_ha"] / total)
    low, high = INTERVALS[DEFAULT_INTERVAL].area(e)
    true = pop["true_ha"] / total
    return {"estimates": e.area * total, "covered": ((low <= true) & (true <= high)).mean(0)}


@pytest.mark.slow
@pytest.mark.parametrize("name", CLASS_NAMES)
def test_area_intervals_cover_the_true_area(name: str, demo_population: dict,
                                            coverage: dict) -> None:
    code = demo_population["classes"].index(name)
    true = demo_population["true_ha"][code]
    estimates = coverage["estimates"][:, code]
    # Unbiased: the mean of the estimates within 3% (or 3 of its standard errors).
    tolerance = max(0.03 * true, 3 * estimates.std(ddof=1) / np.sqrt(len(estimates)))
    assert abs(estimates.mean() - true) <= tolerance
    assert coverage["covered"][code] >= 0.92


@pytest.mark.slow
@pytest.mark.parametrize("name", [
    pytest.param(name, marks=pytest.mark.xfail(
        strict=True, reason=f"over-covers ({OVER_COVERED[name]}): see OVER_COVERED"))
    if name in OVER_COVERED else name for name in CLASS_NAMES])
def test_area_intervals_are_not_too_wide(name: str, demo_population: dict,
                                         coverage: dict) -> None:
    code = demo_population["classes"].index(name)
    assert coverage["covered"][code] <= 0.98, coverage["covered"][code]


# ------------------------------------------------------------------- the chain on files
def write_map(path: Path, codes: np.ndarray, crs: str = UTM, names: list[str] = CLASSES,
              tag: str = "CLASSES") -> Path:
    """A class map (uint8, nodata 255) with its class names in its tags, 10 m pixels."""
    with rasterio.open(path, "w", driver="GTiff", width=codes.shape[1], height=codes.shape[0],
                       count=1, dtype="uint8", crs=crs, nodata=255,
                       transform=from_origin(500_000, 4_000_400, 10, 10)) as dst:
        dst.write(codes.astype(np.uint8), 1)
        dst.update_tags(**{tag: json.dumps(names) if tag == "CLASSES" else ",".join(names)})
    return path


@pytest.fixture
def scene(tmp_path: Path) -> dict[str, Path]:
    """A 40 x 40 px map (A left, B top right, C bottom right, a nodata corner) and a truth
    where the map took a strip of B for A and part of C for B."""
    codes = np.zeros((40, 40), np.uint8)
    codes[:20, 20:] = 1
    codes[20:, 20:] = 2
    codes[:4, :4] = 255
    truth = codes.copy()
    truth[:, 14:20] = 1  # omitted B, mapped as A
    truth[20:26, 20:] = 1  # C mapped where B is
    truth[:4, :4] = 0
    return {"map": write_map(tmp_path / "map.tif", codes),
            "truth": write_map(tmp_path / "truth.tif", truth, tag="classes")}


def test_sample_then_assess(scene: dict[str, Path], tmp_path: Path) -> None:
    points = tmp_path / "points.gpkg"
    code, out = invoke("sample", scene["map"], "-n", 90, "--min-per-class", 20, "--truth",
                       scene["truth"], "--seed", 1, "-o", points)
    assert code == 0, out
    frame = gpd.read_file(points)
    assert len(frame) == 90 and frame.crs == UTM
    assert list(frame.columns[:6]) == ["point_id", "stratum", "stratum_name", "stratum_ha",
                                       "weight", "reference"]
    counts = frame["stratum"].value_counts().sort_index()
    # Areas: A 800-16, B 400, C 400 pixels of 0.01 ha; 90 points, at least 20 each
    assert counts.sum() == 90 and counts.min() >= 20
    with rasterio.open(scene["map"]) as src:
        under = np.array([v[0] for v in src.sample(zip(frame.geometry.x, frame.geometry.y,
                                                               strict=True))])
    assert (under == frame["stratum"]).all()
    strata_px = {0: 784, 1: 400, 2: 400}
    np.testing.assert_allclose(frame["weight"], [strata_px[s] / counts[s]
                                                 for s in frame["stratum"]])
    np.testing.assert_allclose(frame["stratum_ha"], [strata_px[s] / 100
                                                     for s in frame["stratum"]])
    # the same seed draws the same points
    again = tmp_path / "again.gpkg"
    assert invoke("sample", scene["map"], "-n", 90, "--min-per-class", 20, "--truth",
                  scene["truth"], "--seed", 1, "-o", again)[0] == 0
    assert gpd.read_file(again).geometry.equals(frame.geometry)

    code, out = invoke("assess", scene["map"], points, "--json")
    assert code == 0, out
    result = json.loads(out)
    assert result["design"] == STRATIFIED
    assert result["points"] == {"total": 90, "used": 90, "left_out": {
        "outside_map": 0, "outside_area": 0, "nodata": 0, "unlabelled": 0}}
    # By hand from the points: counts n_ij and W_i = mapped area shares.
    names = {n: i for i, n in enumerate(CLASSES)}
    n = np.zeros((3, 3))
    for stratum, label in zip(frame["stratum"], frame["reference"], strict=True):
        n[stratum, names[label]] += 1
    weights = np.array([784, 400, 400]) / 1584
    p = weights[:, None] * n / n.sum(1, keepdims=True)
    classes = result["classes"]
    assert [c["name"] for c in classes] == CLASSES
    for k, c in enumerate(classes):
        assert c["mapped_ha"] == pytest.approx(strata_px[k] / 100)
        assert c["estimated_ha"] == pytest.approx(p[:, k].sum() * 15.84)
        assert c["proportion"] == pytest.approx(p[:, k].sum())
        assert c["users_accuracy"] == pytest.approx(n[k, k] / n[k].sum())
        assert c["producers_accuracy"] == pytest.approx(p[k, k] / p[:, k].sum())
        low, high = c["estimated_ha_ci95"]
        assert low <= c["estimated_ha"] <= high
        for key in ("proportion_ci95", "users_accuracy_ci95", "producers_accuracy_ci95"):
            assert len(c[key]) == 2
    assert result["overall_accuracy"] == pytest.approx(np.trace(p))
    assert result["error_matrix"]["counts"] == n.astype(int).tolist()
    # the truth's true areas lie within the intervals here (A 5.44 ha, B 7.60, C 2.80)
    for c, true in zip(classes, [5.44, 7.60, 2.80], strict=True):
        assert c["estimated_ha_ci95"][0] <= true <= c["estimated_ha_ci95"][1]
    # the paper's intervals on request: estimate +- 1.96 SE, clipped
    assert result["interval"] == "score"
    code, out = invoke("assess", scene["map"], points, "--interval", "wald", "--json")
    assert code == 0, out
    wald = json.loads(out)
    assert wald["interval"] == "wald"
    for c in wald["classes"]:
        half = Z95 * c["estimated_ha_se"]
        assert c["estimated_ha_ci95"] == pytest.approx(
            [max(c["estimated_ha"] - half, 0.0), min(c["estimated_ha"] + half, 15.84)])
    [option] = [p for p in main.commands["assess"].params if p.name == "interval"]
    assert sorted(option.type.choices) == sorted(INTERVALS)

    report = tmp_path / "report"
    code, out = invoke("assess", scene["map"], points, "-o", report)
    assert code == 0, out
    assert sorted(p.name for p in report.iterdir()) == [
        "areas.png", "assessment.csv", "assessment.json", "report.md"]
    assert json.loads((report / "assessment.json").read_text()) == result
    assert "overall accuracy" in out and "B" in (report / "report.md").read_text()
    code, out = invoke("assess", scene["map"], points, "-o", report)
    assert code != 0 and "already exists" in out and "--overwrite" in out


def test_reference_in_another_crs_gives_the_same_result(scene: dict[str, Path],
                                                         tmp_path: Path) -> None:
    points = tmp_path / "points.gpkg"
    assert invoke("sample", scene["map"], "-n", 60, "--min-per-class", 10, "--truth",
                  scene["truth"], "-o", points)[0] == 0
    gpd.read_file(points).to_crs("EPSG:4326").to_file(tmp_path / "wgs84.geojson")
    utm, wgs84 = (assess(scene["map"], path).to_dict()
                  for path in (points, tmp_path / "wgs84.geojson"))
    assert wgs84.pop("reference").endswith("wgs84.geojson")
    utm.pop("reference")
    assert utm == wgs84  # every point lands in the same pixel: the same figures


def test_left_out_points_are_counted_and_a_simple_random_sample_is_post_stratified(
        scene: dict[str, Path], tmp_path: Path) -> None:
    """No stratum column: a simple random sample, left-out points counted by reason."""
    rng = np.random.default_rng(2)
    xs = 500_000 + rng.uniform(40, 400, 80)  # right of the nodata corner's columns
    ys = 4_000_400 - rng.uniform(0, 400, 80)
    with rasterio.open(scene["truth"]) as src:
        labels = [CLASSES[v[0]] for v in src.sample(zip(xs, ys, strict=True))]
    extra = [(Point(499_000, 3_999_000), "A"),  # off the map
             (Point(500_015, 4_000_385), "A"),  # on the nodata corner
             (Point(500_300, 4_000_300), None)]  # not labelled
    frame = gpd.GeoDataFrame(
        {"label": labels + [label for _, label in extra]},
        geometry=[Point(x, y) for x, y in zip(xs, ys, strict=True)] + [p for p, _ in extra],
        crs=UTM)
    frame.to_file(tmp_path / "srs.gpkg", layer="points")
    code, out = invoke("assess", scene["map"], f"{tmp_path / 'srs.gpkg'}:points",
                       "--label-column", "label", "--json")
    assert code == 0, out
    result = json.loads(out)
    assert result["design"] == POST_STRATIFIED
    assert result["points"] == {"total": 83, "used": 80, "left_out": {
        "outside_map": 1, "outside_area": 0, "nodata": 1, "unlabelled": 1}}
    assert sum(c["points"] for c in result["classes"]) == 80


def test_aoi_and_zones(scene: dict[str, Path], tmp_path: Path) -> None:
    area = tmp_path / "area.gpkg"
    gpd.GeoDataFrame(geometry=[box(500_000, 4_000_000, 500_400, 4_000_200)],
                     crs=UTM).to_file(area)  # the bottom half
    zones = tmp_path / "zones.gpkg"
    gpd.GeoDataFrame({"name": ["west", "east"]},
                     geometry=[box(500_000, 4_000_000, 500_200, 4_000_400),
                               box(500_200, 4_000_000, 500_400, 4_000_400)],
                     crs=UTM).to_crs("EPSG:3857").to_file(zones)
    points = tmp_path / "points.gpkg"
    assert invoke("sample", scene["map"], "-n", 40, "--min-per-class", 20, "--aoi", area,
                  "--truth", scene["truth"], "-o", points)[0] == 0
    frame = gpd.read_file(points)
    assert (frame.geometry.y < 4_000_200).all() and set(frame["stratum"]) == {0, 2}
    code, out = invoke("assess", scene["map"], points)  # sampled half, assessed whole
    assert code != 0 and "never sampled" in out and "--aoi" in out
    assert len(out.strip().splitlines()) == 1
    code, out = invoke("assess", scene["map"], points, "--aoi", area, "--zones", zones,
                       "--json")
    assert code == 0, out
    result = json.loads(out)
    assert result["mapped_area_ha"] == pytest.approx(8.0)  # 20 x 40 px of 0.01 ha
    assert [z["zone"] for z in result["zones"]] == ["west", "east"]
    west, east = result["zones"]
    assert west["mapped_area_ha"] == pytest.approx(4.0)  # A's 400 px of the bottom half
    assert east["classes"][2]["mapped_ha"] == pytest.approx(4.0)
    assert west["points_used"] + east["points_used"] == 40


def one_line_error(*args: object) -> str:
    code, out = invoke(*args)
    lines = out.strip().splitlines()
    assert code != 0 and len(lines) == 1 and lines[0].startswith("Error: "), out
    return lines[0]


def test_bad_reference_data(scene: dict[str, Path], tmp_path: Path) -> None:
    points = tmp_path / "points.gpkg"
    assert invoke("sample", scene["map"], "-n", 30, "--min-per-class", 10, "--truth",
                  scene["truth"], "-o", points)[0] == 0
    frame = gpd.read_file(points)
    # a label that is not a class, named
    wrong = frame.copy()
    wrong.loc[3, "reference"] = "Wetland"
    wrong.to_file(tmp_path / "wrong.gpkg")
    line = one_line_error("assess", scene["map"], tmp_path / "wrong.gpkg")
    assert "'Wetland'" in line and "not a class" in line and "wrong.gpkg" in line
    # codes work as labels
    coded = frame.copy()
    coded["reference"] = [str(CLASSES.index(n)) for n in frame["reference"]]
    coded.to_file(tmp_path / "coded.gpkg")
    by_code = assess(scene["map"], tmp_path / "coded.gpkg").to_dict()
    assert by_code["classes"] == assess(scene["map"], points).to_dict()["classes"]
    # an empty layer
    frame.iloc[:0].to_file(tmp_path / "empty.gpkg")
    assert "empty" in one_line_error("assess", scene["map"], tmp_path / "empty.gpkg")
    # a stratum with a single labelled point
    single = frame.copy()
    single["reference"] = single["reference"].astype(object)
    single.loc[single.index[single["stratum"] == 1][1:], "reference"] = None
    single.to_file(tmp_path / "single.gpkg")
    line = one_line_error("assess", scene["map"], tmp_path / "single.gpkg")
    assert "'B' has 1 labelled point" in line and "at least 2" in line
    # strata of another map
    other = frame.copy()
    other["stratum"] = (other["stratum"] + 1) % 3
    other.to_file(tmp_path / "other.gpkg")
    line = one_line_error("assess", scene["map"], tmp_path / "other.gpkg")
    assert "another map" in line
    # no such label column; polygons
    assert "--label-column" in one_line_error("assess", scene["map"], points,
                                              "--label-column", "label")
    gpd.GeoDataFrame({"reference": ["A"]}, geometry=[box(500_000, 4_000_000, 500_050,
                                                         4_000_050)],
                     crs=UTM).to_file(tmp_path / "polygons.gpkg")
    assert "points" in one_line_error("assess", scene["map"], tmp_path / "polygons.gpkg")
    # an interval kind that does not exist (the CLI offers only those that do)
    with pytest.raises(SettingsError, match="interval.*score, wald"):
        assess(scene["map"], points, interval="exact")
    # sampling errors
    assert "--min-per-class" in one_line_error("sample", scene["map"], "-n", 10)
    assert "'Z'" in one_line_error("sample", scene["map"], "--target-se", "0.05",
                                   "--expected-ua", "Z=0.5")


def test_target_se_sets_the_size(scene: dict[str, Path]) -> None:
    code, out = invoke("sample", scene["map"], "--target-se", 0.05, "--expected-ua", 0.7,
                       "--allocation", "proportional", "--json")
    assert code == 0, out
    plan = json.loads(out)
    # n = (sum_i W_i sqrt(0.7 * 0.3) / 0.05)^2 = 0.21 / 0.0025 = 84
    assert plan["size"] == 84 and sum(s["points"] for s in plan["strata"]) == 84
