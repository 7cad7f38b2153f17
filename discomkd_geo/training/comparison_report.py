"""The comparison's report: Markdown tables and figures, made from the results alone.

``report.md`` (F1 mean ± std, paired differences, chosen rates, epochs), ``f1.png``,
``maps.png`` (with a map score), ``val_curves.png`` and ``diagnostics.png``; see
:mod:`discomkd_geo.training.compare`.
matplotlib is imported by the functions that draw (its Agg backend: files only).
"""

from pathlib import Path
from typing import Any

from ..files import atomic_path
from .baselines import FUSED
from .comparison_results import (
    DIAGNOSTICS,
    PRIMARY,
    REFERENCE,
    STUDENT_METHODS,
    SUMMARY_METRICS,
    ComparisonResults,
    Scores,
    Summary,
    lr_name,
)
from .map_score import MAP_METRICS

#: ``trainer.early_stopping_rule``, in the report's words (older results: ``mean``).
STOPPING = {"heads": "none of its heads has improved its validation weighted F1",
            "mean": "the mean validation weighted F1 of its heads has not improved"}


def _heads(summary: Summary) -> list[str]:
    heads: list[str] = []
    for entry in summary.methods.values():
        heads += [h for h in entry.scores[PRIMARY] if h not in heads]
    return sorted(heads, key=lambda h: (h == FUSED, heads.index(h)))  # fused last


def _cell(stats: Scores | None) -> str:
    if stats is None:
        return "-"
    if len(stats.values) == 1:
        return f"{100 * stats.mean:.1f}"
    return f"{100 * stats.mean:.1f} ± {100 * stats.std:.1f}"


def _diff_cell(d: dict[str, Any] | None) -> str:
    if d is None:
        return "-"
    if d["low"] is None:
        return f"{100 * d['mean']:+.1f}"
    p = "-" if d["p"] is None else f"{d['p']:.3f}"
    return (f"{100 * d['mean']:+.1f} [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}], "
            f"p={p}, {d['wins']}/{d['n']}")


def _protocol_lines(results: ComparisonResults) -> list[str]:
    cfg = results.config
    maps = [] if results.map_score is None else ["", f"Map score: {results.map_score.describe()}"]
    return [
        "# DisCoM-KD vs. baselines and ablations", "", "Produced by:", "", "```",
        results.command, "```", "",
        f"Protocol: seeds {results.seeds} (each: its own random 70/10/20 split and "
        f"initialisation, the same for every method); learning rate per method and head "
        f"chosen on the validation split of seed {results.seeds[0]} from "
        f"{results.lrs} (DisCoM-KD's ablations use DisCoM-KD's rates); every run stops "
        f"when {STOPPING[cfg['trainer'].get('early_stopping_rule', 'mean')]} for "
        f"{results.patience} epochs (at most "
        f"{cfg['trainer']['max_epochs']}); each head keeps its best validation epoch. "
        f"Backbone `{cfg['model']['backbone']}` (width {cfg['model']['width']}), batch "
        f"{cfg['data']['batch_size']}. {len(results.runs)} runs, "
        f"{results.wall_seconds / 60:.1f} min wall time.", *maps,
    ]


def _primary_table(results: ComparisonResults, summary: Summary, heads: list[str]) -> list[str]:
    lines = [
        "", "## Test weighted F1 (%), mean ± std over seeds", "",
        "| method | " + " | ".join(heads) + " | lr (per head) | epochs | time/run (s) | "
        "parameters | what |",
        "|---" * (len(heads) + 6) + "|",
    ]
    for name, entry in summary.methods.items():
        f1 = entry.scores[PRIMARY]
        cells = [_cell(f1.get(h)) for h in heads]
        lrs = ", ".join(f"{h} {f1[h].lr:g}" for h in heads if h in f1)
        time_cell = f"{entry.seconds['mean']:.0f}" + (
            " + teacher" if entry.method in STUDENT_METHODS else "")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {lrs} | "
                     f"{entry.epochs['mean']:.1f} | {time_cell} | {entry.parameters:,} "
                     f"| {results.variants[name].description} |")
    return [*lines, "", "Parameters: trainable parameters of the trained network (KD/DKD: the "
            "students only; the frozen teacher is the `teacher` row). `fused`: the "
            "teacher's prediction from all modalities together, not a single-modality "
            "model. Epochs: epochs run before early stopping (mean over runs).", ""]


