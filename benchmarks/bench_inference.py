"""Inference benchmark: windows vs dense mode vs the naive TorchGeo loop, strides 32/16/8.

Prints a table, merges key "inference" into benchmarks/results.json and draws the demo
model's maps by mode and stride beside the truth in benchmarks/inference_modes.png.

On the demo scene (tiles/demo/sar.tif, 526 x 526 px, truth.tif beside it), for strides
32, 16 and 8 and each of
  windows  the engine classifying every window alone (--mode windows),
  dense    the engine with shared computation (--mode dense),
  naive    the loop a TorchGeo user writes: RasterDataset + GridGeoSampler at that stride
           + DataLoader, probabilities of the windows averaged into a whole-scene array,
one run in a fresh process gives pixels/s, peak RSS (ru_maxrss), the share of the run
spent in the model (engine / model-only), and the map's overall accuracy against the
truth and agreement with windows mode at the same stride. Two models:
  demo     the trained demo SAR branch (small_cnn; --run, default demo_out/run from
           `make demo`): accuracy;
  resnet18 the DisCoM-KD SAR branch with ResNet-18 (random weights: speed only).
On the demo run's synthetic test patches, the weighted F1 of the demo SAR branch
classifying each 64 x 64 patch alone (windows mode) and densely, with the patch's
mirrored halo as the only context (what the engine gives windows at a scene's edge).
Then dense mode at stride 16 with 1 and 2 local workers (blocks of 256 px, so there is
work to share), each worker getting torch.get_num_threads() // workers threads.

    python benchmarks/bench_inference.py [--run RUN_DIR]
"""

import argparse
import json
import os
import resource
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
STRIDES = (32, 16, 8)


def predictor(backbone: str, run: str):
    import torch

    from discomkd_geo.constants import EUROSAT_CLASSES, EUROSAT_COLORS, S1_BANDS
    from discomkd_geo.data.normalization import BandStats
    from discomkd_geo.models.branches import build_branch
    from discomkd_geo.models.predictor import Predictor, PredictorInfo, load_torch_predictor

    if backbone == "demo":
        return load_torch_predictor(run, "sar").eval()
    torch.manual_seed(0)
    spec = {"kind": "discomkd", "in_channels": 2, "num_classes": CLASSES,
            "backbone": backbone, "width": 8}
    info = PredictorInfo("sar", list(S1_BANDS), list(EUROSAT_CLASSES), list(EUROSAT_COLORS),
                         PATCH, 10.0, "dB", branch_spec=spec)
    stats = BandStats("meanstd", list(S1_BANDS), [-12.0, -19.0], [4.0, 4.0])
    return Predictor(build_branch(**spec), stats, info).eval()


def warm(model) -> None:
    """One batch through the model: every timed run starts after the first call's one-off
    kernel set-up."""
    import torch

    with torch.inference_mode():
        model(torch.randn(BATCH, 2, PATCH, PATCH) * 4 - 12)


def timed_model(model) -> list[float]:
    """Accumulate the seconds spent in the model's forward and dense passes."""
    spent = [0.0]
    for name in ("forward", "dense"):
        method = getattr(model, name)

        def wrapper(*args, _method=method, **kwargs):
            start = time.perf_counter()
            try:
                return _method(*args, **kwargs)
            finally:
                spent[0] += time.perf_counter() - start

        setattr(model, name, wrapper)
    return spent


def engine_run(model, scene: Path, out: Path, stride: int, mode: str, workers: int = 1,
               block_size: int = 1024) -> dict:
    from discomkd_geo.inference.engine import predict_to_file
    from discomkd_geo.inference.settings import MapSettings

    spent = timed_model(model)
    start = time.perf_counter()
    summary = predict_to_file(model, scene, out, MapSettings.of(
        stride=stride, mode=mode, overwrite=True, batch_size=BATCH, workers=workers,
        block_size=block_size, chunk_size=block_size))
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "pixels": summary.pixels, "model_seconds": spent[0]}


def naive_run(model, scene: Path, out: Path, stride: int) -> dict:
    """What a TorchGeo user writes today: sampler + loader, whole map stitched in memory."""
    import rasterio
    import torch
    from torch.utils.data import DataLoader
    from torchgeo.datasets import RasterDataset, stack_samples
    from torchgeo.samplers import GridGeoSampler, Units

    from discomkd_geo.inference.engine import typical_values

    fill = torch.from_numpy(typical_values(model))[None, :, None, None]
    spent = timed_model(model)
    start = time.perf_counter()

    class Scene(RasterDataset):
        filename_glob = scene.name
        is_image = True

    dataset = Scene(paths=str(scene.parent))
    sampler = GridGeoSampler(dataset, size=PATCH, stride=stride, units=Units.PIXELS)
    loader = DataLoader(dataset, sampler=sampler, batch_size=BATCH, collate_fn=stack_samples)
    with rasterio.open(scene) as src:
        profile, transform, height, width = src.profile, src.transform, src.height, src.width
    probs = np.zeros((CLASSES, height, width), dtype=np.float32)
    counts = np.zeros((height, width), dtype=np.float32)
    inverse = ~transform
    with torch.inference_mode():
        for batch in loader:
            image = batch["image"].float()
            out_probs = model(torch.where(torch.isnan(image), fill, image)).numpy()
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
    return {"seconds": time.perf_counter() - start, "pixels": height * width,
            "model_seconds": spent[0]}


