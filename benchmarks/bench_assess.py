"""Assessment benchmark: ``discomkd-geo assess`` on 10,000 points and a 4096 x 4096 map.

A synthetic class map of SIZE x SIZE px (10 classes in 64 px parcels, 10 m UTM pixels,
a nodata border) and a truth raster that differs from it on about 20 % of its parcels; a
stratified sample of POINTS points (``discomkd-geo sample --truth``) labelled from the
truth; then ``discomkd-geo assess MAP POINTS -o DIR`` (every output, PNG included) in a
fresh process, REPEATS times, and :func:`discomkd_geo.assessment.assess` in process.
The import share: a fresh process importing what the command imports (IMPORTS), REPEATS
times. Target: the command under 5 s on 2 cores. Prints seconds (medians) and merges
key "assess" into benchmarks/results.json.

    python benchmarks/bench_assess.py [--size 4096] [--points 10000]
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _results import merge_results

REPEATS = 5
PARCEL = 64
#: What ``discomkd-geo assess -o DIR`` imports: the CLI, the assessment, geopandas
#: (reading the points, measuring the strata) and matplotlib's Figure (the PNG).
IMPORTS = ("discomkd_geo.cli", "discomkd_geo.assessment.assess", "geopandas",
           "matplotlib.figure")
CLASSES = [f"class_{code}" for code in range(10)]


def write_map(path: Path, codes: np.ndarray) -> None:
    import rasterio
    from rasterio.transform import from_origin

    with rasterio.open(path, "w", driver="GTiff", width=codes.shape[1],
                       height=codes.shape[0], count=1, dtype="uint8", crs="EPSG:32631",
                       transform=from_origin(500_000, 5_000_000, 10, 10), nodata=255,
                       tiled=True, compress="deflate") as dst:
        dst.write(codes, 1)
        dst.update_tags(CLASSES=json.dumps(CLASSES))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--points", type=int, default=10_000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    parcels = args.size // PARCEL
    # Skewed class shares, so strata differ in size as in real maps.
    grid = rng.choice(10, size=(parcels, parcels), p=np.linspace(2, 0.2, 10) / 11)
    codes = np.kron(grid, np.ones((PARCEL, PARCEL), np.uint8)).astype(np.uint8)
    truth = codes.copy()
    wrong = np.kron(rng.random((parcels, parcels)) < 0.2, np.ones((PARCEL, PARCEL), bool))
    truth[wrong] = (truth[wrong] + 1) % 10
    codes[:16] = 255  # a nodata border
    exe = [sys.executable, "-m", "discomkd_geo"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_map(tmp / "map.tif", codes)
        write_map(tmp / "truth.tif", truth)
        start = time.perf_counter()
        subprocess.run([*exe, "sample", tmp / "map.tif", "-n", str(args.points), "--truth",
                        tmp / "truth.tif", "-o", tmp / "points.gpkg"], check=True,
                       capture_output=True)
        sample_s = time.perf_counter() - start
        command = []
        for repeat in range(REPEATS):
            start = time.perf_counter()
            subprocess.run([*exe, "assess", tmp / "map.tif", tmp / "points.gpkg", "-o",
                            tmp / f"report{repeat}"], check=True, capture_output=True)
            command.append(time.perf_counter() - start)
        imports = []
        for _ in range(REPEATS):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", "import " + ", ".join(IMPORTS)],
                           check=True)
            imports.append(time.perf_counter() - start)
        from discomkd_geo.assessment import assess

        in_process = []
        for _ in range(REPEATS):
            start = time.perf_counter()
            result = assess(tmp / "map.tif", tmp / "points.gpkg").to_dict()
            in_process.append(time.perf_counter() - start)
    figures = {"size": args.size, "points": args.points, "sample_s": round(sample_s, 2),
               "assess_command_s": round(statistics.median(command), 2),
               "imports_s": round(statistics.median(imports), 2),
               "assess_in_process_s": round(statistics.median(in_process), 2),
               "overall_accuracy": round(result["overall_accuracy"], 4),
               "target_s": 5.0}
    print(f"{args.size} x {args.size} px map, {args.points:,} points: sample "
          f"{sample_s:.2f} s; assess -o DIR {figures['assess_command_s']:.2f} s (median of "
          f"{REPEATS}, fresh process; its imports {figures['imports_s']:.2f} s), in process "
          f"{figures['assess_in_process_s']:.2f} s; OA {figures['overall_accuracy']:.3f}")
    print(f"results: {merge_results('assess', figures)}")


if __name__ == "__main__":
    main()
