"""Per-pixel fusion of MS and SAR: which rule, and what it gains over either branch.

With a trained run (``--run``, default the demo's ``demo_out/run``), on synthetic scenes
of ``--size`` px (``discomkd-geo synth scene``; the demo trains on seed 0's patches only):

1. **Validation** (seeds ``--validation-seeds``, clear sky): the MS-only and SAR-only maps,
   and the two-modality map with every fusion rule (:mod:`discomkd_geo.inference.fusion`;
   ``weighted`` with each branch's validation OA) with and without the smoothing of mode
   pixel. The rule and smoothing with the best mean OA are the engine's defaults; the
   held-out scenes play no part in choosing them.
2. **Calibration**: each branch's temperature and its ECE before and after, on the
   validation and test patches.
3. **Held out** (seeds ``--held-out-seeds``) at each ``--cover`` (percent of the MS scene
   under clouds; the scenes' ``scl.tif`` masks them, when the generator and the engine
   support cloud cover): rows MS-only, SAR-only, ``average`` fusion (the behaviour before
   the fusion rules: average, fused maps not smoothed) and the per-pixel map (the
   defaults); columns OA and OA within 3 px of a class boundary against the truth
   (:func:`discomkd_geo.inference.scoring.score_map`, the band of ``score_map.py``),
   px/s (each scene mapped twice, the second timed) and the peak RSS of the process that
   made the row's maps. The per-pixel map's speed is also compared with mapping the two
   branches one after the other (the MS-only and SAR-only times added up), the three
   maps of each scene timed in turns in one process (:func:`speed_child`).

Every row runs in a fresh process with one torch thread. Prints tables, merges key
``fusion`` into benchmarks/results.json and draws benchmarks/fusion.png.

    python benchmarks/bench_fusion.py [--run demo_out/run] [--cover 0 25 50 75]
"""

import argparse
import inspect
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import fmean
from typing import Any

from _results import merge_results

HERE = Path(__file__).resolve().parent
#: One intra-op thread, as the other map benchmarks.
TORCH_THREADS = 1
#: Timed rounds of :func:`speed_child` (their median is taken).
SPEED_REPEATS = 3
#: The smoothing strengths tried on validation scenes for the two-modality maps.
SMOOTHINGS = (0.0, 8.0)
#: Rows of the held-out table: the branches mapped and the settings (``None``: the
#: engine's defaults).
ROWS = {"ms-only": (["ms"], {}), "sar-only": (["sar"], {}),
        "average": (["ms", "sar"], {"fusion": "average", "smoothing": 0.0}),
        "per-pixel": (["ms", "sar"], {})}


def score(map_path: Path, truth_path: Path) -> dict[str, float]:
    """OA and edge OA of a map against its scene's truth."""
    from discomkd_geo.constants import EUROSAT_CLASSES
    from discomkd_geo.inference.scoring import score_map

    figures = score_map(map_path, truth_path, list(EUROSAT_CLASSES))
    return {k: round(figures[k], 4) for k in ("oa", "edge_oa", "coverage")}


def scene_inputs(scene: Path, branches: list[str]) -> dict[str, Any]:
    """Each branch's input: the MS scene masked by its ``scl.tif`` when it has one."""
    from discomkd_geo.inference.io import SceneInput

    masked = (scene / "scl.tif").exists() and "mask" in inspect.signature(SceneInput).parameters
    return {m: SceneInput(str(scene / f"{m}.tif"), mask=str(scene / "scl.tif"))
            if m == "ms" and masked else str(scene / f"{m}.tif") for m in branches}