def _interval_cell(stats: Scores | None) -> str:
    if stats is None or stats.low is None or stats.high is None:
        return _cell(stats)
    return f"{_cell(stats)} [{100 * stats.low:.1f}, {100 * stats.high:.1f}]"


def _metric_table(summary: Summary, metric: str, heads: list[str]) -> list[str]:
    """Mean ± std [95% t interval] of a further :data:`SUMMARY_METRICS` metric, if any."""
    rows = {name: entry.scores[metric] for name, entry in summary.methods.items()
            if metric in entry.scores}
    if not rows:
        return []
    heads = [h for h in heads if any(h in per_head for per_head in rows.values())]
    lines = [f"## Test {SUMMARY_METRICS[metric]} (%), mean ± std [95% t interval] over "
             "seeds", "", "| method | " + " | ".join(heads) + " |",
             "|---" * (len(heads) + 1) + "|"]
    for name, per_head in rows.items():
        lines.append(f"| {name} | " + " | ".join(_interval_cell(per_head.get(h))
                                                  for h in heads) + " |")
    return [*lines, ""]


def _differences_table(summary: Summary, heads: list[str], metric: str = PRIMARY) -> list[str]:
    lines: list[str] = []
    diffs = summary.differences if metric == PRIMARY else summary.more_differences.get(
        metric, {})
    if metric != PRIMARY:
        heads = [h for h in heads if any(h in per_head for per_head in diffs.values())]
    what = "F1 points" if metric == PRIMARY else f"{SUMMARY_METRICS[metric]}, points"
    if diffs:
        lines += [f"## {REFERENCE} minus each other method, paired by seed ({what})", "",
                  "Mean difference [95% t interval], paired t-test p-value, seeds where "
                  f"{REFERENCE} is better / seeds. An interval above 0: {REFERENCE} better.",
                  "", "| other method | " + " | ".join(heads) + " |",
                  "|---" * (len(heads) + 1) + "|"]
        for name, per_head in diffs.items():
            lines.append(f"| {name} | " + " | ".join(_diff_cell(per_head.get(h))
                                                      for h in heads) + " |")
        lines.append("")
    return lines


