"""The training data pipeline alone at scale: synthesis, cache fill, samples/s, memory.

Writes a synthetic EuroSat-MS-SAR with ``--per-class`` pairs per class (the published
dataset: 2,700, i.e. 27,000 pairs; ``--per-class 2700`` runs the full size) into a
temporary directory (deleted afterwards), and reports:

* how long ``make_eurosat`` took and the dataset's size on disk;
* the statistics pass of ``MSSARDataModule.setup`` (the default unpaired training reads,
  and so caches, every training image there);
* for 0, 2 and 4 DataLoader workers (the DataModule runs at most one per core:
  ``workers_run``), the unpaired class-balanced training loader
  (batch 128) two ways, on the same draws: ``per-sample`` (a plain DataLoader: each
  worker copies every image out of the cache, collates, and sends the batch through
  shared memory) and ``gathered`` (the default, ``batching.BatchLoader``: a batch whose
  images are cached is copied out of the cache image by image into the batch, in the
  loading process, into batch buffers reused once the batch is dropped; workers only
  read what the cache lacks). The consumer reads every page of every image, as a copy
  to a GPU does. Each loader's first
  epoch fills its own decoded-image cache; then cached epochs alternate between the two
  loaders, and the median is reported, in MS/SAR pairs per second of wall time and per
  CPU-second of the loading process and its workers (less sensitive to other jobs on
  the machine); the RSS of the process and of its workers (shared pages count in each)
  and the shared memory taken;
* the gathered loader with the disk-backed cache (``/dev/shm`` reported full): what a
  machine with a small ``/dev/shm`` gets;
* with ``--compare-float32``, also the gathered loader whose caches keep the MS digital
  numbers as float32 (``gathered-float32``, every cache before they were kept as uint16),
  alternating with the others, with and without ``/dev/shm``: the uint16 cache halves
  the MS bytes held and copied, for the same float32 batches;

against the rate one GPU consumes: :data:`GPU_PAIRS_PER_S`, an estimate (see there).
Merges key ``pipeline`` into ``benchmarks/results.json`` (``--output``: writes a file of
its own instead).

Run: ``python benchmarks/bench_pipeline.py [--per-class 270] [--workers 0,2,4]
[--compare-float32] [--output FILE]``.
"""

import argparse
import contextlib
import gc
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch
from _results import merge_results

from discomkd_geo.config import DataConfig, load_config
from discomkd_geo.data import cache, eurosat
from discomkd_geo.data.datamodule import MSSARDataModule
from discomkd_geo.data.normalization import BandStats
from discomkd_geo.data.synthetic import make_eurosat

#: MS/SAR pairs per second one DisCoM-KD ResNet-18 training step consumes on an A100 at
#: batch 128 with mixed precision: an estimate, not a measurement (no GPU has run it).
#: ResNet-18 trains at 2,764 images/s of 224x224 px on an RTX 3090 with AMP (timm's
#: results/benchmark-train-amp-nchw-pt112-cu113-rtx3090.csv, batch 512); an A100 trains
#: ResNet-50 3.0x as fast (NVIDIA DeepLearningExamples, ResNet-50 v1.5 for PyTorch: 2,470
#: images/s on one A100 80GB with AMP, against timm's 826 on the RTX 3090), so about
#: 8,300 images/s for ResNet-18. One pair runs four ResNet-18 encoders at 64x64 px (two per
#: modality), 0.65 GMAC forward in all (the MS stems read 13 bands) against 1.82 GMAC for
#: one 224 px image: 2.8x less work. Small images use a GPU less well (batch 128 x 2 x 2
#: cells in the last stage); assume two thirds of the efficiency: about 15,000 pairs/s.
#: (The previous figure, 6,000, started from 3,000 images/s for ResNet-18 on an A100,
#: which no published figure supports: an RTX 3090 is nearly that fast.) A faster GPU
#: (H100) runs ResNet-18's small kernels little faster: they are bound by their launches.
GPU_PAIRS_PER_S = 15000.0
PREVIOUS_GPU_PAIRS_PER_S = 6000.0
TARGET_FACTOR = 3.0

#: The loaders timed, by name: whether batches are gathered, whether MS is cached as float32.
PATHS = {"per-sample": (False, False), "gathered": (True, False),
         "gathered-float32": (True, True)}


