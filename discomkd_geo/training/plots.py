"""PNG figures of a finished run: loss terms, per-modality F1 curves, confusion matrices.

Read from the run directory's ``logs/metrics.csv`` and ``metrics.json`` (written by
:func:`discomkd_geo.training.train.train`), so they can be redrawn for any past run.
"""

import csv
import json
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def read_epoch_log(csv_path: Path) -> dict[str, list[tuple[int, float]]]:
    """Per column, the (epoch, value) pairs of a Lightning ``metrics.csv``."""
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    with open(csv_path, newline="") as f:
        for row in csv.DictReader(f):
            epoch = row.get("epoch", "")
            if not epoch:
                continue
            for key, value in row.items():
                if key not in ("epoch", "step") and value not in ("", None):
                    series[key].append((int(float(epoch)), float(value)))
    return series


def _plot_series(ax: plt.Axes, series: dict[str, list[tuple[int, float]]], keys: list[str],
                 strip: str) -> None:
    for key in keys:
        epochs, values = zip(*series[key], strict=True)
        ax.plot(epochs, values, marker=".", label=key.replace(strip, ""))
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")


def plot_confusion(matrix: list[list[int]], classes: list[str], title: str,
                   path: Path) -> None:
    """Row-normalised confusion matrix (rows: truth) with counts in the cells."""
    counts = np.asarray(matrix)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ticks = range(len(classes))
    ax.set_xticks(ticks, classes, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(ticks, classes, fontsize=8)
    for i, j in np.ndindex(counts.shape):
        ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=7,
                color="white" if rates[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("truth")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_run(run_dir: str | Path) -> list[Path]:
    """Draw ``plots/losses.png``, ``plots/f1.png`` and ``plots/confusion_<m>.png``.

    Returns:
        the files written.
    """
    run_dir = Path(run_dir)
    out = run_dir / "plots"
    out.mkdir(exist_ok=True)
    written = []
    series = read_epoch_log(run_dir / "logs" / "metrics.csv")
    loss_keys = sorted(k for k in series if k.startswith("train/") and k != "train/grl_lambda")
    f1_keys = sorted(k for k in series if k.startswith("val/") and k.endswith("/f1_weighted"))
    for name, keys, strip, ylabel in (("losses", loss_keys, "train/", "loss (epoch mean)"),
                                      ("f1", f1_keys, "val/", "validation weighted F1")):
        if not keys:
            continue
        fig, ax = plt.subplots(figsize=(7, 4))
        _plot_series(ax, series, keys, strip)
        ax.set_ylabel(ylabel)
        fig.tight_layout()
        fig.savefig(out / f"{name}.png", dpi=120)
        plt.close(fig)
        written.append(out / f"{name}.png")
    summary = json.loads((run_dir / "metrics.json").read_text())
    for m, matrix in summary["confusion"].items():
        f1 = summary["test"][m].get("f1_weighted", float("nan"))
        path = out / f"confusion_{m}.png"
        plot_confusion(matrix, summary["classes"],
                       f"{summary['method']} - {m} (test weighted F1 {f1:.3f})", path)
        written.append(path)
    return written