def child(kind: str, scene: str, out: str, backbone: str, stride: int, run: str,
          workers: int, block_size: int) -> None:
    """Subprocess entry: one run, then its wall time and peak RSS as JSON on stdout."""
    import torch

    torch.set_num_threads(TORCH_THREADS * workers)
    model = predictor(backbone, run)
    warm(model)
    if kind == "naive":
        result = naive_run(model, Path(scene), Path(out), stride)
    else:
        result = engine_run(model, Path(scene), Path(out), stride, kind, workers, block_size)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def in_subprocess(kind: str, scene: Path, out: Path, backbone: str, stride: int, run: str,
                  workers: int = 1, block_size: int = 1024) -> dict:
    code = (f"import sys; sys.path.insert(0, {str(HERE)!r}); import bench_inference as b; "
            f"b.child({kind!r}, {str(scene)!r}, {str(out)!r}, {backbone!r}, {stride}, "
            f"{run!r}, {workers}, {block_size})")
    env = {**os.environ, "PYTHONWARNINGS": "ignore",
           "OMP_NUM_THREADS": str(TORCH_THREADS * workers)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, env=env)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def patch_f1(run: str) -> dict:
    """Weighted F1 on the run's synthetic test patches: windows vs dense classification."""
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader
    from torchmetrics.functional.classification import multiclass_f1_score

    from discomkd_geo.training.evaluate import dataset_for, training_config

    model = predictor("demo", run)
    halo = model.dense_halo()
    loader = DataLoader(dataset_for(model, training_config(run).data, "test", run),
                        batch_size=256)
    preds: dict[str, list] = {"windows": [], "dense": []}
    targets = []
    with torch.inference_mode():
        for batch in loader:
            x = batch["image_sar"]
            preds["windows"].append(model(x).argmax(dim=1))
            context = F.pad(x, (halo,) * 4, mode="reflect")
            preds["dense"].append(model.dense(context, PATCH, halo)[:, 0, 0].argmax(dim=1))
            targets.append(batch["label"])
    target = torch.cat(targets)
    pred = {k: torch.cat(v) for k, v in preds.items()}
    return {"samples": int(target.numel()), "halo": halo,
            **{f"f1_weighted_{k}": round(float(multiclass_f1_score(
                v, target, CLASSES, average="weighted")), 4) for k, v in pred.items()},
            "agreement": round(float((pred["dense"] == pred["windows"]).float().mean()), 4)}