def child(run: str, branches: list[str], settings: dict[str, Any], scenes: list[str],
          out: str) -> dict[str, Any]:
    """Map every scene in this process (twice, the second timed): figures and peak RSS."""
    import torch

    from discomkd_geo.inference.engine import predict_to_file
    from discomkd_geo.inference.settings import MapSettings
    from discomkd_geo.models.loader import load_predictor

    torch.set_num_threads(TORCH_THREADS)
    predictors = {m: load_predictor(run, m).eval() for m in branches}
    options = MapSettings.of(**settings, device="cpu", overwrite=True, threads=TORCH_THREADS,
                             source=str(Path(out) / "source.tif"))
    rows = []
    for scene in map(Path, scenes):
        target = Path(out) / f"{scene.name}.tif"
        for _ in range(2):  # the first warms the caches up
            start = time.perf_counter()
            summary = predict_to_file(predictors, scene_inputs(scene, branches), target,
                                      options)
            seconds = time.perf_counter() - start
        rows.append({"scene": scene.name, "pixels": summary.pixels,
                     "seconds": round(seconds, 3), "sources": dict(summary.sources),
                     **score(target, scene / "truth.tif")})
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"scenes": rows, "peak_rss_mb": round(peak)}


def speed_child(run: str, scenes: list[str], out: str) -> dict[str, float]:
    """Seconds per scene of the MS-only, SAR-only and per-pixel maps, taken in turns.

    On a shared machine the load drifts within minutes: timing the three maps of a scene
    one after another, :data:`SPEED_REPEATS` times (after one untimed round), and taking
    each one's median compares them under the same load.
    """
    import torch

    from discomkd_geo.inference.engine import predict_to_file
    from discomkd_geo.inference.settings import MapSettings
    from discomkd_geo.models.loader import load_predictor

    torch.set_num_threads(TORCH_THREADS)
    predictors = {m: load_predictor(run, m).eval() for m in ("ms", "sar")}
    times: dict[str, list[float]] = {}
    for scene in map(Path, scenes):
        taken: dict[str, list[float]] = {}
        for round_ in range(SPEED_REPEATS + 1):
            for name in ("ms-only", "sar-only", "per-pixel"):
                branches, settings = ROWS[name]
                options = MapSettings.of(**settings, device="cpu", overwrite=True,
                                         threads=TORCH_THREADS)
                start = time.perf_counter()
                predict_to_file({m: predictors[m] for m in branches},
                                scene_inputs(scene, branches), Path(out) / f"{name}.tif",
                                options)
                if round_:
                    taken.setdefault(name, []).append(time.perf_counter() - start)
        for name, seconds in taken.items():
            times.setdefault(name, []).append(sorted(seconds)[len(seconds) // 2])
    return {name: round(sum(seconds), 3) for name, seconds in times.items()}


def in_subprocess(run: Path, branches: list[str], settings: dict[str, Any],
                  scenes: list[Path], out: Path) -> dict[str, Any]:
    """:func:`child` in a fresh process, with a summary of its scenes."""
    found = _subprocess("--child", [str(run), branches, settings, [str(s) for s in scenes],
                                    str(out)], out)
    rows = found["scenes"]
    found["mean"] = {k: round(fmean(r[k] for r in rows), 4)
                     for k in ("oa", "edge_oa", "coverage")}
    found["range"] = {k: [min(r[k] for r in rows), max(r[k] for r in rows)]
                      for k in ("oa", "edge_oa")}
    found["px_per_s"] = round(sum(r["pixels"] for r in rows) / sum(r["seconds"] for r in rows))
    return found


def _subprocess(kind: str, args: list[Any], out: Path) -> Any:
    """``kind``'s child function run with ``args`` in a fresh process; what it printed."""
    out.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([sys.executable, __file__, kind, json.dumps(args)],
                          capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def make_scenes(seeds: list[int], size: int, cover: int, work: Path) -> list[Path]:
    """Synthetic scenes of ``seeds`` with ``cover`` percent of the MS scene under clouds."""
    from discomkd_geo.data.synthetic import make_scene

    clouds = "cloud_cover" in inspect.signature(make_scene).parameters
    if cover and not clouds:
        raise SystemExit("this generator has no cloud cover (synth scene --cloud-cover)")
    paths = []
    for seed in seeds:
        path = work / f"c{cover}" / f"seed{seed}"
        make_scene(path, size=size, seed=seed, **({"cloud_cover": cover / 100} if cover else {}))
        paths.append(path)
    return paths


def validate(run: Path, scenes: list[Path], work: Path) -> dict[str, Any]:
    """Every rule and smoothing on the validation scenes, and the best by mean OA."""
    ms = in_subprocess(run, ["ms"], {}, scenes, work / "ms")
    sar = in_subprocess(run, ["sar"], {}, scenes, work / "sar")
    accuracy = f"ms={ms['mean']['oa']},sar={sar['mean']['oa']}"
    print(f"validation ms-only OA {ms['mean']['oa']:.4f}, sar-only {sar['mean']['oa']:.4f}",
          flush=True)
    rules: dict[str, Any] = {}
    for rule in ("product", "weighted", "confident", "average"):
        for smoothing in SMOOTHINGS:
            settings = {"fusion": rule, "smoothing": smoothing,
                        **({"branch_accuracy": accuracy} if rule == "weighted" else {})}
            name = f"{rule}-s{smoothing:g}"
            found = in_subprocess(run, ["ms", "sar"], settings, scenes, work / name)
            rules[name] = {"settings": settings, "mean": found["mean"],
                           "range": found["range"]}
            print(f"validation {name:<14} OA {found['mean']['oa']:.4f} edge "
                  f"{found['mean']['edge_oa']:.4f}", flush=True)
    return {"branches": {"ms": ms["mean"], "sar": sar["mean"]}, "rules": rules}


def choose(rules: dict[str, Any]) -> dict[str, str]:
    """The best rule and smoothing by mean validation OA: of all, and of those a user can
    run as they are (``weighted`` needs each branch's accuracy measured on their data)."""
    def best(names: list[str]) -> str:
        return max(names, key=lambda n: rules[n]["mean"]["oa"])

    return {"any": best(list(rules)),
            "as_is": best([n for n in rules if rules[n]["settings"]["fusion"] != "weighted"])}


def held_out(run: Path, scenes: list[Path], work: Path) -> dict[str, Any]:
    """The table's rows on held-out scenes, and the speed against two one-branch maps.

    Every scene is mapped as a user would, checks included (no ``force``): what the clouds
    leave of a scene is checked like a clear one.
    """
    rows = {}
    for name, (branches, settings) in ROWS.items():
        found = in_subprocess(run, branches, settings, scenes, work / name)
        rows[name] = found
        print(f"  {name:<10} OA {found['mean']['oa']:.4f} (range {found['range']['oa']}) "
              f"edge OA {found['mean']['edge_oa']:.4f} coverage {found['mean']['coverage']:.3f} "
              f"{found['px_per_s']:>8} px/s "
              f"RSS {found['peak_rss_mb']} MB", flush=True)
    seconds = _subprocess("--speed", [str(run), [str(s) for s in scenes], str(work / "speed")],
                          work / "speed")
    ratio = round((seconds["ms-only"] + seconds["sar-only"]) / seconds["per-pixel"], 3)
    print(f"  per-pixel map vs MS then SAR: {ratio}x the speed ({seconds} s, medians of "
          f"{SPEED_REPEATS} in turns)", flush=True)
    best_branch = max(rows["ms-only"]["mean"]["oa"], rows["sar-only"]["mean"]["oa"])
    return {"rows": rows, "seconds_in_turns": seconds, "speed_vs_one_after_other": ratio,
            "oa_gain_over_best_branch": round(rows["per-pixel"]["mean"]["oa"] - best_branch, 4)}


def calibration(run: Path) -> dict[str, Any]:
    """Each branch's temperature and ECE (15 bins) before and after it: on the validation
    patches it was fitted on (the run's ``metrics.json``) and on the test patches
    (``evaluate``), which played no part in fitting it."""
    from discomkd_geo.training.evaluate import evaluate

    fitted = json.loads((run / "metrics.json").read_text()).get("calibration", {})
    found = {}
    for m, fit in fitted.items():
        test = evaluate(run, m)
        found[m] = {"temperature": fit["temperature"], "method": fit.get("method"),
                    "val_ece_before": round(fit["ece_before"], 4),
                    "val_ece_after": round(fit["ece_after"], 4),
                    "test_ece_before": round(test["ece_before"], 4),
                    "test_ece_after": round(test["ece_after"], 4)}
        print(f"calibration {m}: T {fit['temperature']:.4g} ({fit.get('method')}), ECE "
              f"validation {fit['ece_before']:.4f} -> {fit['ece_after']:.4f}, test "
              f"{test['ece_before']:.4f} -> {test['ece_after']:.4f}", flush=True)
    return found


def figure(results: dict[str, Any], out: Path) -> None:
    """OA and edge OA per row and cloud cover: held-out mean with range."""
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    covers = list(results)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    width = 0.8 / len(ROWS)
    for ax, key, title in ((axes[0], "oa", "OA"), (axes[1], "edge_oa", "edge OA (3 px)")):
        for i, name in enumerate(ROWS):
            found = [results[c]["rows"][name] for c in covers]
            mean = np.array([f["mean"][key] for f in found])
            low, high = (np.array([f["range"][key][j] for f in found]) for j in (0, 1))
            ax.bar(np.arange(len(covers)) + i * width, mean, width,
                   yerr=[mean - low, high - mean], capsize=3, label=name)
        ax.set_xticks(np.arange(len(covers)) + 0.4 - width / 2,
                      [f"{c}% cloud" for c in covers])
        ax.set_ylim(0, 1)
        ax.set_title(f"held-out scenes: {title} vs truth (mean, range)")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower left")
    fig.savefig(out, dpi=110)
    plt.close(fig)


def seeds(text: str) -> list[int]:
    """``200-204`` or ``200,201`` as a list of seeds."""
    if "-" in text:
        first, last = map(int, text.split("-"))
        return list(range(first, last + 1))
    return [int(s) for s in text.split(",")]


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] in ("--child", "--speed"):
        function = child if sys.argv[1] == "--child" else speed_child
        print(json.dumps(function(*json.loads(sys.argv[2]))))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=HERE.parent / "demo_out" / "run")
    parser.add_argument("--size", type=int, default=320, help="scene side (px)")
    parser.add_argument("--validation-seeds", type=seeds, default=seeds("100-104"))
    parser.add_argument("--held-out-seeds", type=seeds, default=seeds("200-204"))
    parser.add_argument("--cover", type=int, nargs="*", default=[0],
                        help="cloud cover of the held-out MS scenes, percent (none given: "
                             "validation only)")
    parser.add_argument("--skip-validation", action="store_true",
                        help="keep the validation figures results.json holds")
    args = parser.parse_args()
    if set(args.validation_seeds) & set(args.held_out_seeds):
        raise SystemExit("validation and held-out seeds must differ")
    work = Path(tempfile.mkdtemp(prefix="bench_fusion-"))
    # A copy: every row maps with the same model even if the run is retrained meanwhile.
    run = Path(shutil.copytree(args.run, work / "run"))
    from _results import load_results

    earlier = load_results().get("fusion", {})
    validation = earlier.get("validation") if args.skip_validation else validate(
        run, make_scenes(args.validation_seeds, args.size, 0, work / "val"),
        work / "val-maps")
    results = dict(earlier.get("held_out", {}))
    for cover in args.cover:
        print(f"held-out scenes, {cover}% cloud:", flush=True)
        scenes = make_scenes(args.held_out_seeds, args.size, cover, work / "held")
        results[str(cover)] = held_out(run, scenes, work / f"held-maps-{cover}")
    if validation:
        validation["best"] = choose(validation["rules"])
        print(f"validation: best {validation['best']}")
    if results:
        figure(results, HERE / "fusion.png")
    merge_results("fusion", {
        "run": str(args.run), "scene_size": args.size, "torch_threads": TORCH_THREADS,
        "validation_seeds": args.validation_seeds, "held_out_seeds": args.held_out_seeds,
        "calibration": calibration(run), "validation": validation, "held_out": results})
    print(f"-> {HERE / 'results.json'} (fusion), {HERE / 'fusion.png'}")


if __name__ == "__main__":
    main()
