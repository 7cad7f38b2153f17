"""Tiled inference benchmark: model-only rate, engine end to end, peak memory, naive loop.

Prints a table and merges key "inference" into benchmarks/results.json.

(a) model only: the ResNet-18 DisCoM-KD SAR branch (build_branch) on 64 x 64 windows
    already in memory, batches of 32 (the engine's batch size);
(b) the engine (predict_to_file, workers=1) on a synthetic 2-band SAR scene at
    stride = patch size = 64, written to a COG; ratio to (a) in pixels/s;
(c) peak resident memory (ru_maxrss of a fresh subprocess) of the engine for 1k, 4k and
    8k px square scenes, and of the naive loop for comparison (1k and 4k: it holds the
    whole map, 8k would need ~3 GB);
(d) the naive TorchGeo loop: RasterDataset + GridGeoSampler + DataLoader, probabilities
    stitched into a whole-scene array in memory, then written once.
(a), (b), (d) run interleaved, each in a fresh process, medians over repeats; the ratio
is the median of the paired (a)/(b) runs (the machine may be shared). (c) uses small_cnn
(width 8) so the 8k case stays quick: memory is about the data path, not the model.

    python benchmarks/bench_inference.py [--quick]
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _results import merge_results

HERE = Path(__file__).resolve().parent
PATCH = 64
BATCH = 32
CLASSES = 10
#: Intra-op threads of every run. One: on a shared 2-core machine OpenMP's two-thread
#: barriers stall whenever another process holds a core (measured: the same ResNet-18
#: pass took 13.8 s with 2 threads, 1.7 s with 1, under a load average of 2.5).
TORCH_THREADS = 1
#: Largest scene the naive loop's memory is measured on (it holds the whole map).
NAIVE_MAX = 4096


def predictor(backbone: str):
    import torch

    from discomkd_geo.constants import EUROSAT_CLASSES, EUROSAT_COLORS, S1_BANDS
    from discomkd_geo.data.normalization import BandStats
    from discomkd_geo.models.branches import build_branch
    from discomkd_geo.models.predictor import Predictor, PredictorInfo

    torch.manual_seed(0)
    spec = {"kind": "discomkd", "in_channels": 2, "num_classes": CLASSES,
            "backbone": backbone, "width": 8}
    info = PredictorInfo("sar", list(S1_BANDS), list(EUROSAT_CLASSES), list(EUROSAT_COLORS),
                         PATCH, 10.0, "dB", branch_spec=spec)
    stats = BandStats("meanstd", list(S1_BANDS), [-12.0, -19.0], [4.0, 4.0])
    return Predictor(build_branch(**spec), stats, info).eval()


def make_scene(path: Path, size: int) -> Path:
    """A SAR-like 2-band float32 dB scene, written block by block (tiled, compressed)."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {"driver": "GTiff", "width": size, "height": size, "count": 2,
               "dtype": "float32", "crs": "EPSG:32631", "nodata": np.nan,
               "transform": from_origin(500000.0, 5000000.0, 10.0, 10.0), "tiled": True,
               "blockxsize": 512, "blockysize": 512, "compress": "deflate"}
    rng = np.random.default_rng(0)
    with rasterio.open(path, "w", **profile) as dst:
        dst.descriptions = ("VV", "VH")
        for row in range(0, size, 1024):
            for col in range(0, size, 1024):
                h, w = min(1024, size - row), min(1024, size - col)
                regions = np.kron(rng.normal(-12, 4, (2, 16, 16)), np.ones((64, 64)))
                data = regions[:, :h, :w] + rng.normal(0, 1, (2, h, w))
                dst.write(data.astype(np.float32), window=Window(col, row, w, h))
    return path


def warm(model) -> None:
    """One batch through the model: every timed run starts after it, so the three compare
    steady-state rates (the first call's one-off kernel set-up, ~0.2 s here, is left out)."""
    import torch

    with torch.inference_mode():
        model(torch.randn(BATCH, 2, PATCH, PATCH) * 4 - 12)


def model_only(windows: int = 256) -> dict:
    """One timed pass of the model over ``windows`` random windows, after a warm-up."""
    import torch

    model = predictor("resnet18")
    warm(model)
    x = torch.randn(windows, 2, PATCH, PATCH) * 4 - 12
    with torch.inference_mode():
        start = time.perf_counter()
        for i in range(0, windows, BATCH):
            model(x[i:i + BATCH])
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "pixels": windows * PATCH * PATCH}


def engine_run(scene: Path, out: Path, backbone: str) -> dict:
    from discomkd_geo.inference.engine import predict_to_file

    model = predictor(backbone)
    warm(model)
    start = time.perf_counter()
    summary = predict_to_file(model, scene, out, stride=PATCH, overwrite=True,
                              batch_size=BATCH)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "pixels": summary["pixels"]}


