"""Two-stage maps: a trained run's branches frozen, a decoder trained alone, SAR pixel mode.

Fits the SAR decoder of ``--run`` (a run trained without ``model.decoder``, e.g. with
configs/demo.yaml) on mosaics of its training split for ``--epochs`` epochs
(:func:`discomkd_geo.training.decoder_fit.fit_decoders`, seed of the run's config, the
demo's reproducible torch settings), then maps the demo scene and held-out scenes of seeds
101-105 in pixel mode and scores them as bench_maps.py does (OA, weighted F1, edge OA).
``--epochs 0`` scores the untrained decoder (residual zero: the context part alone).
Patch scores are those of the run by construction (its branches are frozen).

Merges the figures under ``maps.runs[LABEL]`` in benchmarks/results.json and redraws
benchmarks/maps.png.

    python benchmarks/bench_decoder_fit.py --run runs/today --epochs 12 --label frozen-dec
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import bench_maps
from _results import load_results, merge_results


def fit(run: Path, epochs: int, out: Path) -> Path:
    """The SAR predictor file with a decoder fitted for ``epochs`` epochs."""
    from discomkd_geo.demo import reproducible
    from discomkd_geo.models.predictor import load_torch_predictor
    from discomkd_geo.training.decoder_fit import fit_decoders, with_decoder

    if epochs == 0:
        best = run / "checkpoints" / "best-sar.ckpt"  # a run directory may load its decoder
        with_decoder(load_torch_predictor(best, "sar")).save(out / "sar.pt", overwrite=True)
        return out / "sar.pt"
    with reproducible():
        return fit_decoders(run, out, ["sar"], epochs=epochs, overwrite=True)["sar"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="trained run directory")
    parser.add_argument("--epochs", type=int, default=12, help="decoder epochs (0: untrained)")
    parser.add_argument("--scenes", type=int, default=5, help="held-out synthetic scenes")
    parser.add_argument("--label", default="frozen-dec", help="name under maps.runs")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_decoder_fit-"))
    start = time.perf_counter()
    predictor = fit(args.run, args.epochs, work)
    seconds = round(time.perf_counter() - start, 1)
    scenes = bench_maps.held_out(args.scenes, 512, work)
    demo = work / "demo"
    demo.mkdir()
    for name in ("sar.tif", "truth.tif"):
        (demo / name).symlink_to(bench_maps.DEMO / name)
    found = bench_maps.in_subprocess(predictor, "pixel", [demo, *scenes], work, "sar")
    found["summary"] = bench_maps.summarise(found["scenes"])
    for row in found["scenes"]:
        row.pop("map", None)
    print(f"{args.label}: fit {seconds} s; {json.dumps(found['summary'])}")
    maps = load_results()["maps"]
    maps["runs"][args.label] = {
        "run": str(args.run), "decoder_epochs": args.epochs, "fit_seconds": seconds,
        "recipe": "run's branches frozen, only the SAR decoder trained on mosaics of its "
                  "training split (Adam lr 1e-3); pixel mode",
        "sar": {"pixel": found}}
    merge_results("maps", maps)
    bench_maps.figure({k: v for k, v in maps["runs"].items() if k != "cross_check"},
                      bench_maps.HERE / "maps.png")


if __name__ == "__main__":
    main()
