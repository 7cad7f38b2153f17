"""Fidelity study: our DisCoM-KD against the authors' public script, epoch by epoch (issue #28).

Runs the authors' ``main_DisCoM-KD.py`` (``tanodino/CMKD_Disentangle``; get a checkout with
``git clone https://github.com/tanodino/CMKD_Disentangle``) and our ``discomkd-geo`` training
on the same synthetic EuroSat-MS-SAR set, the same split and the same normalisation, and
records per seed and per epoch: validation weighted F1 of each modality, the epoch mean of
each loss term (L_cl, L_adv, L_mod, L_aux, L_perp) and seconds per epoch.

Their script is run from a scratch copy in /tmp, patched at run time by small textual
substitutions (each asserted to match exactly once): epochs, batch size and seed from the
environment, and one JSON line per epoch with the curves. None of their code is kept here.

    python benchmarks/fidelity/run.py --theirs /path/to/CMKD_Disentangle \\
        --per-class 60 --epochs 8 --batch-size 64 --seeds 0 1 2
    python benchmarks/fidelity/run.py --report      # report.md + curves.png from results.json

Their script needs scikit-learn (``pip install scikit-learn``); the project does not.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
CONFIG = ROOT / "configs" / "eurosat_ms_sar.yaml"
RESULTS = HERE / "results.json"
SCRATCH = Path(os.environ.get("FIDELITY_SCRATCH", "/tmp/discomkd_fidelity"))
TERMS = ("cl", "adv", "mod", "aux", "perp")
#: Implementations: their script, ours with the paper config (constant lambda = 1), ours
#: with the DANN ramp of the GRL coefficient, ours without the adversarial gradient.
IMPLEMENTATIONS = {
    "theirs": {},
    "ours-constant": {"loss.grl_schedule": "constant"},
    "ours-dann": {"loss.grl_schedule": "dann"},
    # ablations of the take-off: no adversarial gradient at all (L_adv still logged)
    "ours-noadv": {"loss.adv": 0.0},
    # what their SAR branch effectively trains on: no adversarial and no modality gradient
    # (their targets give SAR rows a loss of 0), signed orthogonality, their augmentations
    "ours-theirslike": {"loss.adv": 0.0, "loss.mod": 0.0, "loss.orthogonality": "signed",
                        "data.augment.intensity": "false"},
    # ours, but every encoder's first convolution with PyTorch's default init, as theirs
    # (they replace torchvision's conv1 after its kaiming_normal(fan_out) init)
    "ours-conv1init": {"_conv1_default_init": True},
}

# -- their script: the substitutions -------------------------------------------------------
_IMPORT = ("from functions import TRAIN_BATCH_SIZE, LEARNING_RATE, EPOCHS, transform, "
           "MyDataset, hashPREFIX2SOURCE\n")
PATCHES: list[tuple[str, str]] = [
    # epochs, batch size and seed from the environment
    (_IMPORT, _IMPORT + (
        "import os as _fo, random as _fr, json as _fj\n"
        "EPOCHS = int(_fo.environ['FID_EPOCHS'])\n"
        "TRAIN_BATCH_SIZE = int(_fo.environ['FID_BATCH'])\n"
        "_FSEED = int(_fo.environ['FID_SEED'])\n"
        "_fr.seed(_FSEED); np.random.seed(_FSEED); torch.manual_seed(_FSEED)\n")),
    # per-epoch accumulators
    ("        lambda_ = 1.0\n",
     "        lambda_ = 1.0\n"
     "        _acc = {k: 0.0 for k in ('cl', 'adv', 'mod', 'aux', 'perp', 'disc_p_ms',"
     " 'disc_p_sar')}\n"),
    # the epoch means of each term as the script computes it, and what the discriminator
    # outputs: mean probability of class 1 (their 'ones' target) on MS rows and SAR rows
    ("            tot_loss+= loss.cpu().detach().numpy()\n",
     "            tot_loss+= loss.cpu().detach().numpy()\n"
     "            _acc['cl'] += float(loss_pred); _acc['adv'] += float(loss_adv_dann)\n"
     "            _acc['mod'] += float(loss_pred_dom)\n"
     "            _acc['aux'] += float(loss_pred_shared + loss_pred_domain_discr)\n"
     "            _acc['perp'] += float(loss_ortho)\n"
     "            _acc['disc_p_ms'] += float(discr_f.softmax(1)[:, 1].mean())\n"
     "            _acc['disc_p_sar'] += float(discr_s.softmax(1)[:, 1].mean())\n"),
    # one JSON line per epoch
    ("        final_string = \"TRAIN LOSS at Epoch %d: %.4f\"%(epoch, tot_loss/den)\n",
     "        final_string = \"TRAIN LOSS at Epoch %d: %.4f\"%(epoch, tot_loss/den)\n"
     "        print('FIDELITY ' + _fj.dumps({'epoch': epoch, 'val_f1_ms': f1_val_f,"
     " 'val_f1_sar': f1_val_s, 'test_f1_ms': f1_test_f, 'test_f1_sar': f1_test_s,"
     " 'train_s': end - start, 'epoch_s': time.time() - start,"
     " **{k: v / den for k, v in _acc.items()}}))\n"),
]


def patch_theirs(source: str) -> str:
    """Their ``main_DisCoM-KD.py`` with :data:`PATCHES` applied (each must match once)."""
    for old, new in PATCHES:
        count = source.count(old)
        if count != 1:
            raise SystemExit(f"their script changed: {old.strip()[:60]!r} found {count} times")
        source = source.replace(old, new)
    return source


def check_their_targets() -> dict[str, float]:
    """What ``nn.CrossEntropyLoss`` makes of their ``ones_like``/``zeros_like`` targets.

    Float targets of the logits' shape are class probabilities: for a row of target
    [0, 0] the loss is 0; for [1, 1] it is -(log p0 + log p1) >= 2 ln 2, with equality at
    the uniform output. Checked on random logits and on uniform ones.
    """
    import torch
    from torch import nn

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(256, 2, generator=g) * 3
    ce = nn.CrossEntropyLoss()
    logp = logits.log_softmax(1)
    zeros = float(ce(logits, torch.zeros_like(logits)))
    ones = float(ce(logits, torch.ones_like(logits)))
    assert zeros == 0.0
    assert math.isclose(ones, float(-(logp.sum(1)).mean()), rel_tol=1e-6)
    both = float(ce(torch.cat([logits, logits]),
                    torch.cat([torch.ones_like(logits), torch.zeros_like(logits)])))
    uniform = torch.zeros(256, 2)
    both_uniform = float(ce(torch.cat([uniform, uniform]),
                            torch.cat([torch.ones_like(uniform), torch.zeros_like(uniform)])))
    assert both >= math.log(2) and math.isclose(both_uniform, math.log(2), rel_tol=1e-6)
    return {"sar_rows_random_logits": zeros, "ms_rows_random_logits": ones,
            "their_adv_random_logits": both, "their_adv_uniform": both_uniform,
            "ln2": math.log(2)}


# -- data ----------------------------------------------------------------------------------
def make_data(per_class: int, data_seed: int) -> Path:
    """Synthetic EuroSat-MS-SAR (``discomkd-geo synth eurosat``), once per size and seed."""
    root = SCRATCH / f"synth_{per_class}_{data_seed}"
    if not (root / ".done").exists():
        subprocess.run([sys.executable, "-m", "discomkd_geo", "synth", "eurosat", str(root),
                        "--per-class", str(per_class), "--seed", str(data_seed),
                        "--overwrite"], check=True, cwd=ROOT)
        (root / ".done").write_text("")
    return root


def our_config(data_root: Path, overrides: dict[str, Any]) -> Any:
    """The paper config on ``data_root``, with ``overrides``."""
    from discomkd_geo.config import load_config

    return load_config(CONFIG, [f"data.root={data_root}", "data.num_workers=0",
                                *(f"{k}={v}" for k, v in overrides.items())])


def export_npy(data_root: Path) -> Path:
    """Our split and our normalisation, in their ``.npy`` format.

    ``{MS,SAR}_data_normalized.npy`` (S, C, H, W) float32, ``labels.npy`` (S,),
    ``{train,valid,test}_idx.npy``: rows of our train, val and test splits, in that
    order, normalised with the statistics of our training split (per-band 2-98
    percentile to [0, 1]), exactly what our data module feeds the model.
    """
    out = data_root.with_name(data_root.name + "_npy")
    if (out / ".done").exists():
        return out
    from discomkd_geo.data.datamodule import MSSARDataModule
    from discomkd_geo.data.eurosat import EuroSATMSSAR, EuroSATOptions
    from discomkd_geo.data.normalization import Normalize

    config = our_config(data_root, {})
    dm = MSSARDataModule(config.data, seed=0)
    dm.setup("fit")
    names = list(config.data.modalities)
    norm = {m: Normalize(dm.stats[m]) for m in names}
    arrays: dict[str, list[np.ndarray]] = {m: [] for m in names}
    labels, idx, start = [], {}, 0
    for split, theirs in (("train", "train"), ("val", "valid"), ("test", "test")):
        ds = EuroSATMSSAR(str(data_root), split=split, modalities=names,
                          options=EuroSATOptions(config.data.layout, config.data.split,
                                                 config.data.split_seed))
        for i in range(len(ds)):
            s = ds[i]
            for m in names:
                arrays[m].append(norm[m](s[f"image_{m}"]).numpy().astype(np.float32))
            labels.append(int(s["label"]))
        idx[theirs] = np.arange(start, start + len(ds))
        start += len(ds)
    out.mkdir(parents=True, exist_ok=True)
    for m in names:
        np.save(out / f"{m.upper()}_data_normalized.npy", np.stack(arrays[m]))
    np.save(out / "labels.npy", np.asarray(labels, dtype=np.int64))
    for k, v in idx.items():
        np.save(out / f"{k}_idx.npy", v)
    (out / ".done").write_text("")
    return out


# -- the runs ------------------------------------------------------------------------------
def run_theirs(theirs: Path, npy: Path, seed: int, epochs: int, batch: int) -> dict[str, Any]:
    """Their script, patched, on the exported arrays; the per-epoch JSON lines."""
    work = SCRATCH / f"theirs_seed{seed}"
    shutil.rmtree(work, ignore_errors=True)
    (work / "data").mkdir(parents=True)
    for name in ("model_pytorch.py", "functions.py"):
        shutil.copy(theirs / name, work / name)
    (work / "main_DisCoM-KD.py").write_text(
        patch_theirs((theirs / "main_DisCoM-KD.py").read_text()))
    for f in npy.glob("*.npy"):
        (work / "data" / f.name).symlink_to(f)
    env = {**os.environ, "FID_EPOCHS": str(epochs), "FID_BATCH": str(batch),
           "FID_SEED": str(seed)}
    start = time.perf_counter()
    log = work / "stdout.txt"
    with open(log, "w") as out:
        code = subprocess.run([sys.executable, "main_DisCoM-KD.py", "data", "MS", "SAR"],
                              cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
    text = log.read_text()
    if code:
        raise SystemExit(f"their script failed (see {log}):\n{text[-2000:]}")
    rows = [json.loads(line[len("FIDELITY "):]) for line in text.splitlines()
            if line.startswith("FIDELITY ")]
    shutil.rmtree(work / "data" / "OUR-DisCoM-KD_MS", ignore_errors=True)
    shutil.rmtree(work / "data" / "OUR-DisCoM-KD_SAR", ignore_errors=True)
    epochs_out = [{"epoch": r["epoch"], "val_f1_ms": r["val_f1_ms"],
                   "val_f1_sar": r["val_f1_sar"], "test_f1_ms": r["test_f1_ms"],
                   "test_f1_sar": r["test_f1_sar"], "train_s": r["train_s"],
                   "epoch_s": r["epoch_s"], "loss": {t: r[t] for t in TERMS},
                   "disc_p1_ms": r["disc_p_ms"], "disc_p1_sar": r["disc_p_sar"]}
                  for r in rows]
    return {"epochs": epochs_out, "seconds": time.perf_counter() - start}


def _timed_task(config: Any, info: dict[str, Any], conv1_default_init: bool = False) -> Any:
    """Our DisCoM-KD task, logging the seconds of each epoch's training (and whole epoch)."""
    from discomkd_geo.training.module import DisCoMKDTask

    class TimedDisCoMKDTask(DisCoMKDTask):
        def on_train_epoch_start(self) -> None:
            super().on_train_epoch_start()
            self._fid_t0, self._fid_train = time.perf_counter(), None

        def on_validation_epoch_start(self) -> None:
            super().on_validation_epoch_start()
            # trainer.training is False while validating; the stage of the call is "fit"
            if self.trainer.state.fn == "fit" and getattr(self, "_fid_train", 0) is None:
                self._fid_train = time.perf_counter() - self._fid_t0

        def on_train_epoch_end(self) -> None:
            super().on_train_epoch_end()
            now = time.perf_counter() - self._fid_t0
            self.log("fid/train_s", self._fid_train if self._fid_train is not None else now)
            self.log("fid/epoch_s", now)

    task = TimedDisCoMKDTask(config.to_dict(), info)
    if conv1_default_init:
        from torch import nn
        for name, module in task.model.named_modules():
            if name.endswith("conv1") and isinstance(module, nn.Conv2d) and \
                    module.kernel_size == (7, 7):
                module.reset_parameters()
    return task


