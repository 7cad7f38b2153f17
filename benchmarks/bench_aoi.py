"""Area-of-interest benchmark: the speed-up of ``predict --aoi`` over the whole scene.

A synthetic scene of SIZE x SIZE px (``discomkd-geo synth scene --size SIZE``; its SAR
scene, on EPSG:4326) is mapped from SAR in windows mode at stride 32, once whole and
REPEATS times restricted to an area of interest: a disc covering AOI_SHARE of the scene,
given in the scene's UTM CRS (so it is reprojected). Chunks whose pixels miss the disc
are neither read nor classified; the others are computed as usual and cut to the disc.
Prints seconds, px/s over the scene, the chunks computed, the speed-up (whole / AOI,
medians) and whether the AOI map equals the whole map inside the disc; merges key "aoi"
into benchmarks/results.json.

The model is the trained demo SAR branch when ``--run`` names a run (``make demo``),
else a randomly initialised small CNN: only speed is measured.

    python benchmarks/bench_aoi.py [--size 4096] [--run demo_out/run] [--scene DIR]
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from _results import merge_results

AOI_SHARE = 0.10
STRIDE = 32
CHUNK = 1024
REPEATS = 3


def model(run: str | None):
    import torch

    from discomkd_geo.constants import EUROSAT_CLASSES, EUROSAT_COLORS, S1_BANDS
    from discomkd_geo.data.normalization import BandStats
    from discomkd_geo.models.branches import build_branch
    from discomkd_geo.models.predictor import Predictor, PredictorInfo, load_torch_predictor

    if run:
        return load_torch_predictor(run, "sar").eval()
    torch.manual_seed(0)
    spec = {"kind": "mono", "in_channels": 2, "num_classes": 10, "backbone": "small_cnn",
            "width": 8}
    info = PredictorInfo("sar", list(S1_BANDS), list(EUROSAT_CLASSES), list(EUROSAT_COLORS),
                         64, 10.0, "dB", branch_spec=spec)
    stats = BandStats("meanstd", list(S1_BANDS), [-12.0, -19.0], [4.0, 4.0])
    return Predictor(build_branch(**spec), stats, info).eval()


def disc(scene: Path, out: Path) -> float:
    """A disc of AOI_SHARE of the scene's area in its UTM CRS; returns its area share."""
    import geopandas as gpd
    import rasterio
    from shapely import Point, box

    with rasterio.open(scene / "truth.tif") as src:
        footprint = box(*src.bounds)
        crs = src.crs
    radius = np.sqrt(AOI_SHARE * footprint.area / np.pi)
    centre = footprint.centroid
    shape = Point(centre.x + radius / 3, centre.y - radius / 4).buffer(radius, 256)
    gpd.GeoDataFrame({"name": ["aoi"]}, geometry=[shape], crs=crs).to_file(out)
    return shape.intersection(footprint).area / footprint.area


def run(predictor, scene: Path, out: Path, aoi: Path | None) -> dict:
    from discomkd_geo.inference.engine import predict_to_file
    from discomkd_geo.inference.settings import MapSettings

    settings = MapSettings.of(stride=STRIDE, chunk_size=CHUNK, overwrite=True, force=True,
                              aoi=None if aoi is None else str(aoi))
    start = time.perf_counter()
    summary = predict_to_file(predictor, scene / "sar.tif", out, settings)
    return {"seconds": time.perf_counter() - start, "pixels": summary.pixels,
            "chunks": summary.chunks, "computed_chunks": summary.computed_chunks}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--run", help="demo run directory (default: random small CNN)")
    parser.add_argument("--scene", type=Path, help="reuse a scene made by synth scene")
    args = parser.parse_args()
    import rasterio
    import torch

    from discomkd_geo.data.synthetic import make_scene

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        scene = args.scene or tmp / "scene"
        if args.scene is None:
            make_scene(scene, size=args.size, seed=0)
        share = disc(scene, tmp / "aoi.gpkg")
        predictor = model(args.run)
        whole = run(predictor, scene, tmp / "whole.tif", None)
        cut = [run(predictor, scene, tmp / "aoi.tif", tmp / "aoi.gpkg") for _ in range(REPEATS)]
        with rasterio.open(tmp / "whole.tif") as a, rasterio.open(tmp / "aoi.tif") as b:
            full, part = a.read(1), b.read(1)
        inside = part != 255
        same = bool((full[inside] == part[inside]).all())
    seconds = statistics.median(r["seconds"] for r in cut)
    figures = {
        "scene_px": f"{full.shape[1]} x {full.shape[0]}", "aoi_share_of_scene": round(share, 4),
        "aoi_mapped_share": round(float(inside.mean()), 4), "stride": STRIDE,
        "chunk_size": CHUNK, "model": "demo SAR branch" if args.run else "small_cnn (random)",
        "whole_seconds": round(whole["seconds"], 2), "aoi_seconds_median": round(seconds, 2),
        "aoi_seconds": [round(r["seconds"], 2) for r in cut],
        "chunks": whole["chunks"], "aoi_computed_chunks": cut[0]["computed_chunks"],
        "speedup": round(whole["seconds"] / seconds, 2),
        "identical_inside_aoi": same, "torch_threads": 1,
    }
    print(f"scene {figures['scene_px']} px, AOI {share:.1%} of it "
          f"({figures['aoi_mapped_share']:.1%} of the map's pixels mapped)")
    print(f"whole scene: {whole['seconds']:.1f} s, {whole['chunks']} chunks")
    print(f"AOI:         {seconds:.1f} s (median of {REPEATS}), "
          f"{figures['aoi_computed_chunks']} chunks computed")
    print(f"speed-up {figures['speedup']:.2f}x; AOI map equals the whole map inside: {same}")
    print(f"merged into {merge_results('aoi', figures)}")


if __name__ == "__main__":
    main()
