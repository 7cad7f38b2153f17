"""Map throughput on one GPU: the default map mode on an 8192 x 8192 px SAR scene.

An untrained ResNet-18 DisCoM-KD SAR branch (the paper's encoder; the speed does not
depend on the weights) maps a smooth random 2-band dB scene with the default
:class:`~discomkd_geo.inference.settings.MapSettings` on ``--device`` (default ``cuda``).
Reported: pixels per second of ``predict_to_file`` (reading, inference, writing the
COG), merged under ``gpu.map`` in ``benchmarks/results.json``. Run by
``benchmarks/gpu_check.sh``; not run on a machine without a GPU.

Run: ``python benchmarks/bench_gpu_map.py [--size 8192] [--device cuda]``.
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
import torch
from _results import load_results, merge_results
from rasterio.transform import from_origin

from discomkd_geo.constants import EUROSAT_CLASSES, EUROSAT_COLORS, S1_BANDS
from discomkd_geo.data.bandstats import BandStats
from discomkd_geo.inference.engine import predict_to_file
from discomkd_geo.inference.settings import MapSettings
from discomkd_geo.models.branches import build_branch
from discomkd_geo.models.info import PredictorInfo
from discomkd_geo.models.predictor import Predictor


def sar_scene(path: Path, size: int) -> Path:
    """A ``size`` px square 2-band dB scene of smooth regions, UTM 31N at 10 m."""
    rng = np.random.default_rng(0)
    coarse = rng.normal(-12, 3, (2, size // 64 + 1, size // 64 + 1)).astype(np.float32)
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=2,
                       dtype="float32", crs="EPSG:32631", tiled=True,
                       transform=from_origin(500_000, 5_000_000, 10, 10)) as dst:
        for row in range(0, size, 1024):  # by strips: the scene is 512 MiB at 8192 px
            rows = min(1024, size - row)
            strip = np.kron(coarse[:, row // 64:(row + rows) // 64 + 1], np.ones((64, 64)))
            strip = strip[:, :rows, :size] + rng.normal(0, 1, (2, rows, size))
            dst.write(strip.astype(np.float32), window=((row, row + rows), (0, size)))
        dst.descriptions = tuple(S1_BANDS)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=8192, help="scene side (px)")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    torch.manual_seed(0)
    spec = {"kind": "discomkd", "in_channels": 2, "num_classes": 10, "backbone": "resnet18"}
    info = PredictorInfo("sar", list(S1_BANDS), list(EUROSAT_CLASSES), list(EUROSAT_COLORS),
                         64, 10.0, "dB", branch_spec=spec)
    stats = BandStats("percentile", list(S1_BANDS), [-25.0, -30.0], [20.0, 20.0])
    predictor = Predictor(build_branch(**spec), stats, info).eval()
    with tempfile.TemporaryDirectory() as tmp:
        scene = sar_scene(Path(tmp) / "sar.tif", args.size)
        settings = MapSettings.of(device=args.device, overwrite=True)
        start = time.perf_counter()
        summary = predict_to_file(predictor, scene, Path(tmp) / "map.tif", settings)
        seconds = time.perf_counter() - start
    px = args.size ** 2
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device
    print(f"{args.size} px SAR scene, mode {summary.mode}, {name}: {seconds:.1f} s, "
          f"{px / seconds:,.0f} px/s")
    gpu = load_results().get("gpu", {})
    merge_results("gpu", {**gpu, "map": {
        "command": f"python benchmarks/bench_gpu_map.py --size {args.size} "
                   f"--device {args.device}",
        "device": name, "scene_px": px, "mode": summary.mode, "seconds": round(seconds, 1),
        "px_per_s": round(px / seconds)}})


if __name__ == "__main__":
    main()