def disk_bytes(root: Path) -> int:
    """Bytes of every file under ``root``."""
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def shm_used() -> int:
    """Bytes used in /dev/shm now (0 where there is none; other processes' count too)."""
    try:
        stat = os.statvfs(cache.SHM)
    except OSError:
        return 0
    return (stat.f_blocks - stat.f_bfree) * stat.f_frsize


def rss_mib(pids: list[int] | None = None) -> float:
    """RSS of this process, or the sum over ``pids`` (its workers), in MiB."""
    processes = [psutil.Process()] if pids is None else [psutil.Process(p) for p in pids]
    return sum(p.memory_info().rss for p in processes) / 2**20


def worker_pids(loader: Any) -> list[int]:
    """Process ids of a loader's persistent workers (none before its first epoch)."""
    return [w.pid for w in getattr(getattr(loader, "_iterator", None), "_workers", [])]


def live_caches(dm: MSSARDataModule) -> list[tuple[str, Any]]:
    """``(modality, images)`` of each decoded-image cache of the training and validation splits."""
    datasets = [*dm.train_datasets.values(), getattr(dm.val_dataset, "dataset", None)]
    return [(m, c.images) for ds in datasets for m, c in getattr(ds, "caches", {}).items()
            if c.images is not None]


def cache_mib(dm: MSSARDataModule) -> float:
    """MiB of the decoded-image caches a DataModule allocated (training and validation)."""
    return sum(images.nbytes for _, images in live_caches(dm)) / 2**20


def cache_bytes_per_pair(dm: MSSARDataModule) -> int:
    """Cache bytes of one MS/SAR pair: one image of each modality, in its cache's dtype."""
    return sum({m: images[0].nbytes for m, images in live_caches(dm)}.values())


@contextlib.contextmanager
def float32_caches() -> Iterator[None]:
    """Caches made meanwhile keep every image as float32, as they all did before uint16."""
    chosen = eurosat.cached_dtype
    eurosat.cached_dtype = lambda source: np.dtype(np.float32)
    try:
        yield
    finally:
        eurosat.cached_dtype = chosen


def cpu_seconds() -> float:
    """CPU time of this process (every thread) and of its live children, in seconds."""
    me = psutil.Process()
    total = sum(me.cpu_times()[:2])
    for child in me.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.NoSuchProcess:
            continue
    return total