def naive_run(scene: Path, out: Path, backbone: str) -> dict:
    """What a TorchGeo user writes today: sampler + loader, whole map stitched in memory."""
    import rasterio
    import torch
    from torch.utils.data import DataLoader
    from torchgeo.datasets import RasterDataset, stack_samples
    from torchgeo.samplers import GridGeoSampler, Units

    model = predictor(backbone)
    warm(model)
    start = time.perf_counter()

    class Scene(RasterDataset):
        filename_glob = scene.name
        is_image = True

    dataset = Scene(paths=str(scene.parent))
    sampler = GridGeoSampler(dataset, size=PATCH, stride=PATCH, units=Units.PIXELS)
    loader = DataLoader(dataset, sampler=sampler, batch_size=BATCH, collate_fn=stack_samples)
    with rasterio.open(scene) as src:
        profile, transform, height, width = src.profile, src.transform, src.height, src.width
    probs = np.zeros((CLASSES, height, width), dtype=np.float32)
    counts = np.zeros((height, width), dtype=np.float32)
    inverse = ~transform
    with torch.inference_mode():
        for batch in loader:
            out_probs = model(torch.nan_to_num(batch["image"].float(), nan=-12.0)).numpy()
            for bounds, p in zip(batch["bounds"], out_probs, strict=True):
                col, row = (inverse @ (bounds[0].start, bounds[1].stop))
                r, c = round(row), round(col)
                probs[:, max(r, 0):r + PATCH, max(c, 0):c + PATCH] += p[:, None, None]
                counts[max(r, 0):r + PATCH, max(c, 0):c + PATCH] += 1
    codes = (probs / np.maximum(counts, 1)).argmax(axis=0).astype(np.uint8)
    codes[counts == 0] = 255
    profile.update(count=1, dtype="uint8", nodata=255, compress="deflate")
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(codes, 1)
    return {"seconds": time.perf_counter() - start, "pixels": height * width}


def child(kind: str, scene: str, out: str, backbone: str) -> None:
    """Subprocess entry: one run, then its wall time and peak RSS as JSON on stdout."""
    import torch

    torch.set_num_threads(TORCH_THREADS)
    if kind == "model":
        result = model_only()
    else:
        run = engine_run if kind == "engine" else naive_run
        result = run(Path(scene), Path(out), backbone)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def in_subprocess(kind: str, scene: Path, out: Path, backbone: str) -> dict:
    code = (f"import sys; sys.path.insert(0, {str(HERE)!r}); import bench_inference as b; "
            f"b.child({kind!r}, {str(scene)!r}, {str(out)!r}, {backbone!r})")
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": str(TORCH_THREADS)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, env=env)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def summarise(runs: list[dict]) -> dict:
    seconds = statistics.median(r["seconds"] for r in runs)
    return {"seconds": round(seconds, 3), "pixels": runs[0]["pixels"],
            "pixels_per_s": round(runs[0]["pixels"] / seconds, 1),
            "peak_rss_mb": round(statistics.median(r["peak_rss_mb"] for r in runs), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 repeat, no 8k scene")
    args = parser.parse_args()
    repeats = 1 if args.quick else 5
    sizes = (1024, 4096) if args.quick else (1024, 4096, 8192)
    with tempfile.TemporaryDirectory(prefix="bench_inference_") as tmp:
        tmp = Path(tmp)
        scenes = {s: make_scene(tmp / f"scene{s}" / "sar.tif", s) for s in sizes}
        started = time.perf_counter()
        # Interleaved repeats, each in a fresh process: a busy shared machine slows
        # the three alike, so the ratios stay fair; medians over repeats.
        runs: dict[str, list[dict]] = {"model": [], "engine": [], "naive": []}
        for _ in range(repeats):
            for kind, runs_of_kind in runs.items():
                runs_of_kind.append(in_subprocess(kind, scenes[1024], tmp / f"{kind}.tif",
                                                  "resnet18"))
        ratios = [(e["pixels"] / e["seconds"]) / (m["pixels"] / m["seconds"])
                  for m, e in zip(runs["model"], runs["engine"], strict=True)]
        model, engine, naive = (summarise(runs[k]) for k in ("model", "engine", "naive"))
        memory: dict[str, dict[str, float]] = {}
        for size in sizes:
            kinds = ("engine", "naive") if size <= NAIVE_MAX else ("engine",)
            memory[f"{size}px"] = {
                kind: round(in_subprocess(kind, scenes[size], tmp / f"{kind}{size}.tif",
                                          "small_cnn")["peak_rss_mb"], 1) for kind in kinds}
        total = time.perf_counter() - started

    ratio = statistics.median(ratios)
    results = {
        "setup": {"patch_size": PATCH, "stride": PATCH, "batch_size": BATCH, "bands": 2,
                  "scene_px": 1024, "chunk_size": 1024, "workers": 1, "repeats": repeats,
                  "torch_threads": TORCH_THREADS, "cpu_count": os.cpu_count(),
                  "throughput_model": "DisCoM-KD SAR branch, ResNet-18 (two encoders)",
                  "memory_model": "DisCoM-KD SAR branch, small_cnn width 8"},
        "model_only": model,
        "engine": engine,
        "engine_vs_model": round(ratio, 3),
        "engine_vs_model_per_repeat": [round(r, 3) for r in ratios],
        "naive_torchgeo": naive,
        "engine_vs_naive": round(engine["pixels_per_s"] / naive["pixels_per_s"], 3),
        "peak_rss_mb": memory,
        "bench_seconds": round(total, 1),
    }
    print(f"{'measure':<44}{'value':>16}")
    print(f"{'(a) model only, px/s (windows in memory)':<44}{model['pixels_per_s']:>16,.0f}")
    print(f"{'(b) engine end to end, px/s (1k scene)':<44}{engine['pixels_per_s']:>16,.0f}")
    print(f"{'    engine / model, median of paired runs':<44}{ratio:>16.3f}")
    print(f"{'(d) naive TorchGeo loop, px/s':<44}{naive['pixels_per_s']:>16,.0f}")
    print(f"{'    engine / naive':<44}{results['engine_vs_naive']:>16.3f}")
    for size, row in memory.items():
        naive_mb = f"{row['naive']:>6.0f}" if "naive" in row else "     -"
        print(f"{'(c) peak RSS MB ' + size + ' engine | naive':<44}"
              f"{row['engine']:>7.0f} | {naive_mb}")
    print(f"total {total:.0f} s")
    print(f"-> {merge_results('inference', results)} [inference]")


if __name__ == "__main__":
    main()