def run_ours(name: str, data_root: Path, seed: int, epochs: int, batch: int,
             overrides: dict[str, Any], extra: list[str]) -> dict[str, Any]:
    """Our training (Python API, as ``discomkd-geo train``); per-epoch rows of metrics.csv."""
    import functools

    from discomkd_geo.training.train import train

    overrides = dict(overrides)
    conv1_init = bool(overrides.pop("_conv1_default_init", False))
    config = our_config(data_root, {"seed": seed, "trainer.max_epochs": epochs,
                                    "data.batch_size": batch, **overrides,
                                    **dict(o.split("=", 1) for o in extra)})
    run_dir = SCRATCH / f"{name}_seed{seed}"
    start = time.perf_counter()
    result = train(config, run_dir, overwrite=True, progress=False,
                   build_task=functools.partial(_timed_task, conv1_default_init=conv1_init))
    seconds = time.perf_counter() - start
    per_epoch: dict[int, dict[str, float]] = {}
    for path in run_dir.rglob("metrics.csv"):
        with open(path) as f:
            for row in csv.DictReader(f):
                if row.get("epoch", "") == "":
                    continue
                slot = per_epoch.setdefault(int(row["epoch"]), {})
                slot.update({k: float(v) for k, v in row.items() if v != "" and k != "epoch"})
    epochs_out = []
    for e in sorted(per_epoch):
        r = per_epoch[e]
        if "val/sar/f1_weighted" not in r:
            continue
        epochs_out.append({
            "epoch": e, "val_f1_ms": r["val/ms/f1_weighted"],
            "val_f1_sar": r["val/sar/f1_weighted"], "train_s": r.get("fid/train_s"),
            "epoch_s": r.get("fid/epoch_s"),
            "loss": {t: r.get(f"train/{t}_epoch", r.get(f"train/{t}")) for t in TERMS},
            "disc_acc": r.get("diag/disc_acc_epoch", r.get("diag/disc_acc")),
            "grl_lambda": r.get("train/grl_lambda_epoch", r.get("train/grl_lambda"))})
    summary = json.loads((run_dir / "metrics.json").read_text())
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    del result
    return {"epochs": epochs_out, "seconds": seconds, "test": summary.get("test", summary)}


