"""Cloud-detection benchmark: s2cloudless's masks against the simulator's truth.

SCENES synthetic scenes (``discomkd-geo synth scene --cloud-cover C``, SIZE x SIZE px,
seeds 0..SCENES-1) at each cloud cover C in COVERS are read as Level-1C scenes with
``mask="auto"``: the s2cloudless detector as ``predict --ms-mask auto`` runs it (threshold
0.4, averaging over 1 px, dilation by 2 px; :class:`~discomkd_geo.inference.masks.
CloudDetection`). Per scene, over the valid pixels, prints the intersection over union of
the detected mask with the truth ``cloud.tif`` (thick clouds, SCL 8 and 9) and with thick
clouds or cirrus (SCL 8, 9, 10), the share of truth clouds detected (recall) and of
detections that are clouds (precision). The synthetic spectra are physics-based (see
:mod:`discomkd_geo.data.synthetic_physics`), not tuned to the detector. Merges key
"clouds" into benchmarks/results.json.

    python benchmarks/bench_clouds.py [--size 256] [--scenes 5] [--covers 0.25,0.5]
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from _results import merge_results

TARGET_IOU = 0.8


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two bool masks (1.0 when both are empty)."""
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0


def measure(scene: Path) -> dict[str, float]:
    """Detect clouds on one scene and compare them with its truth masks."""
    import rasterio

    from discomkd_geo.constants import EUROSAT_CLASSES, EUROSAT_COLORS, S2_BANDS
    from discomkd_geo.inference.io import SceneInput, open_readers
    from discomkd_geo.inference.masks import read_on_grid
    from discomkd_geo.models.info import PredictorInfo

    info = PredictorInfo("ms", list(S2_BANDS), list(EUROSAT_CLASSES), list(EUROSAT_COLORS),
                         64, 10.0, "dn")
    start = time.perf_counter()
    grid, readers = open_readers({"ms": SceneInput(scene / "ms.tif", mask="auto")},
                                 {"ms": info})
    detected = read_on_grid(readers["ms"].mask, grid)
    seconds = time.perf_counter() - start

    def truth(name: str) -> np.ndarray:
        with rasterio.open(scene / name) as src:
            return src.read(1).astype(bool)

    with rasterio.open(scene / "ms.tif") as src:
        valid = src.read_masks(1) > 0
    cloud = truth("cloud.tif") & valid
    cirrus = truth("cirrus.tif") & valid
    detected &= valid
    return {"iou_cloud": round(iou(detected, cloud), 4),
            "iou_cloud_cirrus": round(iou(detected, cloud | cirrus), 4),
            "recall": round(float(detected[cloud].mean()), 4),
            "precision": round(float(cloud[detected].mean()), 4) if detected.any() else 1.0,
            "truth_share": round(float(cloud[valid].mean()), 4),
            "detected_share": round(float(detected[valid].mean()), 4),
            "seconds": round(seconds, 2)}


def main() -> None:
    from discomkd_geo.data.synthetic import make_scene

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--scenes", type=int, default=5)
    parser.add_argument("--covers", default="0.25,0.5")
    args = parser.parse_args()
    covers = [float(c) for c in args.covers.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for cover in covers:
            for seed in range(args.scenes):
                scene = Path(tmp) / f"c{cover}_s{seed}"
                make_scene(scene, size=args.size, seed=seed, cloud_cover=cover)
                row = {"cover": cover, "seed": seed, **measure(scene)}
                rows.append(row)
                print(f"cover {cover:.2f} seed {seed}: IoU cloud {row['iou_cloud']:.3f}, "
                      f"cloud+cirrus {row['iou_cloud_cirrus']:.3f}; recall {row['recall']:.3f}"
                      f", precision {row['precision']:.3f} (truth {row['truth_share']:.1%}, "
                      f"detected {row['detected_share']:.1%}; {row['seconds']:.1f} s)")
    summary = {}
    for cover in covers:
        ious = [r["iou_cloud"] for r in rows if r["cover"] == cover]
        summary[str(cover)] = {"mean_iou_cloud": round(statistics.mean(ious), 4),
                               "min_iou_cloud": min(ious),
                               "scenes_at_target": sum(i >= TARGET_IOU for i in ious)}
        print(f"cover {cover:.2f}: mean IoU {statistics.mean(ious):.3f}, min {min(ious):.3f},"
              f" {summary[str(cover)]['scenes_at_target']}/{len(ious)} scenes >= "
              f"{TARGET_IOU}")
    path = merge_results("clouds", {"size": args.size, "target_iou": TARGET_IOU,
                                    "detector": {"threshold": 0.4, "average_over": 1,
                                                 "dilation": 2},
                                    "scenes": rows, "summary": summary})
    print(f"merged key 'clouds' into {path}")


if __name__ == "__main__":
    main()
