"""Cloud-detection benchmark: s2cloudless's masks against the simulator's truth.

Which truth. ``--ms-mask auto`` stands in, on a Level-1C scene, for what the product
masks by default on a Level-2A one: the scene classification's codes 8 and 9 (cloud of
medium and high probability) and 10 (thin cirrus), since cirrus too hides and tints the
ground. So the detected mask is judged against thick clouds or cirrus, ``cloud.tif`` |
``cirrus.tif`` (the simulator writes each pixel to at most one of them, and ``shadow.tif``,
code 3, is no cloud: s2cloudless does not look for shadows). The intersection over union
with the thick clouds alone (``cloud.tif``) is reported too: it counts every detected
cirrus pixel as a false positive.

Held-out figures (the default): SCENES synthetic scenes (``discomkd-geo synth scene
--cloud-cover C``, SIZE x SIZE px, seeds 0..SCENES-1) at each cloud cover C in COVERS are
read as Level-1C scenes with ``mask="auto"``, the s2cloudless detector as ``predict
--ms-mask auto`` runs it (:class:`~discomkd_geo.inference.masks.DetectorMaskReader`'s
threshold, averaging disk and dilation). Per scene, over the valid pixels: the
intersection over union of the detected mask with each truth, the share of truth pixels
detected (recall) and of detections that are truth (precision). Merges key "clouds" into
benchmarks/results.json.

Selection (``--select``): how the detector's settings were chosen, on validation scenes
(seeds 100..100+SCENES-1, never the held-out seeds 0..4). s2cloudless's probabilities are
computed once per scene and the package's own post-processing
(``S2PixelCloudDetector.get_mask_from_prob``: threshold, averaging disk ``average_over``,
dilation disk ``dilation_size``) applied for every setting of the grid; the result is the
same mask the tiled reader gives. Rule, fixed before any held-out figure was looked at:
among the settings whose mean IoU against thick clouds or cirrus (over every validation
scene of every cover) is within 0.01 of the best, those with a mean recall of at least
0.98 (a missed cloud is mapped as land, a false alarm only hands the pixel to SAR), and of
those the highest mean IoU; if none recalls 0.98, the highest mean IoU. Remaining ties go
to the smaller dilation, then the smaller averaging disk. Merges key "clouds_selection"
into benchmarks/results.json.

Detection resolution (``--resolution``): the same validation scenes detected on pixels of
F x F map pixels for each F in FACTORS (block means of the reflectance, the verdict
brought back to the map grid by nearest neighbour, the averaging disk and dilation scaled
to the same ground distance: ``DetectorMaskReader(factor=F)``). Per F: the mean IoU,
recall and precision against thick clouds or cirrus, the pixels per second of detection
alone (block means, classifier and post-processing on the scene read once) and of the
reader as ``predict`` runs it (reading and tiles included), and, as a check of the
scaling, the mean IoU with each averaging disk of 0-2 detection pixels. Rule, fixed
before any figure was looked at: the coarsest F whose mean IoU is within TIE_IOU of F = 1
and whose reader is at least SPEEDUP times as fast as at F = 1 becomes the default; if
none, F = 1 stays. Merges key "clouds_resolution" into benchmarks/results.json (recorded
with ``--covers 0.25,0.5,0.75``, the held-out figures' covers).

The synthetic spectra are physics-based (see :mod:`discomkd_geo.data.synthetic_physics`),
not tuned to the detector.

    python benchmarks/bench_clouds.py [--size 256] [--scenes 5] [--covers 0.25,0.5]
    python benchmarks/bench_clouds.py --select [--size 256] [--scenes 5] [--covers 0.25,0.5]
    python benchmarks/bench_clouds.py --resolution [--size 256] [--scenes 5] [--factors 1,2,4,6]
"""

import argparse
import itertools
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _results import merge_results

TARGET_IOU = 0.8
#: The selection's grid: the package's probability threshold, averaging disk radius and
#: dilation disk radius (px; 0: none; s2cloudless 1.7 fails to dilate without averaging).
THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
AVERAGE_OVER = (0, 1, 2, 4)
DILATIONS = (0, 1, 2, 3)
#: Near-tie margin in mean IoU and the recall preferred among near-ties (see the rule).
TIE_IOU = 0.01
RECALL_FLOOR = 0.98
#: Validation seeds start here (held-out seeds are 0..4).
VALIDATION_SEED = 100
#: Detection factors compared by ``--resolution`` (map pixels per detection pixel), and
#: how many times faster than factor 1 a coarser default must be.
FACTORS = (1, 2, 4, 6)
SPEEDUP = 2.0


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two bool masks (1.0 when both are empty)."""
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0


def _open(scene: Path) -> tuple[Any, Any]:
    """The scene read as ``predict --ms-mask auto`` reads it: the grid and the MS reader."""
    from discomkd_geo.constants import EUROSAT_CLASSES, EUROSAT_COLORS, S2_BANDS
    from discomkd_geo.inference.io import SceneInput, open_readers
    from discomkd_geo.models.info import PredictorInfo

    info = PredictorInfo("ms", list(S2_BANDS), list(EUROSAT_CLASSES), list(EUROSAT_COLORS),
                         64, 10.0, "dn")
    grid, readers = open_readers({"ms": SceneInput(scene / "ms.tif", mask="auto")},
                                 {"ms": info})
    return grid, readers["ms"]


def truths(scene: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The scene's valid pixels and its thick-cloud and cirrus truth (within them)."""
    import rasterio

    def read(name: str) -> np.ndarray:
        with rasterio.open(scene / name) as src:
            return src.read(1).astype(bool)

    with rasterio.open(scene / "ms.tif") as src:
        valid = src.read_masks(1) > 0
    return valid, read("cloud.tif") & valid, read("cirrus.tif") & valid