def _tuning_table(results: ComparisonResults) -> list[str]:
    lines = [f"## Learning-rate selection (validation weighted F1 %, seed "
             f"{results.seeds[0]})", "",
             "| method | head | " + " | ".join(f"{lr:g}" for lr in results.lrs) + " |",
             "|---" * (len(results.lrs) + 2) + "|"]
    for name, per_head in results.tuning.items():
        for h, scores in per_head.items():
            cells = [f"{100 * scores[lr_name(lr)]:.1f}" if lr_name(lr) in scores else "-"
                     for lr in results.lrs]
            lines.append(f"| {name} | {h} | " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def report_markdown(results: ComparisonResults, summary: Summary) -> str:
    """The Markdown report (see :mod:`discomkd_geo.training.compare`)."""
    heads = _heads(summary)
    lines = [*_protocol_lines(results), *_primary_table(results, summary, heads),
             *_differences_table(summary, heads)]
    for metric in SUMMARY_METRICS:
        if metric != PRIMARY:
            lines += _metric_table(summary, metric, heads)
            lines += _differences_table(summary, heads, metric)
    return "\n".join([*lines, *_tuning_table(results)])


def plot_f1(results: ComparisonResults, summary: Summary, path: Path) -> None:
    """Test weighted F1 per variant and head: mean with its 95% t interval, and each seed."""
    heads = [h for h in _heads(summary) if h != FUSED]
    plot_scores(results, summary, path,
                [(PRIMARY, h, f"{h} test weighted F1 (%)") for h in heads])


def plot_maps(results: ComparisonResults, summary: Summary, path: Path) -> bool:
    """The map score's metrics as :func:`plot_f1` draws F1; False if no run has them."""
    labels = {"map_oa": "SAR-only map OA (%)",
              "map_edge_oa": "SAR-only map OA within 3 px of a boundary (%)"}
    panels = [(m, "sar", labels[m]) for m in MAP_METRICS
              if any("sar" in v.scores.get(m, {}) for v in summary.methods.values())]
    if panels:
        plot_scores(results, summary, path, panels)
    return bool(panels)


def plot_scores(results: ComparisonResults, summary: Summary, path: Path,
                panels: list[tuple[str, str, str]]) -> None:
    """One panel per ``(metric, head, label)``: each variant's mean and 95% t interval.

    Each seed's value is drawn as a dot beside it.
    """
    import matplotlib.pyplot as plt

    methods = summary.methods
    names = [n for n in methods
             if any(h in methods[n].scores.get(m, {}) for m, h, _ in panels)]
    fig, axes = plt.subplots(1, len(panels),
                             figsize=(5.5 * len(panels), 0.45 * len(names) + 1.8), squeeze=False)
    for ax, (metric, h, label) in zip(axes[0], panels, strict=True):
        for i, n in enumerate(names):
            entry = methods[n].scores.get(metric, {}).get(h)
            if entry is None:
                continue
            mean = 100 * entry.mean
            err = None
            if entry.low is not None and entry.high is not None:
                err = [[mean - 100 * entry.low], [100 * entry.high - mean]]
            ax.errorbar(mean, i, xerr=err, fmt="o", color="C0" if n == REFERENCE else "C1",
                        capsize=3)
            ax.plot([100 * v for v in entry.values], [i] * len(entry.values), "k.",
                    alpha=0.35, markersize=4)
        ax.set_yticks(range(len(names)), names)
        ax.invert_yaxis()
        ax.set_xlabel(label)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(f"mean and 95% t interval over {len(results.seeds)} paired seeds "
                 "(dots: seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_val_curves(results: ComparisonResults, summary: Summary, path: Path) -> None:
    """Validation weighted F1 per epoch of every run at its chosen rate, per head."""
    import matplotlib.pyplot as plt

    picked = results.selected_runs()
    heads = [h for h in _heads(summary) if h != FUSED]
    fig, axes = plt.subplots(1, len(heads), figsize=(6 * len(heads), 4.5), squeeze=False)
    for ax, h in zip(axes[0], heads, strict=True):
        for i, (name, per_head) in enumerate(picked.items()):
            for j, run in enumerate(per_head.get(h, [])):
                curve = [100 * v for v in run.val_curve[h]]
                ax.plot(range(1, len(curve) + 1), curve, color=f"C{i % 10}", alpha=0.6,
                        lw=1, label=name if j == 0 else None)
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{h} validation weighted F1 (%)")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize="small", loc="lower right")
    fig.suptitle("validation curves (one line per seed; runs stop after the patience)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_diagnostics(results: ComparisonResults, path: Path) -> bool:
    """Per-epoch adversarial diagnostics of the DisCoM-KD variants (mean over seeds).

    Returns:
        whether there was anything to plot (no DisCoM-KD runs: no file).
    """
    import matplotlib.pyplot as plt
    import numpy as np

    picked = results.selected_runs()
    series: dict[str, dict[str, list[list[float]]]] = {}
    for name, per_head in picked.items():
        runs = {r.run_dir: r for rs in per_head.values() for r in rs}.values()
        for run in runs:
            for key, values in run.diagnostics.items():
                series.setdefault(key, {}).setdefault(name, []).append(values)
    if not series:
        return False
    titles = {"diag/disc_acc": "discriminator accuracy on z_inv",
              "diag/grl_ratio": "|grad from L_adv (GRL)| / |grad from L_cl| at z_inv",
              "diag/z_inv_norm": "mean |z_inv|"}
    fig, axes = plt.subplots(1, len(DIAGNOSTICS), figsize=(5.5 * len(DIAGNOSTICS), 4.2))
    for ax, key in zip(axes, DIAGNOSTICS, strict=True):
        for i, (name, curves) in enumerate(series.get(key, {}).items()):
            n = min(len(c) for c in curves)  # epochs every seed ran
            mean = np.mean([c[:n] for c in curves], axis=0)
            ax.plot(range(1, n + 1), mean, color=f"C{i % 10}", label=name)
        ax.set_title(titles[key], fontsize="medium")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    fig.suptitle("training diagnostics, mean over seeds (first epochs every seed ran)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write_report(results: ComparisonResults, out: Path) -> None:
    """(Re)write report.md and the figures in ``out`` from ``results`` alone."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    summary = results.summary()
    with atomic_path(out / "report.md", overwrite=True) as tmp:
        tmp.write_text(report_markdown(results, summary))
    plot_f1(results, summary, out / "f1.png")
    plot_maps(results, summary, out / "maps.png")
    plot_val_curves(results, summary, out / "val_curves.png")
    plot_diagnostics(results, out / "diagnostics.png")
