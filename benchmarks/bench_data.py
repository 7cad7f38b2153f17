"""Data-loading throughput of the DataModule's training loader, against the training rate.

Writes synthetic EuroSat-MS-SAR (``make_eurosat``, 100 pairs per class, 64x64 px) into a
temporary directory, then times full epochs of ``MSSARDataModule.train_dataloader()``
(paired and unpaired draws, 0 and 2 worker processes), with and without the device-side
normalisation + Kornia augmentation that ``on_after_batch_transfer`` applies. The first
epoch includes starting the workers; the second shows persistent workers. Figures are
MS/SAR sample pairs per second, compared with the DisCoM-KD training step rate (ResNet-18,
batch 128, this CPU), so the loader is not the bottleneck when its rate is well above it.

Run: ``python benchmarks/bench_data.py [--per-class 100] [--batch-size 128]``. Merges key
``data`` into ``benchmarks/results.json``.
"""

import argparse
import os
import platform
import tempfile
import time

import torch
from _results import load_results, merge_results

from discomkd_geo.config import load_config
from discomkd_geo.data.datamodule import MSSARDataModule
from discomkd_geo.data.synthetic import make_eurosat

#: DisCoM-KD training pairs/s with ResNet-18 at batch 128 on this 2-core CPU (the
#: training benchmark's figure; used when results.json has none).
TRAINING_PAIRS_PER_S = 30.0


def training_rate(results: dict) -> tuple[float, str]:
    """The measured training rate from the results file, if the training benchmark ran."""
    rate = results.get("training", {}).get("methods", {}).get("discomkd", {}).get("samples_per_s")
    if isinstance(rate, int | float):
        return float(rate), "results.json[training]"
    return TRAINING_PAIRS_PER_S, "brief estimate"


def time_epochs(root: str, paired: bool, workers: int, batch_size: int,
                preprocess: bool, epochs: int = 2) -> list[float]:
    """Pairs per second of each of ``epochs`` consecutive training epochs."""
    config = load_config(None, (f"data.root={root}", f"data.paired={paired}",
                                f"data.num_workers={workers}",
                                f"data.batch_size={batch_size}")).data
    dm = MSSARDataModule(config, seed=0)
    dm.setup("fit")
    loader = dm.train_dataloader()
    rates = []
    for _ in range(epochs):
        start, n = time.perf_counter(), 0
        for batch in loader:
            if preprocess:
                batch = dm.preprocess(batch, augment=True)
            n += batch["label_ms"].shape[0]
        rates.append(n / (time.perf_counter() - start))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    torch.manual_seed(0)
    train_rate, source = training_rate(load_results())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.join(tmp, "eurosat")
        make_eurosat(root, args.per_class, seed=0)
        for paired in (False, True):
            for workers in (0, 2):
                for preprocess in (False, True):
                    first, warm = time_epochs(root, paired, workers, args.batch_size,
                                              preprocess)
                    rows.append({"paired": paired, "workers": workers,
                                 "normalise_augment": preprocess,
                                 "pairs_per_s_first_epoch": round(first, 1),
                                 "pairs_per_s": round(warm, 1),
                                 "x_training_rate": round(warm / train_rate, 1)})
    print(f"train loader, {args.per_class * 7} training pairs/epoch (64x64, 13+2 bands), "
          f"batch {args.batch_size}, {os.cpu_count()} CPU cores; "
          f"training rate {train_rate:.0f} pairs/s ({source})")
    print(f"{'draws':<9}{'workers':>8}{'norm+aug':>10}{'1st epoch':>11}{'warm':>9}"
          f"{'x train':>9}")
    for r in rows:
        print(f"{'paired' if r['paired'] else 'unpaired':<9}{r['workers']:>8}"
              f"{'yes' if r['normalise_augment'] else 'no':>10}"
              f"{r['pairs_per_s_first_epoch']:>11.1f}{r['pairs_per_s']:>9.1f}"
              f"{r['x_training_rate']:>9.1f}")
    merge_results("data", {
        "what": "MSSARDataModule train loader, MS/SAR pairs per second (one pair = one MS "
                "and one SAR 64x64 sample); warm = second epoch (persistent workers)",
        "command": "python benchmarks/bench_data.py "
                   f"--per-class {args.per_class} --batch-size {args.batch_size}",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                   f"torch {torch.__version__}",
        "training_pairs_per_s": train_rate,
        "training_rate_source": source,
        "rows": rows,
    })


if __name__ == "__main__":
    main()
