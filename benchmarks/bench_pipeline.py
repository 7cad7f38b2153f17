"""The training data pipeline alone at scale: synthesis, cache fill, samples/s, memory.

Writes a synthetic EuroSat-MS-SAR with ``--per-class`` pairs per class (the published
dataset: 2,700, i.e. 27,000 pairs; ``--per-class 2700`` runs the full size) into a
temporary directory (deleted afterwards), and reports:

* how long ``make_eurosat`` took and the dataset's size on disk;
* for 0, 2 and 4 DataLoader workers, the unpaired class-balanced training loader of
  ``MSSARDataModule`` (batch 128): the first epoch, which fills the decoded-image cache,
  then a cached epoch, in MS/SAR pairs per second; the process's RSS (workers' too:
  shared pages count in each) and the shared memory the caches took;
* the same with the disk-backed cache (``/dev/shm`` reported full): what a machine with
  a small ``/dev/shm`` gets;

against the rate one GPU consumes: :data:`GPU_PAIRS_PER_S`, an estimate (see there).
Merges key ``pipeline`` into ``benchmarks/results.json``.

Run: ``python benchmarks/bench_pipeline.py [--per-class 270] [--workers 0,2,4]``.
"""

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import torch
from _results import merge_results

from discomkd_geo.config import load_config
from discomkd_geo.data import cache
from discomkd_geo.data.datamodule import MSSARDataModule
from discomkd_geo.data.synthetic import make_eurosat

#: MS/SAR pairs per second one DisCoM-KD ResNet-18 training step consumes on an A100 at
#: batch 128: an estimate, not a measurement. Published ResNet-18 training throughputs on
#: an A100 with mixed precision are about 3,000 images/s at 224x224 px (1.8 GFLOP per
#: forward pass). A 64x64 patch needs 12x fewer operations; small images use a GPU less
#: well, so assume 8x: 24,000 encoder passes/s. DisCoM-KD runs four ResNet-18 encoders
#: per pair (two per modality: the modality-invariant and -specific ones), so about
#: 6,000 pairs/s. The target is a pipeline at 3x that: 18,000 pairs/s.
GPU_PAIRS_PER_S = 6000.0
TARGET_FACTOR = 3.0


def disk_bytes(root: Path) -> int:
    """Bytes of every file under ``root``."""
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def shm_used() -> int:
    """Bytes used in /dev/shm now (0 where there is none)."""
    try:
        stat = os.statvfs(cache.SHM)
    except OSError:
        return 0
    return (stat.f_blocks - stat.f_bfree) * stat.f_frsize


def rss_mib() -> tuple[float, float]:
    """RSS of this process and the sum over its children (DataLoader workers), in MiB."""
    me = psutil.Process()
    children = sum(c.memory_info().rss for c in me.children(recursive=True))
    return me.memory_info().rss / 2**20, children / 2**20


def time_loader(root: Path, workers: int, batch_size: int) -> dict[str, Any]:
    """Statistics pass, cache-filling epoch and a cached epoch of the training loader."""
    config = load_config(None, (f"data.root={root}", f"data.num_workers={workers}",
                                f"data.batch_size={batch_size}", "data.cache_mib=100000"))
    shm_before = shm_used()
    start = time.perf_counter()
    dm = MSSARDataModule(config.data, seed=0)
    dm.setup("fit")
    setup_s = time.perf_counter() - start
    loader = dm.train_dataloader()
    rates, seconds, rss = [], [], (0.0, 0.0)
    for _ in range(2):
        start, n = time.perf_counter(), 0
        for batch in loader:
            n += batch["label_ms"].shape[0]
        seconds.append(time.perf_counter() - start)
        rates.append(n / seconds[-1])
        rss = rss_mib()  # while the persistent workers live
    caches = [c for ds in dm.train_datasets.values()
              for c in getattr(ds, "caches", {}).values()]
    return {"workers": workers, "setup_s": round(setup_s, 1),
            "cache_fill_epoch_s": round(seconds[0], 1),
            "pairs_per_s_filling": round(rates[0]),
            "pairs_per_s_cached": round(rates[1]),
            "x_gpu_estimate": round(rates[1] / GPU_PAIRS_PER_S, 2),
            "rss_mib": round(rss[0]), "workers_rss_mib": round(rss[1]),
            "shm_used_mib": round((shm_used() - shm_before) / 2**20),
            "cache_location": sorted({c.location for c in caches})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=270,
                        help="pairs per class (published size: 2700)")
    parser.add_argument("--workers", default="0,2,4", help="worker counts to time")
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    torch.manual_seed(0)
    workers = [int(w) for w in args.workers.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "eurosat"
        start = time.perf_counter()
        make_eurosat(root, args.per_class, seed=0)
        synth_s = time.perf_counter() - start
        size = disk_bytes(root)
        print(f"synth eurosat --per-class {args.per_class}: {10 * args.per_class} pairs in "
              f"{synth_s:.0f} s, {size / 2**20:.0f} MiB on disk")
        rows = [time_loader(root, w, args.batch_size) for w in workers]
        free = cache.shm_free_bytes
        cache.shm_free_bytes = lambda: 0  # /dev/shm full: the disk-backed map
        try:
            disk = [time_loader(root, w, args.batch_size) for w in workers if w]
        finally:
            cache.shm_free_bytes = free
    full = 27_000 / (10 * args.per_class)
    for r in [*rows, *disk]:
        print(f"{r['workers']} workers {','.join(r['cache_location'])}: fill epoch "
              f"{r['cache_fill_epoch_s']} s ({r['pairs_per_s_filling']} pairs/s), cached "
              f"{r['pairs_per_s_cached']} pairs/s = {r['x_gpu_estimate']}x the GPU estimate, "
              f"RSS {r['rss_mib']} MiB (+{r['workers_rss_mib']} workers), "
              f"shm {r['shm_used_mib']} MiB")
    merge_results("pipeline", {
        "what": "MSSARDataModule unpaired training loader alone (no model): MS/SAR pairs/s "
                "of the cache-filling first epoch and of a cached epoch; one pair = a 13-band "
                "MS and a 2-band SAR 64x64 sample",
        "command": f"python benchmarks/bench_pipeline.py --per-class {args.per_class} "
                   f"--workers {args.workers} --batch-size {args.batch_size}",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores "
                   "(shared with other jobs while measured)",
        "pairs": 10 * args.per_class,
        "synth_s": round(synth_s, 1),
        "disk_mib": round(size / 2**20),
        "full_size_estimate": {
            "pairs": 27_000, "synth_s": round(synth_s * full),
            "disk_gib": round(size * full / 2**30, 2),
            "cache_gib_float32": round(27_000 * 15 * 64 * 64 * 4 / 2**30, 2)},
        "gpu_pairs_per_s_estimate": GPU_PAIRS_PER_S,
        "target_pairs_per_s": GPU_PAIRS_PER_S * TARGET_FACTOR,
        "shared_memory": rows,
        "disk_backed": disk,
    })


if __name__ == "__main__":
    main()
