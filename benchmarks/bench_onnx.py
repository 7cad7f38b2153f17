"""ONNX benchmark: the same branch mapped through onnxruntime and through PyTorch.

Prints a table and merges key "onnx" into benchmarks/results.json.

On the demo scene (tiles/demo/sar.tif, 526 x 526 px), windows mode, stride 32, batch 32,
one local worker: the engine's px/s with the torch :class:`Predictor` and with the
:class:`OnnxPredictor` of the same branch exported by ``export_onnx``, for DisCoM-KD SAR
branches (random weights: speed only)
  small_cnn          the demo model's architecture (small_cnn, width 16),
  resnet18           ResNet-18,
with 2 intra-op threads (the machine's 2 cores) and with 1; and in mode pixel (smoothing
on, as by default), one thread,
  small_cnn_decoder  small_cnn width 16 with a per-pixel decoder.
Everything runs in this one
process, the two runtimes alternating, REPEATS times per cell after one warm-up run;
the table gives medians of px per wall-clock second and of px per CPU second (the
process's user + system time: on a machine shared with other jobs, wall time measures
the load as much as the runtime). Also the largest probability difference between the
two runtimes' probability rasters and the share of identical map pixels.

    python benchmarks/bench_onnx.py [--repeats 5] [--models small_cnn_decoder ...]
"""

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from _results import load_results, merge_results

HERE = Path(__file__).resolve().parent
SCENE = HERE.parent / "tiles" / "demo" / "sar.tif"
PATCH, BATCH, STRIDE = 64, 32, 32
#: name: (backbone, width, decoder, mode, threads)
MODELS = {"small_cnn": ("small_cnn", 16, False, "windows", (2, 1)),
          "resnet18": ("resnet18", 8, False, "windows", (2, 1)),
          "small_cnn_decoder": ("small_cnn", 16, True, "pixel", (1,))}


def branches(backbone: str, width: int, decoder: bool, out: Path):
    """The torch predictor of a random DisCoM-KD SAR branch and its ONNX twin."""
    import torch

    from discomkd_geo.constants import EUROSAT_CLASSES, EUROSAT_COLORS, S1_BANDS
    from discomkd_geo.data.bandstats import BandStats
    from discomkd_geo.models.branches import build_branch
    from discomkd_geo.models.info import PredictorInfo
    from discomkd_geo.models.onnx_export import export_onnx
    from discomkd_geo.models.onnx_predictor import OnnxPredictor
    from discomkd_geo.models.predictor import Predictor

    torch.manual_seed(0)
    spec = {"kind": "discomkd", "in_channels": 2, "num_classes": len(EUROSAT_CLASSES),
            "backbone": backbone, "width": width, **({"decoder": True} if decoder else {})}
    info = PredictorInfo("sar", list(S1_BANDS), list(EUROSAT_CLASSES), list(EUROSAT_COLORS),
                         PATCH, 10.0, "dB", branch_spec=spec)
    stats = BandStats("meanstd", list(S1_BANDS), [-12.0, -19.0], [4.0, 4.0])
    branch = build_branch(**spec)
    if decoder:  # a decoder's last layer starts at zero: make it count
        with torch.no_grad():
            branch.decoder.residual[-1].weight.normal_(0, 0.1)
    model = Predictor(branch, stats, info).eval()
    path = out / f"{backbone}.onnx"
    export_onnx(model, path, overwrite=True)
    return model, OnnxPredictor.load(path)


def run(predictor, out: Path, threads: int, mode: str) -> tuple[float, float]:
    """px per wall second and per CPU second of one engine run (probabilities kept)."""
    from discomkd_geo.inference.engine import predict_to_file
    from discomkd_geo.inference.settings import MapSettings

    predictor.set_threads(threads)
    start, cpu = time.perf_counter(), time.process_time()
    summary = predict_to_file(predictor, SCENE, out, MapSettings.of(
        stride=STRIDE, mode=mode, batch_size=BATCH, overwrite=True, force=True,
        probabilities=out.with_suffix(".p.tif")))
    return (summary.pixels / (time.perf_counter() - start),
            summary.pixels / (time.process_time() - cpu))


def read(path: Path) -> np.ndarray:
    import rasterio

    with rasterio.open(path) as src:
        return src.read()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    args = parser.parse_args()
    import onnxruntime
    import torch

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        for name in args.models:
            backbone, width, decoder, mode, threads_list = MODELS[name]
            runtimes = dict(zip(("torch", "onnxruntime"),
                                branches(backbone, width, decoder, out), strict=True))
            for threads in threads_list:
                speeds: dict[str, list[tuple[float, float]]] = {r: [] for r in runtimes}
                for r, predictor in runtimes.items():  # warm-up: sessions, kernels
                    run(predictor, out / f"{r}.tif", threads, mode)
                for _ in range(args.repeats):
                    for r, predictor in runtimes.items():
                        speeds[r].append(run(predictor, out / f"{r}.tif", threads, mode))
                codes = [read(out / f"{r}.tif") for r in runtimes]
                probs = [read(out / f"{r}.p.tif") for r in runtimes]
                row = {"model": name, "mode": mode, "threads": threads, "stride": STRIDE,
                            **{f"{r}_px_per_s": round(statistics.median(w for w, _ in s), 1)
                          for r, s in speeds.items()},
                       **{f"{r}_px_per_cpu_s": round(statistics.median(c for _, c in s), 1)
                          for r, s in speeds.items()},
                       "max_abs_probability_difference": float(np.nanmax(
                           np.abs(probs[0] - probs[1]))),
                       "identical_map_share": float((codes[0] == codes[1]).mean())}
                row["onnx_over_torch"] = round(row["onnxruntime_px_per_s"]
                                               / row["torch_px_per_s"], 2)
                row["onnx_over_torch_cpu"] = round(row["onnxruntime_px_per_cpu_s"]
                                                   / row["torch_px_per_cpu_s"], 2)
                rows.append(row)
                print(f"{name:>9} {threads} thr: torch {row['torch_px_per_s']:>9,.0f} px/s  "
                      f"onnxruntime {row['onnxruntime_px_per_s']:>9,.0f} px/s  "
                      f"ratio {row['onnx_over_torch']:.2f} (per CPU s "
                      f"{row['onnx_over_torch_cpu']:.2f})  max |dp| "
                      f"{row['max_abs_probability_difference']:.1e}  identical "
                      f"{row['identical_map_share']:.4%}", flush=True)
    # Rows of the models not run this time are kept (``--models`` runs some only).
    kept = [r for r in load_results().get("onnx", {}).get("runs", [])
            if r["model"] not in args.models]
    merge_results("onnx", {
        "setup": {"scene": "tiles/demo/sar.tif (526 x 526 px)",
                  "mode": "windows, and pixel for small_cnn_decoder (smoothing on)",
                  "stride": STRIDE, "batch_size": BATCH, "workers": 1,
                  "statistic": "medians of px per wall second and per CPU second (user + "
                               "system time of the process), one process",
                  "cpu_count": os.cpu_count(), "torch": torch.__version__,
                  "onnxruntime": onnxruntime.__version__, "python": platform.python_version(),
                  "machine": "shared 2-core CPU machine (other jobs running)",
                  "models": {"small_cnn": "DisCoM-KD SAR branch, small_cnn width 16 (the "
                                          "demo architecture), random weights",
                             "resnet18": "DisCoM-KD SAR branch, ResNet-18, random weights",
                             "small_cnn_decoder": "small_cnn width 16 with a per-pixel "
                                                  "decoder, random weights"}},
        "runs": kept + rows})


if __name__ == "__main__":
    main()