def score(detected: np.ndarray, scene: Path) -> dict[str, float]:
    """IoU, recall and precision of a detected mask against both truths."""
    valid, cloud, cirrus = truths(scene)
    detected = detected & valid
    sky = cloud | cirrus
    out = {}
    for name, truth in (("cloud", cloud), ("cloud_cirrus", sky)):
        out[f"iou_{name}"] = round(iou(detected, truth), 4)
        out[f"recall_{name}"] = round(float(detected[truth].mean()), 4) if truth.any() \
            else 1.0
        out[f"precision_{name}"] = round(float(truth[detected].mean()), 4) \
            if detected.any() else 1.0
    out["truth_share"] = round(float(sky[valid].mean()), 4)
    out["detected_share"] = round(float(detected[valid].mean()), 4)
    return out


def measure(scene: Path) -> dict[str, float]:
    """Detect clouds on one scene as ``predict`` does and compare them with its truth."""
    from discomkd_geo.inference.masks import read_on_grid

    start = time.perf_counter()
    grid, reader = _open(scene)
    detected = read_on_grid(reader.mask, grid)
    seconds = time.perf_counter() - start
    return {**score(detected, scene), "seconds": round(seconds, 2)}


def probability(scene: Path) -> np.ndarray:
    """s2cloudless's cloud probability of every pixel, ``(1, h, w)``, as the reader has it."""
    grid, reader = _open(scene)
    return reader.mask.probability(grid.window)


def choose(grid: list[dict[str, Any]]) -> dict[str, Any]:
    """The rule (module docstring) applied to the grid's summary rows."""
    best = max(r["mean_iou_cloud_cirrus"] for r in grid)
    near = [r for r in grid if r["mean_iou_cloud_cirrus"] >= best - TIE_IOU]
    recalled = [r for r in near if r["mean_recall_cloud_cirrus"] >= RECALL_FLOOR]
    candidates = recalled or [r for r in grid if r["mean_iou_cloud_cirrus"] == best]
    return min(candidates, key=lambda r: (-r["mean_iou_cloud_cirrus"], r["dilation"],
                                          r["average_over"]))


def summary(rows: list[dict[str, Any]], keys: tuple[str, ...],
            covers: list[float]) -> dict[str, Any]:
    """Scenes' scores summed up: the mean of each of ``keys``, the lowest cloud-and-cirrus
    IoU, and that IoU's mean per cloud cover."""
    found: dict[str, Any] = {f"mean_{key}": round(statistics.mean(r[key] for r in rows), 4)
                             for key in keys}
    found["min_iou_cloud_cirrus"] = min(r["iou_cloud_cirrus"] for r in rows)
    for cover in covers:
        found[f"iou_cloud_cirrus_{cover}"] = round(statistics.mean(
            r["iou_cloud_cirrus"] for r in rows if r["cover"] == cover), 4)
    return found


