"""Training cost of DisCoM-KD against the mono-modal baseline, at the paper's settings.

DisCoM-KD runs two ResNet-18 encoders per modality (invariant and specific) where the
mono-modal baseline runs one, plus the shared heads and five loss terms. This measures
what that costs per optimiser step: batch 128 per modality (the paper's), ResNet-18
encoders on 64x64 inputs with 13 MS bands and 2 SAR bands, Adam, on this machine's CPU
(CUDA when present). Inputs are random tensors already in memory, so the figures are the
model's training cost, not data loading (see the data benchmark for that).

Each method runs in its own subprocess so that its peak resident memory
(``resource.getrusage``, ``ru_maxrss``) is its own. Reported: median step time over the
timed steps (after warm-up), samples/s (pairs of one MS and one SAR image per second),
peak RSS. Results merge into ``benchmarks/results.json`` under the key ``training``.

``--parts`` instead splits one real training epoch of DisCoM-KD on synthetic
EuroSat-MS-SAR (``--pairs`` pairs, the 70% training split, ResNet-18, lr 1e-4) into its
parts: reading the batches (DataLoader, GeoTIFFs), normalising and augmenting them
(Kornia), the forward pass with the five losses, the adversarial diagnostics, the
backward pass and the Adam step, each timed on its own (on the CPU as ``train`` trains:
channels-last batches, freed memory kept for the next step); then the validation pass and
the end-of-epoch checkpoints (``last`` and one ``best-<m>`` per modality, saved as
``discomkd-geo train`` saves them: the time the training loop waits, and apart from it
the background write, ``checkpoint_write_s``); then the same epoch through Lightning's
``Trainer.fit`` (validation off): what ``fit`` takes beyond the sum of the training
parts is Lightning's overhead. Beside the parts: ``setup_s`` (datasets and statistics)
and ``data_next_epoch_s``, reading the next epoch's batches (from memory once
``data.cache_mib`` holds the split). ``ms_per_trained_pair`` is ``fit`` over the pairs
it trained (all of the split but a last batch of one). Merged under
``training_parts.<label>`` (``--label``, e.g. ``before`` and ``after`` a change, each run
on its own version of the code).

The public DisCoM-KD script (tanodino/CMKD_Disentangle, ``main_DisCoM-KD.py``) is not
part of this repository; to time it on the same data, export the synthetic dataset's
normalised train/val/test arrays (our split and statistics) to its ``.npy`` layout
(``<MOD>_data_normalized.npy``, ``labels.npy``, ``train_idx.npy``...) and run its loop
with per-epoch wall and CPU stamps, interleaved with ``discomkd-geo train`` runs on the
same machine. ``benchmarks/results.json`` key ``training_vs_public`` holds such runs
(ms per trained pair, wall and process CPU, load averages, and how they were taken).

    python benchmarks/bench_training.py [--steps 4] [--batch-size 128]
    python benchmarks/bench_training.py --parts [--pairs 1050] [--batch-size 128] [--label after]
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

from _results import load_results, merge_results

BANDS = {"ms": 13, "sar": 2}
NUM_CLASSES = 10
PATCH = 64


def _child(method: str, steps: int, warmup: int, batch_size: int) -> dict:
    import torch
    import torch.nn.functional as F

    from discomkd_geo.models.baselines import MonoModal
    from discomkd_geo.models.discomkd import DisCoMKD
    from discomkd_geo.models.losses import DisCoMKDLoss

    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if method == "discomkd":
        model = DisCoMKD(BANDS, NUM_CLASSES, backbone="resnet18")
        criterion = DisCoMKDLoss()

        def loss_fn(images: dict, labels: dict) -> torch.Tensor:
            return criterion(model(images), labels)["loss"]
    else:
        model = MonoModal(BANDS, NUM_CLASSES, backbone="resnet18")

        def loss_fn(images: dict, labels: dict) -> torch.Tensor:
            logits = model(images)
            return sum(F.cross_entropy(logits[m], labels[m]) for m in logits)
    model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    images = {m: torch.rand(batch_size, c, PATCH, PATCH, device=device)
              for m, c in BANDS.items()}
    labels = {m: torch.randint(0, NUM_CLASSES, (batch_size,), device=device) for m in BANDS}
    times = []
    for step in range(warmup + steps):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss_fn(images, labels).backward()
        optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()
        if step >= warmup:
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {
        "device": device,
        "threads": torch.get_num_threads(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "encoders": sum(len(b.encoders()) for b in model.branches.values()),
        "step_s": [round(t, 4) for t in times],
        "step_s_median": round(median, 4),
        "samples_per_s": round(batch_size / median, 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_before_model_mib": round(rss_before, 1),
    }


def _timed(timings: dict, name: str, fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    timings.setdefault(name, []).append(time.perf_counter() - start)
    return out


#: Parts of an epoch after the training steps (not in the ``Trainer.fit`` figure).
EPOCH_END = ("validation", "checkpoints")


def _epoch_end(task, dm, optimizer, config) -> dict[str, float]:
    """Seconds of the validation pass and of writing the end-of-epoch checkpoints.

    The checkpoints are written by a Trainer attached to the task with the callbacks
    ``train`` uses, each callback saving as it does when its score improved (the
    first epochs: every ``best-<m>`` and ``last``).
    """
    import tempfile
    from pathlib import Path

    import lightning as L
    import torch

    from discomkd_geo.training.train import _callbacks

    start = time.perf_counter()
    task.eval()
    with torch.no_grad():
        for batch in dm.val_dataloader():
            task.validation_step(dm.preprocess(batch, False), 0)
    validation = time.perf_counter() - start
    task.train()
    run_dir = Path(tempfile.mkdtemp())
    callbacks = _callbacks(config, task, run_dir)
    try:  # the trainer's checkpoint writer; the code before it wrote in the loop
        from discomkd_geo.training.checkpoint_io import BackgroundCheckpointIO
        plugins = [BackgroundCheckpointIO()]
    except ImportError:
        plugins = []
    trainer = L.Trainer(accelerator="cpu", logger=False, callbacks=callbacks, plugins=plugins,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.strategy.connect(task)
    trainer.strategy._optimizers = [optimizer]
    task.trainer = trainer
    start = time.perf_counter()
    for callback in callbacks:
        callback._save_checkpoint(trainer, str(run_dir / f"{callback.filename}.ckpt"))
    saved = time.perf_counter() - start
    trainer.strategy.checkpoint_io.teardown()  # waits for a background write
    written = time.perf_counter() - start
    sizes = sum(f.stat().st_size for f in run_dir.iterdir()) / 2**20
    print(f"checkpoints: {sizes:.0f} MiB, training waited {saved:.1f} s, written in "
          f"{written:.1f} s", flush=True)
    return {"validation": round(validation, 2), "checkpoints": round(saved, 2),
            "checkpoint_write_s": round(written, 2)}


def _parts(dataset_pairs: int, batch_size: int) -> dict:
    """One epoch of DisCoM-KD training, timed part by part, then through Lightning."""
    import tempfile
    from functools import partial
    from pathlib import Path

    import lightning as L
    import torch

    from discomkd_geo.config import load_config
    from discomkd_geo.data.datamodule import MSSARDataModule
    from discomkd_geo.data.synthetic import make_eurosat
    from discomkd_geo.training.module import DisCoMKDTask
    from discomkd_geo.training.train import data_info

    try:  # what train() and training_step do on the CPU; the code before them did not
        from discomkd_geo.memory import retain_freed_memory
        from discomkd_geo.models.layout import channels_last as layout
        retain_freed_memory()
    except ImportError:
        def layout(images: torch.Tensor) -> torch.Tensor:
            return images
    root = Path(tempfile.mkdtemp()) / "eurosat"
    make_eurosat(root, per_class=dataset_pairs // NUM_CLASSES, seed=0)
    config = load_config(None, (
        f"data.root={root}", "model.backbone=resnet18", f"data.batch_size={batch_size}",
        "optim.lr=0.0001", "data.num_workers=0", "trainer.accelerator=cpu",
        "trainer.max_epochs=1", "data.split=random"))
    L.seed_everything(0, verbose=False)
    dm = MSSARDataModule(config.data, seed=0)
    timings: dict[str, list[float]] = {}
    _timed(timings, "setup", dm.setup)
    task = DisCoMKDTask(config.to_dict(), data_info(dm))
    task.setup("fit")
    optimizer = task.configure_optimizers()
    task.train()
    loader, pairs = iter(dm.train_dataloader()), 0
    while (batch := _timed(timings, "data", next, loader, None)) is not None:
        pairs += len(batch["label_ms"])
        batch = _timed(timings, "normalise+augment", dm.preprocess, batch, True)
        images, labels = task.split_batch(batch, list(task.modalities))
        images = {m: layout(x) for m, x in images.items()}
        optimizer.zero_grad(set_to_none=True)
        output = _timed(timings, "forward", partial(task.model, grl_lambda=1.0), images)
        losses = _timed(timings, "losses", task.criterion, output, labels)
        _timed(timings, "diagnostics", task.adversarial_diagnostics, output, losses)
        _timed(timings, "backward", losses["loss"].backward)
        _timed(timings, "adam", optimizer.step)
    timings["data"].pop()  # the end of the epoch
    setup = timings.pop("setup")[0]
    parts = {k: round(sum(v), 2) for k, v in timings.items()}
    start = time.perf_counter()
    for _ in dm.train_dataloader():
        pass
    next_epoch = time.perf_counter() - start
    parts.update(_epoch_end(task, dm, optimizer, config))
    write = parts.pop("checkpoint_write_s")
    L.seed_everything(0, verbose=False)
    task = DisCoMKDTask(config.to_dict(), data_info(dm))
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, limit_val_batches=0,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0)
    start = time.perf_counter()
    trainer.fit(task, datamodule=dm)
    fit = time.perf_counter() - start
    return {
        "load_average_1min": round(os.getloadavg()[0], 2),  # other work on the machine
        "what": "one DisCoM-KD training epoch on synthetic EuroSat-MS-SAR, CPU, seconds",
        "pairs": dataset_pairs, "trained_pairs": pairs, "batch_size": batch_size,
        "steps": len(timings["adam"]), "threads": torch.get_num_threads(), "parts_s": parts,
        "parts_sum_s": round(sum(parts.values()), 2), "lightning_fit_s": round(fit, 2),
        "lightning_overhead_s": round(fit - sum(v for k, v in parts.items()
                                                if k not in EPOCH_END), 2),
        "setup_s": round(setup, 2), "data_next_epoch_s": round(next_epoch, 2),
        "checkpoint_write_s": write,
        "ms_per_trained_pair": round(1000 * fit / pairs, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="timed steps per method")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--batch-size", type=int, default=128, help="samples per modality")
    parser.add_argument("--child", choices=["discomkd", "mono"], help=argparse.SUPPRESS)
    parser.add_argument("--parts", action="store_true",
                        help="split a real training epoch into its parts (see above)")
    parser.add_argument("--pairs", type=int, default=1050, help="--parts: dataset pairs")
    parser.add_argument("--label", default="after",
                        help="--parts: key of this run under training_parts (e.g. before)")
    parser.add_argument("--key", default="training",
                        help="key in results.json (gpu_check.sh: gpu_training, keeping the "
                             "CPU figures)")
    args = parser.parse_args()
    if args.parts:
        result = _parts(args.pairs, args.batch_size)
        print(json.dumps(result, indent=2))
        merge_results("training_parts", {**load_results().get("training_parts", {}),
                                         args.label: result})
        return 0
    if args.child:
        print(json.dumps(_child(args.child, args.steps, args.warmup, args.batch_size)))
        return 0

    methods = {}
    for method in ("mono", "discomkd"):
        out = subprocess.run(
            [sys.executable, __file__, "--child", method, "--steps", str(args.steps),
             "--warmup", str(args.warmup), "--batch-size", str(args.batch_size)],
            check=True, capture_output=True, text=True)
        methods[method] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{method}: done", flush=True)
    mono, dis = methods["mono"], methods["discomkd"]
    result = {
        "what": "one training step (forward, backward, Adam) on in-memory random tensors",
        "backbone": "resnet18",
        "batch_size_per_modality": args.batch_size,
        "inputs": {m: [c, PATCH, PATCH] for m, c in BANDS.items()},
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
        "methods": methods,
        "discomkd_over_mono_step_time": round(dis["step_s_median"] / mono["step_s_median"], 2),
        "discomkd_over_mono_peak_rss": round(dis["peak_rss_mib"] / mono["peak_rss_mib"], 2),
    }
    print(f"\nTraining step, ResNet-18, batch {args.batch_size} per modality, 64x64, "
          f"MS 13 + SAR 2 bands, {mono['device']} ({mono['threads']} threads)")
    print(f"{'method':<10} {'encoders':>8} {'params':>12} {'step s':>8} {'pairs/s':>8} "
          f"{'peak RSS MiB':>13}")
    for name, r in methods.items():
        print(f"{name:<10} {r['encoders']:>8} {r['parameters']:>12,} {r['step_s_median']:>8.2f}"
              f" {r['samples_per_s']:>8.1f} {r['peak_rss_mib']:>13.0f}")
    print(f"DisCoM-KD / mono: step time x{result['discomkd_over_mono_step_time']}, "
          f"peak RSS x{result['discomkd_over_mono_peak_rss']}")

    merge_results(args.key, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
