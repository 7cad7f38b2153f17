"""Map accuracy by inference mode: the demo scene and held-out synthetic scenes.

For each trained run given (``--run LABEL=RUN_DIR``, default the demo's ``demo_out/run``)
and each mode
  windows-s32  every 64 px window alone at stride 32 (the default without a decoder),
  windows-s8   the same at stride 8,
  dense-s16    dense mode at stride 16,
  pixel-raw    the per-pixel decoder alone (runs with one: ``model.decoder_epochs``,
               ``discomkd-geo fit-decoder``, or ``model.decoder``), no smoothing,
  pixel        the same with the mean-field smoothing's defaults (the default mode then),
one fresh process maps, from SAR alone, the demo scene (``tiles/demo/sar.tif``) and
``--scenes`` synthetic scenes generated with seeds 101, 102, ... (no training saw them:
the demo trains on patches of seed 0), and reports per scene the overall accuracy,
weighted F1, the OA within 3 px of a class boundary ("edge OA", the band of
``score_map.py``; :mod:`discomkd_geo.inference.scoring` scores) and pixels/s (the demo
and ``--big`` scenes': the median of :data:`REPEATS` maps), and the process's peak RSS. MS-only
and fused (MS + SAR) maps of the held-out scenes follow for
windows-s32, pixel-raw and pixel (fused maps were not smoothed by default before the
fusion rules; ``bench_fusion.py`` measures today's). ``--big
SIZE`` adds the speed on one larger scene (seed 100), where pixel mode works in 1024 px
blocks and the smoothing's reach around each block is assembled from the neighbouring
blocks' probabilities (on the 512 px scenes one block holds the whole scene). One edge
OA is checked against the reference scorer (``--score-map PATH``, e.g. the issues'
``score_map.py``).

Prints tables, merges key ``maps`` into benchmarks/results.json (runs measured earlier
under other labels are kept, so runs can be measured as they finish) and draws
benchmarks/maps.png (OA and edge OA per mode: demo scene and held-out mean with range) of
the runs given this time.

    python benchmarks/bench_maps.py --run today=runs/a --run pixel=runs/b [--scenes 5]
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _results import load_results, merge_results

HERE = Path(__file__).resolve().parent
DEMO = HERE.parent / "tiles" / "demo"
#: name: settings of :func:`discomkd_geo.inference.engine.predict_to_file`.
MODES = {"windows-s32": {"mode": "windows", "stride": 32},
         "windows-s8": {"mode": "windows", "stride": 8},
         "dense-s16": {"mode": "dense", "stride": 16},
         "pixel-raw": {"mode": "pixel", "smoothing": 0.0},
         "pixel": {"mode": "pixel"}}
#: The modes that need a decoder.
PIXEL = ("pixel-raw", "pixel")
#: The branches each map uses.
BRANCHES = {"sar": ["sar"], "ms": ["ms"], "fused": ["ms", "sar"]}
#: One intra-op thread, as bench_inference (OpenMP barriers stall on a shared machine).
TORCH_THREADS = 1
#: Maps of the demo scene and of the ``--big`` scene per mode (px/s: their median;
#: ``px_per_s_first``: the first, in a fresh process). Single timings varied by 30% from
#: run to run on the demo scene, and by 13% on a 2048 px scene (between two runs of this
#: script); each held-out scene is mapped once (their figures are summarised together).
REPEATS = 3
#: The scenes mapped :data:`REPEATS` times.
REPEATED = ("demo", "big")


def score(map_path: Path, truth_path: Path) -> dict:
    """OA, weighted F1, edge OA and coverage (:func:`discomkd_geo.inference.scoring.score_map`)."""
    from discomkd_geo.constants import EUROSAT_CLASSES
    from discomkd_geo.inference.scoring import score_map

    figures = score_map(map_path, truth_path, list(EUROSAT_CLASSES))
    return {k: round(figures[k], 4) for k in ("oa", "f1_weighted", "edge_oa", "coverage")}


def child(run: str, mode_name: str, scenes: list[str], out: str, modality: str) -> dict:
    """Map every scene in this process; per-scene figures and the peak RSS."""
    import torch

    from discomkd_geo.inference.engine import predict_to_file
    from discomkd_geo.inference.settings import MapSettings
    from discomkd_geo.models.predictor import load_torch_predictor

    torch.set_num_threads(TORCH_THREADS)
    names = BRANCHES[modality]
    predictors = {m: load_torch_predictor(run, m).eval() for m in names}
    settings = MapSettings.of(**MODES[mode_name], device="cpu", overwrite=True,
                              threads=TORCH_THREADS)
    rows = []
    for scene in scenes:
        sources = {m: str(Path(scene) / f"{m}.tif") for m in names}
        target = Path(out) / f"{Path(scene).name}-{mode_name}-{modality}.tif"
        seconds = []
        for _ in range(REPEATS if Path(scene).name in REPEATED else 1):
            start = time.perf_counter()
            summary = predict_to_file(predictors, sources, target, settings)
            seconds.append(time.perf_counter() - start)
        rows.append({"scene": Path(scene).name, "map": str(target),
                     "px_per_s": round(summary.pixels / float(np.median(seconds))),
                     "px_per_s_first": round(summary.pixels / seconds[0]),
                     **score(target, Path(scene) / "truth.tif")})
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"scenes": rows, "peak_rss_mb": round(peak)}


def in_subprocess(run: Path, mode: str, scenes: list[Path], out: Path, modality: str) -> dict:
    args = [sys.executable, __file__, "--child", json.dumps(
        [str(run), mode, [str(s) for s in scenes], str(out), modality])]
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def held_out(count: int, size: int, work: Path) -> list[Path]:
    """Synthetic scenes of seeds 101, 102, ... (the demo trains on seed 0's patches): the
    scenes ``compare``'s map score maps."""
    from discomkd_geo.training.map_score import MapScore, make_scenes

    return make_scenes(MapScore(count, size=size), work)


def run_modes(run: Path, modality: str) -> list[str]:
    """The modes the run maps ``modality`` in: the pixel modes only if every branch the map
    uses has a decoder (the demo gives its SAR branch one, not its MS branch)."""
    from discomkd_geo.models.predictor import load_torch_predictor

    pixel = all(load_torch_predictor(run, m).has_decoder for m in BRANCHES[modality])
    return [m for m in MODES if m not in PIXEL or pixel]


def summarise(rows: list[dict]) -> dict:
    """Demo scene's figures, and mean/min/max over the held-out scenes."""
    demo = next(r for r in rows if r["scene"] == "demo")
    rest = [r for r in rows if r["scene"] != "demo"]
    out = {"demo": {k: demo[k] for k in ("oa", "f1_weighted", "edge_oa", "px_per_s")}}
    if rest:
        out["held_out"] = {k: {"mean": round(float(np.mean([r[k] for r in rest])), 4),
                               "min": min(r[k] for r in rest), "max": max(r[k] for r in rest)}
                           for k in ("oa", "f1_weighted", "edge_oa")}
    return out


def figure(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = list(results)
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), layout="constrained")
    for ax, key, title in ((axes[0], "oa", "OA"), (axes[1], "edge_oa", "edge OA (3 px)")):
        # Every mode keeps its place, whichever modes a run was measured in.
        labels = [m for m in MODES if any(m in results[r]["sar"] for r in runs)]
        width = 0.8 / max(1, len(runs))
        for i, run in enumerate(runs):
            modes = [m for m in labels if m in results[run]["sar"]]
            xs = np.array([labels.index(m) for m in modes]) + i * width
            demo = [results[run]["sar"][m]["summary"]["demo"][key] for m in modes]
            held = [results[run]["sar"][m]["summary"].get("held_out", {}).get(key) for m in modes]
            ax.bar(xs, demo, width * 0.45, label=f"{run}: demo scene")
            if all(h is not None for h in held):
                mean = [h["mean"] for h in held]
                err = np.array([[h["mean"] - h["min"] for h in held],
                                [h["max"] - h["mean"] for h in held]])
                ax.bar(xs + width * 0.45, mean, width * 0.45, yerr=err, capsize=3,
                       label=f"{run}: held-out mean (range)")
        ax.set_xticks(np.arange(len(labels)) + 0.4 - width / 2, labels)
        ax.set_ylim(0, 1)
        ax.set_title(f"SAR-only map {title} vs truth")
        ax.grid(axis="y", alpha=0.3)
    axes[1].legend(fontsize=7, loc="upper left", ncols=2)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        print(json.dumps(child(*json.loads(sys.argv[2]))))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", default=[],
                        help="LABEL=RUN_DIR (repeatable; default today=demo_out/run)")
    parser.add_argument("--scenes", type=int, default=5, help="held-out synthetic scenes")
    parser.add_argument("--size", type=int, default=512, help="held-out scene side (px)")
    parser.add_argument("--score-map", type=Path, help="reference scorer to cross-check")
    parser.add_argument("--key", default="maps", help="key in results.json")
    parser.add_argument("--big", type=int, help="side (px) of a larger scene timed too")
    args = parser.parse_args()
    runs = dict(r.split("=", 1) for r in args.run) or {"today": "demo_out/run"}
    work = Path(tempfile.mkdtemp(prefix="bench_maps-"))
    scenes = held_out(args.scenes, args.size, work)
    demo = work / "demo"
    demo.mkdir()
    for name in ("sar.tif", "truth.tif"):
        (demo / name).symlink_to(DEMO / name)
    results: dict = {}
    big = None
    if args.big:
        from discomkd_geo.data.synthetic import make_scene

        big = work / "big"
        make_scene(big, size=args.big, seed=100)
    for label, run in runs.items():
        run, out = Path(run), work / "maps" / label  # each run's maps apart (cross-check)
        out.mkdir(parents=True)
        modes = run_modes(run, "sar")
        results[label] = {"run": str(run), "sar": {}, "ms": {}, "fused": {}}
        for mode in modes:
            found = in_subprocess(run, mode, [demo, *scenes], out, "sar")
            found["summary"] = summarise(found["scenes"])
            results[label]["sar"][mode] = found
            s = found["summary"]
            held = s.get("held_out", {})
            print(f"{label:>10} sar {mode:<12} demo OA {s['demo']['oa']:.3f} "
                  f"F1 {s['demo']['f1_weighted']:.3f} edge {s['demo']['edge_oa']:.3f} "
                  f"{s['demo']['px_per_s']:>8} px/s RSS {found['peak_rss_mb']} MB | held-out "
                  f"OA {held.get('oa', {}).get('mean', float('nan')):.3f} "
                  f"edge {held.get('edge_oa', {}).get('mean', float('nan')):.3f}", flush=True)
        for mode in (m for m in ("windows-s32", *PIXEL) if big and m in modes):
            found = in_subprocess(run, mode, [big], out, "sar")
            results[label].setdefault("big", {})[mode] = found
            row = found["scenes"][0]
            print(f"{label:>10} sar {mode:<12} {args.big} px scene: OA {row['oa']:.3f} edge "
                  f"{row['edge_oa']:.3f} {row['px_per_s']:>8} px/s RSS {found['peak_rss_mb']} MB",
                  flush=True)
        for modality in ("ms", "fused"):
            usable = run_modes(run, modality)
            for mode in (m for m in ("windows-s32", *PIXEL) if m in usable):
                found = in_subprocess(run, mode, scenes, out, modality)
                rows = found["scenes"]
                found["summary"] = {k: round(float(np.mean([r[k] for r in rows])), 4)
                                    for k in ("oa", "f1_weighted", "edge_oa", "px_per_s")}
                results[label][modality][mode] = found
                print(f"{label:>10} {modality:<5} {mode:<12} held-out mean "
                      f"{json.dumps(found['summary'])}", flush=True)
    if args.score_map:
        first = results[next(iter(results))]["sar"]["windows-s32"]["scenes"][0]
        ref = subprocess.run([sys.executable, str(args.score_map), first["map"],
                              str(demo / "truth.tif")], capture_output=True, text=True,
                             check=True).stdout.strip()
        print(f"cross-check, {first['map']}: ours OA {first['oa']:.3f} edge OA "
              f"{first['edge_oa']:.3f}; score_map.py: {ref}")
        results["cross_check"] = {"ours": {k: first[k] for k in ("oa", "edge_oa")},
                                  "score_map_py": ref}
    for run in results.values():
        for modality in ("sar", "ms", "fused", "big"):
            for found in run.get(modality, {}).values():
                for row in found["scenes"]:
                    row.pop("map", None)
    # Runs measured before under the same key (other --run labels) are kept.
    # The figure shows this invocation's runs (measured in one run of the script).
    figure({k: v for k, v in results.items() if k != "cross_check"}, HERE / "maps.png")
    earlier = load_results().get(args.key, {}).get("runs", {})
    merge_results(args.key, {"torch_threads": TORCH_THREADS, "scene_size": args.size,
                             "big_scene": {"size": args.big, "seed": 100} if big else None,
                             "held_out_seeds": list(range(101, 101 + args.scenes)),
                             "runs": {**earlier, **results}})
    print(f"-> {HERE / 'results.json'} ({args.key}), {HERE / 'maps.png'}")


if __name__ == "__main__":
    main()