def epoch(loader: Any) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds and pairs of one epoch of ``loader``.

    The consumer reads one value of every 4 KiB page of every image, as a copy to a GPU
    reads them all: a batch a worker sent is only mapped, its pages faulted in when read.
    """
    start, cpu, n = time.perf_counter(), cpu_seconds(), 0
    for batch in loader:
        for key in ("image_ms", "image_sar"):
            batch[key].view(-1)[::1024].sum()
        n += batch["label_ms"].shape[0]
    return time.perf_counter() - start, cpu_seconds() - cpu, n


def datamodule(root: Path, workers: int, batch_size: int, gather: bool,
               stats: dict[str, BandStats] | None = None) -> MSSARDataModule:
    """An unpaired DataModule whose caches hold every split; ``stats``: no statistics pass."""
    config = load_config(None, (f"data.root={root}", f"data.num_workers={workers}",
                                f"data.batch_size={batch_size}", "data.cache_mib=100000"))
    dm = MSSARDataModule(config.data, seed=0, stats=stats)
    dm.gather_batches = gather
    dm.setup("fit")
    return dm


def cache_locations(dm: MSSARDataModule) -> list[str]:
    return sorted({c.location for ds in dm.train_datasets.values()
                   for c in getattr(ds, "caches", {}).values()})


def time_paths(root: Path, workers: int, batch_size: int, stats: dict[str, BandStats],
               paths: tuple[str, ...], rounds: int) -> list[dict[str, Any]]:
    """Fill epoch, then ``rounds`` cached epochs alternating between the loaders of ``paths``.

    ``paths``: names of :data:`PATHS`, one DataModule (and cache) each.
    """
    shm_before = shm_used()
    dms = {}
    for path in paths:
        gather, wide = PATHS[path]
        with float32_caches() if wide else contextlib.nullcontext():
            dms[path] = datamodule(root, workers, batch_size, gather, stats)
    loaders = {path: dm.train_dataloader() for path, dm in dms.items()}
    fills = {path: epoch(loader) for path, loader in loaders.items()}
    cached: dict[str, list[tuple[float, float, int]]] = {path: [] for path in paths}
    for _ in range(rounds):
        for path, loader in loaders.items():
            cached[path].append(epoch(loader))
    rss = rss_mib()  # while the persistent workers live: every loader's caches mapped
    shm = (shm_used() - shm_before) / 2**20
    rows = []
    for path in paths:
        rates = sorted(n / w for w, _, n in cached[path])
        cpu_rates = sorted(n / c for _, c, n in cached[path] if c > 0)
        fill_s, _, fill_pairs = fills[path]
        rows.append({
            "workers": workers, "workers_run": len(worker_pids(loaders[path])),
            "path": path,
            "fill_epoch_s": round(fill_s, 1),
            "pairs_per_s_filling": round(fill_pairs / fill_s),
            "pairs_per_s_cached": round(statistics.median(rates)),
            "pairs_per_s_cached_range": [round(rates[0]), round(rates[-1])],
            "pairs_per_cpu_s_cached": round(statistics.median(cpu_rates)) if cpu_rates else None,
            "x_gpu_estimate": round(statistics.median(rates) / GPU_PAIRS_PER_S, 2),
            "rss_mib": round(rss),
            "workers_rss_mib": round(rss_mib(worker_pids(loaders[path]))),
            "cache_mib": round(cache_mib(dms[path])),
            "cache_bytes_per_pair": cache_bytes_per_pair(dms[path]),
            "shm_used_mib": round(shm), "cache_location": cache_locations(dms[path])})
    del loaders, dms
    gc.collect()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=270,
                        help="pairs per class (published size: 2700)")
    parser.add_argument("--workers", default="0,2,4", help="worker counts to time")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=9,
                        help="cached epochs per loader (the median is reported)")
    parser.add_argument("--compare-float32", action="store_true",
                        help="also time the gathered loader with MS cached as float32")
    parser.add_argument("--output", type=Path,
                        help="write the results to this JSON file instead of merging them "
                             "into benchmarks/results.json")
    args = parser.parse_args()
    wide = ("gathered-float32",) if args.compare_float32 else ()
    torch.manual_seed(0)
    workers = [int(w) for w in args.workers.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "eurosat"
        start = time.perf_counter()
        make_eurosat(root, args.per_class, seed=0)
        synth_s = time.perf_counter() - start
        size = disk_bytes(root)
        print(f"synth eurosat --per-class {args.per_class}: {10 * args.per_class} pairs in "
              f"{synth_s:.0f} s, {size / 2**20:.0f} MiB on disk", flush=True)
        start = time.perf_counter()
        first = datamodule(root, max(workers), args.batch_size, True)
        stats_s = time.perf_counter() - start
        stats, train_pairs = first.stats, first.epoch_size()
        del first
        gc.collect()
        print(f"setup with the statistics pass ({max(workers)} workers): {stats_s:.1f} s",
              flush=True)
        rows = []
        for w in workers:
            timed = time_paths(root, w, args.batch_size, stats,
                               ("per-sample", "gathered", *wide), args.rounds)
            rows += timed
            for r in timed:
                print(r, flush=True)
        free = cache.shm_free_bytes
        cache.shm_free_bytes = lambda: 0  # /dev/shm full: the disk-backed map
        try:
            disk = [r for w in workers for r in time_paths(
                root, w, args.batch_size, stats, ("gathered", *wide), args.rounds)]
        finally:
            cache.shm_free_bytes = free
        for r in disk:
            print(r, flush=True)
    float32_rows = [r for r in rows + disk if r["path"] == "gathered-float32"]
    rows = [r for r in rows if r["path"] != "gathered-float32"]
    disk = [r for r in disk if r["path"] != "gathered-float32"]
    for old, new in zip(rows[0::2], rows[1::2], strict=True):
        new["x_per_sample_cached"] = round(new["pairs_per_s_cached"]
                                           / old["pairs_per_s_cached"], 1)
        new["x_per_sample_per_cpu_s"] = round(new["pairs_per_cpu_s_cached"]
                                              / old["pairs_per_cpu_s_cached"], 1)
    # Each float32 row (shared memory per worker count, then disk-backed) against its twin.
    twins = [r for r in rows if r["path"] == "gathered"] + disk if wide else []
    for old, new in zip(float32_rows, twins, strict=True):
        new["x_float32_cache_cached"] = round(new["pairs_per_s_cached"]
                                              / old["pairs_per_s_cached"], 2)
        new["x_float32_cache_per_cpu_s"] = round(new["pairs_per_cpu_s_cached"]
                                                 / old["pairs_per_cpu_s_cached"], 2)
        new["x_float32_cache_bytes"] = round(new["cache_bytes_per_pair"]
                                             / old["cache_bytes_per_pair"], 3)
    best = max(r["pairs_per_s_cached"] for r in rows if r["path"] == "gathered")
    fill = min(r["fill_epoch_s"] for r in rows if r["path"] == "gathered")
    full = 27_000 / (10 * args.per_class)
    train_gib = 18_900 * (13 + 2) * 64 * 64 * 4 / 2**30
    ms_train_gib = 18_900 * 13 * 64 * 64 * 4 / 2**30  # the unpaired MS training set
    # As cached: MS digital numbers as uint16 (2 bytes), SAR dB as float32 (4 bytes).
    pair_bytes = (13 * 2 + 2 * 4) * 64 * 64
    ms_train_uint16_gib = ms_train_gib / 2
    default_cache_mib = DataConfig().cache_mib  # the most one dataset's cache may take
    print(f"gathered / per-sample, cached epochs: "
          f"{[r['x_per_sample_cached'] for r in rows[1::2]]}; best gathered {best} pairs/s = "
          f"{best / GPU_PAIRS_PER_S:.1f}x the GPU estimate ({GPU_PAIRS_PER_S:.0f} pairs/s)")
    results = {
        "what": "MSSARDataModule unpaired training loader alone (no model), per-sample "
                "(plain DataLoader) and gathered (BatchLoader, the default) on the same "
                "draws, every page of every image read by the consumer: "
                "MS/SAR pairs/s of the cache-filling first epoch and the median of "
                "cached epochs alternating between the two; one pair = a 13-band MS and a "
                "2-band SAR 64x64 sample. rss_mib: the loading process, holding both "
                "loaders' caches; workers_rss_mib: that path's workers (shared cache pages "
                "count in each); cache_mib: that path's caches (training and validation "
                "splits), MS digital numbers cached as uint16, SAR as float32, "
                "cache_bytes_per_pair: one MS and one SAR image as cached; "
                "shm_used_mib: /dev/shm taken by every path; float32_cache: with "
                "--compare-float32, the gathered loader with MS cached as float32 (as "
                "before), timed alternating with the others; x_float32_cache_*: the "
                "gathered row against it",
        "command": f"python benchmarks/bench_pipeline.py --per-class {args.per_class} "
                   f"--workers {args.workers} --batch-size {args.batch_size} "
                   f"--rounds {args.rounds}" + (" --compare-float32" if wide else ""),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores "
                   "(shared with other jobs while measured: wall-clock rates are noisy, "
                   "the per-CPU-second rates less so, but counted in 10 ms ticks)",
        "pairs": 10 * args.per_class,
        "train_pairs_per_epoch": train_pairs,
        "synth_s": round(synth_s, 1),
        "disk_mib": round(size / 2**20),
        "setup_with_statistics_pass_s": round(stats_s, 1),
        "gpu_pairs_per_s_estimate": GPU_PAIRS_PER_S,
        "previous_gpu_pairs_per_s_estimate": PREVIOUS_GPU_PAIRS_PER_S,
        "target_pairs_per_s": GPU_PAIRS_PER_S * TARGET_FACTOR,
        "best_gathered_pairs_per_s": best,
        "target_met": best >= GPU_PAIRS_PER_S * TARGET_FACTOR,
        "full_size_estimate": {
            "pairs": 27_000, "synth_s": round(synth_s * full),
            "disk_gib": round(size * full / 2**30, 2),
            "cache_fill_epoch_s": round(fill * full),
            "train_cache_gib_float32": round(train_gib, 2),
            "ms_train_cache_gib_float32": round(ms_train_gib, 2),
            "train_cache_gib": round(18_900 * pair_bytes / 2**30, 2),
            "ms_train_cache_gib": round(ms_train_uint16_gib, 2),
            "default_cache_mib": default_cache_mib,
            "ms_train_cached_by_default": ms_train_uint16_gib * 1024 <= default_cache_mib,
            "cache_gib_float32_all_splits": round(27_000 * 15 * 64 * 64 * 4 / 2**30, 2),
            "cache_gib_all_splits": round(27_000 * pair_bytes / 2**30, 2)},
        "shared_memory": rows,
        "disk_backed": disk,
        "float32_cache": float32_rows,
    }
    if args.output is None:
        merge_results("pipeline", results)
    else:
        args.output.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