def modes_figure(maps: dict[str, Path], truth: Path, out: Path) -> None:
    """PNG: the truth and each map (on the truth's grid), in one row, with a legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from discomkd_geo.constants import EUROSAT_CLASSES, EUROSAT_COLORS
    from discomkd_geo.demo import class_legend, draw_classes
    from discomkd_geo.inference.scoring import map_to_grid

    panels = {"truth": truth, **maps}
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4.6),
                             layout="constrained")
    for ax, (title, path) in zip(axes, panels.items(), strict=True):
        draw_classes(ax, map_to_grid(path, truth), list(EUROSAT_COLORS), title)
    class_legend(fig, list(EUROSAT_CLASSES), list(EUROSAT_COLORS))
    fig.savefig(out, dpi=90)
    plt.close(fig)


def main() -> None:
    from discomkd_geo.constants import EUROSAT_CLASSES
    from discomkd_geo.inference.scoring import score_map

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="demo_out/run",
                        help="trained demo run directory (make demo) [demo_out/run]")
    args = parser.parse_args()
    if not (Path(args.run) / "checkpoints" / "best-sar.ckpt").exists():
        sys.exit(f"Error: {args.run}: no trained demo run; run `make demo` first")
    run = str(Path(args.run).resolve())
    tiles = HERE.parent / "tiles" / "demo"
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_inference_") as tmp:
        tmp = Path(tmp)
        scene = tmp / "scene" / "sar.tif"
        scene.parent.mkdir()
        scene.write_bytes((tiles / "sar.tif").read_bytes())
        for backbone in ("demo", "resnet18"):
            for stride in STRIDES:
                for kind in ("windows", "dense", "naive"):
                    out = tmp / f"{backbone}_{kind}_{stride}.tif"
                    result = in_subprocess(kind, scene, out, backbone, stride, run)
                    accuracy = score_map(out, tiles / "truth.tif", list(EUROSAT_CLASSES))
                    rows.append({
                        "model": backbone, "stride": stride, "mode": kind,
                        "pixels_per_s": round(result["pixels"] / result["seconds"], 1),
                        "seconds": round(result["seconds"], 2),
                        "model_share": round(result["model_seconds"] / result["seconds"], 3),
                        "peak_rss_mb": round(result["peak_rss_mb"], 1),
                        "oa_vs_truth": round(accuracy["oa"], 4),
                        "f1_weighted_vs_truth": round(accuracy["f1_weighted"], 4),
                        # Share of pixels mapped in both with the same class.
                        "agreement_with_windows": round(score_map(
                            out, tmp / f"{backbone}_windows_{stride}.tif",
                            list(EUROSAT_CLASSES))["oa"], 4)})
                    print(json.dumps(rows[-1]), flush=True)
        figure = HERE / "inference_modes.png"
        modes_figure({f"{mode} stride {stride}, OA {row['oa_vs_truth']:.3f}":
                      tmp / f"demo_{mode}_{stride}.tif"
                      for mode, stride in (("windows", 32), ("windows", 8), ("dense", 8))
                      for row in rows if (row["model"], row["mode"], row["stride"])
                      == ("demo", mode, stride)}, tiles / "truth.tif", figure)
        patches = patch_f1(run)
        print(json.dumps({"test_patches": patches}), flush=True)
        workers = {}
        for n in (1, 2):
            result = in_subprocess("dense", scene, tmp / f"workers{n}.tif", "demo", 16, run,
                                   workers=n, block_size=256)
            workers[f"{n}_workers_px_per_s"] = round(result["pixels"] / result["seconds"], 1)
        identical = (tmp / "workers1.tif").read_bytes() == (tmp / "workers2.tif").read_bytes()
    total = time.perf_counter() - started

    def rate(model: str, stride: int, mode: str) -> float:
        return next(r["pixels_per_s"] for r in rows
                    if (r["model"], r["stride"], r["mode"]) == (model, stride, mode))

    results = {
        "setup": {"scene": "tiles/demo/sar.tif (526 x 526 px)", "patch_size": PATCH,
                  "strides": list(STRIDES), "batch_size": BATCH, "block_size": 1024,
                  "chunk_size": 1024, "torch_threads": TORCH_THREADS,
                  "cpu_count": os.cpu_count(), "runs": "one per cell, fresh process",
                  "machine": "shared 2-core CPU machine (other jobs running), nice 10",
                  "models": {"demo": "trained demo DisCoM-KD SAR branch, small_cnn width 16",
                             "resnet18": "DisCoM-KD SAR branch, ResNet-18, random weights "
                                         "(speed only)"}},
        "runs": rows,
        "test_patches_demo": patches,
        "dense_vs_naive_stride16": {m: round(rate(m, 16, "dense") / rate(m, 16, "naive"), 2)
                                    for m in ("demo", "resnet18")},
        "dense_vs_windows_stride16": {m: round(rate(m, 16, "dense") / rate(m, 16, "windows"),
                                               2) for m in ("demo", "resnet18")},
        "workers_dense_stride16_block256": {**workers, "byte_identical": identical},
        "bench_seconds": round(total, 1),
    }
    print(f"{'model':<9}{'stride':>7} {'mode':<8}{'px/s':>11}{'model %':>9}{'RSS MB':>8}"
          f"{'OA':>8}{'agree':>8}")
    for r in rows:
        print(f"{r['model']:<9}{r['stride']:>7} {r['mode']:<8}{r['pixels_per_s']:>11,.0f}"
              f"{r['model_share']:>9.1%}{r['peak_rss_mb']:>8.0f}{r['oa_vs_truth']:>8.3f}"
              f"{r['agreement_with_windows']:>8.3f}")
    print(f"test patches, weighted F1: windows {patches['f1_weighted_windows']:.3f}, "
          f"dense {patches['f1_weighted_dense']:.3f} (agreement {patches['agreement']:.3f})")
    print(f"dense / naive at stride 16: {results['dense_vs_naive_stride16']}")
    print(f"dense, stride 16, 1 | 2 workers: {workers} (byte-identical: {identical})")
    print(f"total {total:.0f} s; maps by mode: {figure}")
    print(f"-> {merge_results('inference', results)} [inference]")


if __name__ == "__main__":
    main()
