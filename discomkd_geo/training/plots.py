"""PNG figures of a finished run: loss terms, per-modality F1 curves, confusion matrices.

Read from the run directory's ``logs/metrics.csv`` and ``metrics.json`` (written by
:func:`discomkd_geo.training.train.train`), so they can be redrawn for any past run.
Figures are made with matplotlib's object API (:class:`~matplotlib.figure.Figure`), not
pyplot: they are only written to files, so no display backend is chosen or needed, and
nothing is left open in pyplot's figure registry.
"""

import csv
import json
import os
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ..files import atomic_path

if TYPE_CHECKING:
    from .calibration import Reliability


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


def _plot_series(ax: Axes, series: dict[str, list[tuple[int, float]]], keys: list[str],
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
    fig = Figure(figsize=(7, 6))
    ax = fig.subplots()
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


def plot_reliability(before: "Reliability", after: "Reliability", title: str,
                     path: str | os.PathLike[str], temperature: float | None,
                     overwrite: bool = True) -> None:
    """Reliability diagrams (Guo et al., 2017, figure 1) of a branch before and after calibration.

    Each panel shows every confidence bin's accuracy as a bar against the diagonal of
    perfect calibration, the gap to the bin's mean confidence hatched in red, the share
    of the predictions per bin as a line, and the ECE.

    Args:
        before: the bins of the plain softmax.
        after: the bins with the temperature.
        title: what was binned (branch and split).
        path: the PNG to write (atomically).
        temperature: the branch's ``T`` (``None``: not calibrated).
        overwrite: replace an existing ``path``.
    """
    edges = np.linspace(0, 1, len(before.counts) + 1)
    width = edges[1] - edges[0]
    fig = Figure(figsize=(9, 4.4))
    axes = fig.subplots(1, 2, sharey=True)
    panels = (("softmax(z)", before), (f"softmax(z / {temperature:.3g})"
                                       if temperature is not None else "not calibrated", after))
    for ax, (name, bins) in zip(axes, panels, strict=True):
        used = bins.counts > 0
        left = edges[:-1][used]
        ax.bar(left, bins.accuracy[used], width, align="edge", color="tab:blue",
               edgecolor="black", linewidth=0.5, label="accuracy")
        # Hatched, not filled: an under-confident bin's gap lies over its accuracy bar.
        ax.bar(left, bins.confidence[used] - bins.accuracy[used], width,
               bottom=bins.accuracy[used], align="edge", fill=False, hatch="///",
               edgecolor="tab:red", linewidth=0.5, label="gap to mean confidence")
        ax.plot([0, 1], [0, 1], "--", color="gray", linewidth=1)
        ax.plot(edges[:-1] + width / 2, bins.counts / bins.counts.sum(), ".-", color="black",
                linewidth=0.8, markersize=3, label="share of predictions")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence")
        ax.set_title(f"{name}: ECE {bins.ece:.3f}", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy")
    axes[0].legend(loc="upper left", fontsize="small")
    fig.suptitle(f"{title} ({int(before.counts.sum())} images)", fontsize=11)
    fig.tight_layout()
    with atomic_path(path, overwrite=overwrite) as tmp:
        fig.savefig(tmp, dpi=120)


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
        fig = Figure(figsize=(7, 4))
        ax = fig.subplots()
        _plot_series(ax, series, keys, strip)
        ax.set_ylabel(ylabel)
        fig.tight_layout()
        fig.savefig(out / f"{name}.png", dpi=120)
        written.append(out / f"{name}.png")
    summary = json.loads((run_dir / "metrics.json").read_text())
    for m, matrix in summary["confusion"].items():
        f1 = summary["test"][m].get("f1_weighted", float("nan"))
        path = out / f"confusion_{m}.png"
        plot_confusion(matrix, summary["classes"],
                       f"{summary['method']} - {m} (test weighted F1 {f1:.3f})", path)
        written.append(path)
    return written