def load_results() -> dict[str, Any]:
    return json.loads(RESULTS.read_text()) if RESULTS.exists() else {}


def save_results(results: dict[str, Any]) -> None:
    tmp = RESULTS.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1) + "\n")
    tmp.replace(RESULTS)


def save_run(impl: str, seed: int, run: dict[str, Any], scale: dict[str, Any]) -> dict[str, Any]:
    """Add one run to results.json, under a lock (several processes may run at once)."""
    import fcntl

    SCRATCH.mkdir(parents=True, exist_ok=True)
    with open(SCRATCH / "results.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        results = load_results()
        results.setdefault("scale", scale)
        results["their_targets_check"] = check_their_targets()
        slot = results.setdefault("implementations", {}).setdefault(
            impl, {"seeds": [], "runs": {}})
        slot["runs"][str(seed)] = run
        slot["seeds"] = sorted(int(s) for s in slot["runs"])
        save_results(results)
    return results


def run_all(args: argparse.Namespace) -> None:
    import torch

    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # their script inherits it
        torch.set_num_threads(args.threads)
    scale = {"per_class": args.per_class, "data_seed": args.data_seed, "epochs": args.epochs,
             "batch_size": args.batch_size, "backbone": "resnet18", "lr": 1e-4,
             "split": "ours: stratified 70/10/20, split_seed 0",
             "normalisation": "ours: per-band 2-98 percentile of the training split to [0, 1]",
             "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
             "load_at_start": os.getloadavg()[0]}
    results = load_results()
    if results.get("scale", {}).get("per_class") not in (None, args.per_class) or \
            results.get("scale", {}).get("epochs") not in (None, args.epochs) or args.fresh:
        RESULTS.unlink(missing_ok=True)  # another scale: start a new results file
        results = {}
    results.setdefault("implementations", {})
    data_root = make_data(args.per_class, args.data_seed)
    npy = export_npy(data_root)
    for seed in args.seeds:
        for impl in args.impl:
            if str(seed) in results["implementations"].get(impl, {}).get("runs", {}):
                continue
            print(f"[{time.strftime('%H:%M:%S')}] {impl} seed {seed} ...", flush=True)
            if impl == "theirs":
                if args.theirs is None:
                    raise SystemExit("--theirs DIR: a checkout of tanodino/CMKD_Disentangle")
                run = run_theirs(args.theirs, npy, seed, args.epochs, args.batch_size)
            else:
                run = run_ours(impl, data_root, seed, args.epochs, args.batch_size,
                               IMPLEMENTATIONS[impl], args.our_set)
            results = save_run(impl, seed, run, scale)
            sar = [round(e["val_f1_sar"], 3) for e in run["epochs"]]
            print(f"  done in {run['seconds']:.0f} s; val SAR F1 by epoch {sar}", flush=True)


# -- report --------------------------------------------------------------------------------
def _matrix(runs: dict[str, Any], key: str, term: str | None = None) -> np.ndarray:
    rows = []
    for run in runs.values():
        vals = [(e["loss"][term] if term else e[key]) for e in run["epochs"]]
        rows.append([np.nan if v is None else v for v in vals])
    n = max(len(r) for r in rows)
    return np.array([r + [np.nan] * (n - len(r)) for r in rows], dtype=float)


def _ordered(results: dict[str, Any]) -> dict[str, Any]:
    """The implementations of ``results`` in the order of :data:`IMPLEMENTATIONS`."""
    impls = results["implementations"]
    order = [k for k in IMPLEMENTATIONS if k in impls] + sorted(set(impls) - set(IMPLEMENTATIONS))
    return {k: impls[k] for k in order}


def _table(results: dict[str, Any], key: str, term: str | None = None, fmt: str = ".3f") -> str:
    impls = _ordered(results)
    n = max(_matrix(v["runs"], key, term).shape[1] for v in impls.values())
    lines = ["| epoch | " + " | ".join(f"{k} mean [min, max]" for k in impls) + " |",
             "|---|" + "---|" * len(impls)]
    for e in range(n):
        cells = []
        for v in impls.values():
            m = _matrix(v["runs"], key, term)
            col = m[:, e] if e < m.shape[1] else np.array([np.nan])
            col = col[~np.isnan(col)]
            cells.append("-" if not col.size else
                         f"{col.mean():{fmt}} [{col.min():{fmt}}, {col.max():{fmt}}]")
        lines.append(f"| {e + 1} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _best_test(run: dict[str, Any], modality: str) -> float:
    """A run's test weighted F1 of a modality at its best validation epoch.

    Ours: the per-head best checkpoint's (``test``); theirs: the test F1 their script
    printed at the epoch of the best validation F1 (the first such epoch), the same rule.
    """
    if "test" in run:
        return run["test"][modality]["f1_weighted"]
    epochs = run["epochs"]
    best = max(range(len(epochs)), key=lambda e: (epochs[e][f"val_f1_{modality}"], -e))
    return epochs[best][f"test_f1_{modality}"]


def _epoch_seconds(run: dict[str, Any]) -> float:
    """A run's median seconds of training per epoch (evaluation excluded)."""
    return float(np.median([e["train_s"] for e in run["epochs"]]))


def _paired(ours: dict[str, Any], theirs: dict[str, Any], value: Any) -> str:
    """Mean paired difference ours - theirs over their common seeds, with a 95% t interval."""
    from scipy import stats

    seeds = sorted(set(ours) & set(theirs), key=int)
    diffs = np.array([value(ours[s]) - value(theirs[s]) for s in seeds])
    if len(diffs) < 2:
        return "-"
    half = stats.t.ppf(0.975, len(diffs) - 1) * diffs.std(ddof=1) / math.sqrt(len(diffs))
    return f"{diffs.mean():+.3f} [{diffs.mean() - half:+.3f}, {diffs.mean() + half:+.3f}]"


def _target_section(results: dict[str, Any]) -> list[str]:
    """Issue #28's target, checked: our per-epoch SAR validation F1 within their seed
    spread, and at equal or lower time per epoch; the final test F1, paired by seed."""
    impls = results["implementations"]
    if "theirs" not in impls:
        return []
    theirs = impls["theirs"]["runs"]
    lines = ["## Target: per-epoch SAR validation F1 within their seed spread", "",
             "| implementation | epochs inside their [min, max] | "
             "test F1 SAR, mean (per seed) | test F1 MS, mean | paired difference in test "
             "F1 SAR, ours - theirs [95% t interval] | training s/epoch, median | "
             "paired ratio of s/epoch, ours / theirs |", "|---|---|---|---|---|---|---|"]
    spread = _matrix(theirs, "val_f1_sar")
    low, high = np.nanmin(spread, 0), np.nanmax(spread, 0)
    for name, v in _ordered(results).items():
        runs = v["runs"]
        mean = np.nanmean(_matrix(runs, "val_f1_sar"), 0)
        n = min(len(mean), len(low))
        inside = int(((mean[:n] >= low[:n]) & (mean[:n] <= high[:n])).sum())
        sar = [_best_test(r, "sar") for r in runs.values()]
        ms = [_best_test(r, "ms") for r in runs.values()]
        per_epoch = [_epoch_seconds(r) for r in runs.values()]
        compare = name != "theirs"
        ratio = "-"
        if compare:
            seeds = sorted(set(runs) & set(theirs), key=int)
            ratios = [_epoch_seconds(runs[s]) / _epoch_seconds(theirs[s]) for s in seeds]
            ratio = f"{np.median(ratios):.2f} ({', '.join(f'{x:.2f}' for x in ratios)})"
        lines.append(
            f"| {name} | {inside} of {n} | {np.mean(sar):.3f} "
            f"({', '.join(f'{x:.3f}' for x in sar)}) | {np.mean(ms):.3f} | "
            f"{_paired(runs, theirs, lambda r: _best_test(r, 'sar')) if compare else '-'} | "
            f"{np.median(per_epoch):.1f} | {ratio} |")
    return lines + [""]


def report() -> None:
    """``report.md`` and ``curves.png`` from ``results.json``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = load_results()
    impls = _ordered(results)
    colors = {"theirs": "tab:red", "ours-constant": "tab:blue", "ours-dann": "tab:green",
              "ours-noadv": "tab:purple", "ours-theirslike": "tab:orange",
              "ours-conv1init": "tab:brown"}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for name, v in impls.items():
        for j, (ax, key, term) in enumerate(zip(axes, ("val_f1_sar", "val_f1_ms", None),
                                                (None, None, "adv"), strict=True)):
            m = _matrix(v["runs"], key or "", term)
            x = np.arange(1, m.shape[1] + 1)
            for row in m:
                ax.plot(x, row, color=colors.get(name), lw=0.8, alpha=0.6)
            ax.plot(x, np.nanmean(m, 0), color=colors.get(name), lw=2.2,
                    label=f"{name} ({m.shape[0]} seeds)" if j == 0 else None)
    axes[2].axhline(math.log(2), color="k", ls=":", lw=1, label="ln 2")
    for ax, title in zip(axes, ("validation weighted F1, SAR", "validation weighted F1, MS",
                                "L_adv (epoch mean; theirs: their definition)"), strict=True):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    axes[2].legend(fontsize=8)
    s = results["scale"]
    fig.suptitle(f"synthetic EuroSat-MS-SAR, {s['per_class']}/class, ResNet-18, batch "
                 f"{s['batch_size']}, lr 1e-4, {s['epochs']} epochs; thin: seeds, thick: mean",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(HERE / "curves.png", dpi=110)

    parts = ["# Fidelity study: our DisCoM-KD vs the authors' script, epoch by epoch",
             "", "Generated by `python benchmarks/fidelity/run.py --report` from "
             "`results.json`; see README.md for the reading.", "",
             "Scale: " + ", ".join(f"{k} {v}" for k, v in s.items()), "",
             "Seeds: " + "; ".join(f"{k}: {v['seeds']}" for k, v in impls.items()), ""]
    for title, key, term, fmt in (
            ("Validation weighted F1, SAR", "val_f1_sar", None, ".3f"),
            ("Validation weighted F1, MS", "val_f1_ms", None, ".3f"),
            ("L_adv (epoch mean)", "", "adv", ".3f"),
            ("L_mod (epoch mean)", "", "mod", ".3f"),
            ("L_cl (epoch mean)", "", "cl", ".3f"),
            ("L_aux (epoch mean)", "", "aux", ".3f"),
            ("L_perp (epoch mean)", "", "perp", ".3f"),
            ("Seconds of training per epoch (evaluation excluded)", "train_s", None, ".1f")):
        parts += [f"## {title}", "", _table(results, key, term, fmt), ""]
    parts += _target_section(results)
    t = results.get("their_targets_check", {})
    if t:
        parts += ["## Their modality targets, checked numerically", "",
                  "`nn.CrossEntropyLoss` on random logits: rows with target `zeros_like` "
                  f"give {t['sar_rows_random_logits']}, rows with `ones_like` give "
                  f"{t['ms_rows_random_logits']:.3f} (= -(log p0 + log p1)); their L_adv "
                  f"over MS+SAR rows is {t['their_adv_random_logits']:.3f} on random logits "
                  f"and {t['their_adv_uniform']:.4f} = ln 2 on uniform ones.", ""]
    (HERE / "report.md").write_text("\n".join(parts))
    print(f"wrote {HERE / 'report.md'} and {HERE / 'curves.png'}")


def main() -> None:
    global RESULTS, HERE
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Get their code: git clone "
                                            "https://github.com/tanodino/CMKD_Disentangle "
                                            "(their script needs scikit-learn).")
    parser.add_argument("--theirs", type=Path, help="checkout of tanodino/CMKD_Disentangle")
    parser.add_argument("--per-class", type=int, default=60)
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--impl", nargs="+", default=list(IMPLEMENTATIONS),
                        choices=list(IMPLEMENTATIONS))
    parser.add_argument("--results", type=Path, default=None,
                        help="results file (default: benchmarks/fidelity/results.json); "
                             "report.md and curves.png go beside it")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads per run (0: torch's default)")
    parser.add_argument("--our-set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra override of our config (smoke tests)")
    parser.add_argument("--fresh", action="store_true", help="discard results.json first")
    parser.add_argument("--report", action="store_true",
                        help="only write report.md and curves.png from results.json")
    args = parser.parse_args()
    if args.results is not None:
        RESULTS, HERE = args.results.resolve(), args.results.resolve().parent
    HERE.mkdir(parents=True, exist_ok=True)
    if args.report:
        report()
        return
    run_all(args)
    report()


if __name__ == "__main__":
    main()