def select(size: int, scenes: int, covers: list[float]) -> None:
    """Score every setting of the grid on the validation scenes; merge the grid."""
    from s2cloudless import S2PixelCloudDetector

    from discomkd_geo.data.synthetic import make_scene

    seeds = range(VALIDATION_SEED, VALIDATION_SEED + scenes)
    scores: dict[tuple[float, int, int], list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for cover, seed in itertools.product(covers, seeds):
            scene = Path(tmp) / f"c{cover}_s{seed}"
            make_scene(scene, size=size, seed=seed, cloud_cover=cover)
            start = time.perf_counter()
            prob = probability(scene)
            print(f"cover {cover:.2f} seed {seed}: probabilities in "
                  f"{time.perf_counter() - start:.1f} s", flush=True)
            for average, dilation in itertools.product(AVERAGE_OVER, DILATIONS):
                if dilation and not average:
                    continue  # the package cannot dilate an unaveraged mask (int8 in cv2)
                detector = S2PixelCloudDetector(average_over=average, dilation_size=dilation,
                                                all_bands=False)
                for threshold in THRESHOLDS:
                    detected = detector.get_mask_from_prob(prob, threshold)[0].astype(bool)
                    scores.setdefault((threshold, average, dilation), []).append(
                        {"cover": cover, **score(detected, scene)})
    grid = []
    for (threshold, average, dilation), rows in scores.items():
        grid.append({"threshold": threshold, "average_over": average, "dilation": dilation,
                     **summary(rows, ("iou_cloud_cirrus", "recall_cloud_cirrus",
                                      "precision_cloud_cirrus", "iou_cloud", "recall_cloud"),
                               covers)})
    grid.sort(key=lambda r: -r["mean_iou_cloud_cirrus"])
    chosen = choose(grid)
    for row in grid[:15]:
        print(row)
    print(f"chosen: {chosen}")
    path = merge_results("clouds_selection", {
        "size": size, "seeds": list(seeds), "covers": covers,
        "rule": f"among settings within {TIE_IOU} of the best mean IoU vs cloud | cirrus, "
                f"those with mean recall >= {RECALL_FLOOR} (if any), then the highest mean "
                "IoU, then the smaller dilation and averaging",
        "chosen": {k: chosen[k] for k in ("threshold", "average_over", "dilation")},
        "grid": grid})
    print(f"merged key 'clouds_selection' into {path}")


def resolution(size: int, scenes: int, covers: list[float], factors: list[int]) -> None:
    """Score and time detection at each factor on the validation scenes; merge the table."""
    from dataclasses import replace

    from s2cloudless import S2PixelCloudDetector

    from discomkd_geo.data.synthetic import make_scene
    from discomkd_geo.inference.masks import _TILES, block_means, on_map, read_on_grid

    seeds = range(VALIDATION_SEED, VALIDATION_SEED + scenes)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for cover, seed in itertools.product(covers, seeds):
            scene = Path(tmp) / f"c{cover}_s{seed}"
            make_scene(scene, size=size, seed=seed, cloud_cover=cover)
            grid, reader = _open(scene)
            bands = reader.mask.bands
            data, valid = bands.units.apply(*next(iter(bands.read_raw_windows([grid.window]))))
            for factor in factors:
                mask = replace(reader.mask, factor=factor)
                average, dilation = mask.post
                detector = S2PixelCloudDetector(threshold=mask.threshold, average_over=average,
                                                dilation_size=dilation, all_bands=False)
                detector.get_cloud_probability_maps(np.zeros((1, 1, 1, 10)))  # load the model
                alone = []  # the faster of two runs, here and for the reader: the machine
                for _ in range(2):  # may be busy
                    start = time.perf_counter()
                    means, blocks = block_means(data, valid, factor)
                    prob = detector.get_cloud_probability_maps(
                        np.moveaxis(means / 10_000, 0, -1)[None])
                    prob[:, ~blocks] = 0.0
                    detected = on_map(detector.get_mask_from_prob(prob)[0].astype(bool), factor,
                                      grid.window)
                    alone.append(time.perf_counter() - start)
                reads = []
                for _ in range(2):
                    _TILES.clear()  # the reader detects afresh
                    start = time.perf_counter()
                    tiled = read_on_grid(mask, grid)
                    reads.append(time.perf_counter() - start)
                assert np.array_equal(tiled, detected), "the reader differs from detection"
                row = {"cover": cover, "seed": seed, "factor": factor,
                       "resolution_m": factor * abs(grid.transform.a), "average_over": average,
                       "pixels": data[0].size, "seconds_alone": round(min(alone), 4),
                       "seconds_reader": round(min(reads), 4),
                       **score(tiled, scene)}
                for disk in (0, 1, 2):
                    other = S2PixelCloudDetector(threshold=mask.threshold, average_over=disk,
                                                 dilation_size=dilation, all_bands=False)
                    row[f"iou_cloud_cirrus_average_{disk}"] = score(on_map(
                        other.get_mask_from_prob(prob)[0].astype(bool), factor, grid.window),
                        scene)["iou_cloud_cirrus"]
                rows.append(row)
                print(f"cover {cover:.2f} seed {seed} factor {factor}: IoU "
                      f"{row['iou_cloud_cirrus']:.3f}, {row['seconds_alone']:.2f} s alone, "
                      f"{row['seconds_reader']:.2f} s reader", flush=True)
    table = []
    for factor in factors:
        mine = [r for r in rows if r["factor"] == factor]
        pixels = sum(r["pixels"] for r in mine)
        entry: dict[str, Any] = {
            "factor": factor, "resolution_m": mine[0]["resolution_m"],
            "average_over": mine[0]["average_over"],
            "px_per_s_alone": round(pixels / sum(r["seconds_alone"] for r in mine)),
            "px_per_s_reader": round(pixels / sum(r["seconds_reader"] for r in mine)),
            **summary(mine, ("iou_cloud_cirrus", "recall_cloud_cirrus", "precision_cloud_cirrus",
                             *(f"iou_cloud_cirrus_average_{d}" for d in (0, 1, 2))), covers)}
        table.append(entry)
        print(entry)
    base = next(e for e in table if e["factor"] == 1)
    winners = [e for e in table if e["factor"] > 1
               and e["mean_iou_cloud_cirrus"] >= base["mean_iou_cloud_cirrus"] - TIE_IOU
               and e["px_per_s_reader"] >= SPEEDUP * base["px_per_s_reader"]]
    chosen = max(winners, key=lambda e: e["factor"])["factor"] if winners else 1
    print(f"chosen factor: {chosen}")
    path = merge_results("clouds_resolution", {
        "size": size, "seeds": list(seeds), "covers": covers,
        "rule": f"the coarsest factor within {TIE_IOU} of factor 1's mean IoU vs cloud | "
                f"cirrus and at least {SPEEDUP}x its reader's px/s, else factor 1",
        "timing": "px/s under load (other benchmarks on the same 2 cores)",
        "chosen": chosen, "factors": table, "scenes": rows})
    print(f"merged key 'clouds_resolution' into {path}")


def main() -> None:
    from discomkd_geo.data.synthetic import make_scene
    from discomkd_geo.inference.masks import DetectorMaskReader

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--scenes", type=int, default=5)
    parser.add_argument("--covers", default="0.25,0.5")
    parser.add_argument("--factors", default=",".join(map(str, FACTORS)))
    parser.add_argument("--select", action="store_true",
                        help="choose the detector's settings on validation scenes")
    parser.add_argument("--resolution", action="store_true",
                        help="compare detection resolutions on validation scenes")
    args = parser.parse_args()
    covers = [float(c) for c in args.covers.split(",")]
    if args.select:
        select(args.size, args.scenes, covers)
        return
    if args.resolution:
        resolution(args.size, args.scenes, covers, [int(f) for f in args.factors.split(",")])
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for cover in covers:
            for seed in range(args.scenes):
                scene = Path(tmp) / f"c{cover}_s{seed}"
                make_scene(scene, size=args.size, seed=seed, cloud_cover=cover)
                row = {"cover": cover, "seed": seed, **measure(scene)}
                rows.append(row)
                print(f"cover {cover:.2f} seed {seed}: IoU cloud+cirrus "
                      f"{row['iou_cloud_cirrus']:.3f} (recall {row['recall_cloud_cirrus']:.3f}"
                      f", precision {row['precision_cloud_cirrus']:.3f}), cloud "
                      f"{row['iou_cloud']:.3f}; truth {row['truth_share']:.1%}, detected "
                      f"{row['detected_share']:.1%}; {row['seconds']:.1f} s", flush=True)
    summary = {}
    for cover in covers:
        mine = [r for r in rows if r["cover"] == cover]
        entry: dict[str, Any] = {}
        for truth in ("cloud_cirrus", "cloud"):
            ious = [r[f"iou_{truth}"] for r in mine]
            entry[f"mean_iou_{truth}"] = round(statistics.mean(ious), 4)
            entry[f"min_iou_{truth}"] = min(ious)
            entry[f"scenes_at_target_{truth}"] = sum(i >= TARGET_IOU for i in ious)
        entry["mean_recall_cloud_cirrus"] = round(statistics.mean(
            r["recall_cloud_cirrus"] for r in mine), 4)
        entry["mean_precision_cloud_cirrus"] = round(statistics.mean(
            r["precision_cloud_cirrus"] for r in mine), 4)
        entry["mean_recall_cloud"] = round(statistics.mean(r["recall_cloud"] for r in mine), 4)
        summary[str(cover)] = entry
        print(f"cover {cover:.2f}: mean IoU cloud+cirrus {entry['mean_iou_cloud_cirrus']:.3f}"
              f" (min {entry['min_iou_cloud_cirrus']:.3f}, "
              f"{entry['scenes_at_target_cloud_cirrus']}/{len(mine)} >= {TARGET_IOU}), "
              f"cloud {entry['mean_iou_cloud']:.3f} (min {entry['min_iou_cloud']:.3f})")
    path = merge_results("clouds", {
        "size": args.size, "target_iou": TARGET_IOU, "truth": "cloud | cirrus (SCL 8, 9, 10)",
        "detector": {"threshold": DetectorMaskReader.threshold,
                     "average_over": DetectorMaskReader.average_over,
                     "dilation": DetectorMaskReader.dilation},
        "scenes": rows, "summary": summary})
    print(f"merged key 'clouds' into {path}")


if __name__ == "__main__":
    main()
