"""Train DisCoM-KD, its baselines and its ablations alike, and report how they compare.

Behind ``discomkd-geo compare``. The protocol is built to decide, not only to run:

* **Same budget, converged**: every run trains until the mean over its heads of the
  validation weighted F1 has not improved for ``patience`` epochs (at most
  ``trainer.max_epochs``); each head keeps its best validation epoch, as the paper
  selects. Validation curves are recorded so the plateau can be checked.
* **Same tuning**: a learning-rate grid (``lrs``) is searched per method on the first
  seed's *validation* split; each head of each method keeps the rate of its best
  validation score (a method whose heads prefer different rates trains once per rate;
  ties are broken towards a rate another head chose, see :func:`choose_lrs`).
  DisCoM-KD's ablations train at DisCoM-KD's chosen rates, so each differs from it in one
  loss setting only (and the grid is not paid six more times).
* **Paired seeds**: seed ``i`` sets both the random 70/10/20 split and the
  initialisation, identical across methods, so per-seed differences are paired; the report
  gives mean ± std and, for DisCoM-KD minus every other row, the paired mean difference
  with its 95% t interval and a paired t-test (:mod:`discomkd_geo.training.stats`).
* **Diagnostics**: DisCoM-KD runs log the discriminator's accuracy, the gradient norm the
  GRL sends to ``z_inv`` relative to L_cl's, and the norm of ``z_inv`` per epoch.

Per seed the late-fusion teacher (at its chosen rate) trains before the KD/DKD students
distilled from it. Runs are independent processes when ``jobs > 1`` (one torch thread
each). The report directory holds::

    REPORT/runs/<variant>/lr<lr>/seed<i>/  one ordinary run directory per run
    REPORT/results.json   config, seeds, grid, chosen rates, every run (test metrics, best
                          validation score, validation curve, diagnostics, epochs, time)
                          and the summary; the report is regenerated from it alone
                          (:func:`write_report`)
    REPORT/report.md      tables: F1 mean ± std, paired differences, chosen rates, epochs
    REPORT/f1.png         F1 per method and head with 95% intervals
    REPORT/val_curves.png validation weighted F1 per epoch (every run at its chosen rate)
    REPORT/diagnostics.png  discriminator accuracy, GRL/L_cl gradient ratio, |z_inv|
"""

import json
import os
import shlex
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..config import Config, apply_override, from_dict  # noqa: E402
from ..errors import ConfigError, InputFileError  # noqa: E402
from ..files import atomic_path, check_writable  # noqa: E402
from ..logs import log  # noqa: E402
from .baselines import FUSED  # noqa: E402
from .plots import read_epoch_log  # noqa: E402
from .stats import mean_std, paired_difference, t_interval  # noqa: E402
from .train import train  # noqa: E402


@dataclass(frozen=True)
class Variant:
    """One row of the comparison: a training method and the config changes it makes.

    Attributes:
        name: row name, also the run sub-directory.
        method: ``Config.method`` of its runs.
        overrides: dotted config overrides on top of the shared config.
        description: what the row is, for the report.
        tuned_by: ``None``: the learning-rate grid is searched for this row; else the
            row (an ablation) trains at the rates chosen for that variant, so an ablation
            differs from it in one loss setting only.
    """

    name: str
    method: str
    overrides: tuple[str, ...]
    description: str
    tuned_by: str | None = None


_PAIRED = ("data.paired=true",)  # the teacher and its students see a sample's modalities together

#: Every row of the comparison, in training order (the teacher before its students).
VARIANTS: tuple[Variant, ...] = (
    Variant("mono", "mono", (), "one supervised classifier per modality (lower bound)"),
    Variant("teacher", "teacher", _PAIRED, "late-fusion multi-modal teacher (all modalities)"),
    Variant("kd", "kd", _PAIRED, "Hinton KD from the teacher into each modality"),
    Variant("dkd", "dkd", _PAIRED, "Decoupled KD (Zhao et al., 2022) from the teacher"),
    Variant("discomkd", "discomkd", (), "DisCoM-KD, all terms"),
    Variant("discomkd-no-adv", "discomkd", ("loss.adv=0",), "DisCoM-KD without L_adv",
            "discomkd"),
    Variant("discomkd-dann", "discomkd", ("loss.grl_schedule=dann",),
            "DisCoM-KD, GRL coefficient on the DANN ramp", "discomkd"),
    Variant("discomkd-signed", "discomkd", ("loss.orthogonality=signed",),
            "DisCoM-KD with the public code's signed L_perp", "discomkd"),
    Variant("discomkd-no-perp", "discomkd", ("loss.perp=0",), "DisCoM-KD without L_perp",
            "discomkd"),
    Variant("discomkd-no-aux", "discomkd", ("loss.aux=0",), "DisCoM-KD without L_aux",
            "discomkd"),
    Variant("discomkd-no-mod", "discomkd", ("loss.mod=0",), "DisCoM-KD without L_mod",
            "discomkd"),
)
_BY_NAME = {v.name: v for v in VARIANTS}
_STUDENTS = {"kd", "dkd"}
#: Trained when no methods are named: everything but DKD (available with --methods).
DEFAULT_METHODS = tuple(v.name for v in VARIANTS if v.name != "dkd")
#: Learning-rate grid searched per method (Adam).
DEFAULT_LRS = (3e-4, 1e-3, 3e-3)
#: The method every other row is compared with.
REFERENCE = "discomkd"
#: ``--quick``: a small end-to-end check of the whole protocol (the test suite runs it).
QUICK: dict[str, Any] = {
    "seeds": 2, "lrs": (1e-3, 3e-3), "patience": 1, "methods": ("mono", "discomkd"),
    "overrides": ("model.backbone=small_cnn", "model.width=4", "data.batch_size=16",
                  "data.num_workers=0",
                  "trainer.max_epochs=2"),
}
#: Per-epoch diagnostics of DisCoM-KD runs (logged by DisCoMKDTask).
DIAGNOSTICS = ("diag/disc_acc", "diag/grl_ratio", "diag/z_inv_norm")


def select_variants(names: Sequence[str] | None) -> list[Variant]:
    """The variants to train, in training order; KD/DKD bring in their teacher.

    Args:
        names: variant names (see :data:`VARIANTS`); ``None`` or empty:
            :data:`DEFAULT_METHODS`. An ablation brings in the variant it is tuned by.

    Raises:
        ConfigError: an unknown name.
    """
    wanted = set(names or DEFAULT_METHODS)
    unknown = sorted(wanted - set(_BY_NAME))
    if unknown:
        raise ConfigError("--methods", f"unknown method(s) {unknown}; "
                                       f"expected some of {list(_BY_NAME)}")
    if wanted & _STUDENTS:
        wanted.add("teacher")
    wanted |= {_BY_NAME[n].tuned_by for n in wanted if _BY_NAME[n].tuned_by}
    return [v for v in VARIANTS if v.name in wanted]


def _variant_config(config: Config, variant: Variant, seed: int, teacher: Path | None,
                    lr: float | None = None, patience: int | None = None) -> Config:
    data = config.to_dict()
    extra = [f"method={variant.method}", f"seed={seed}", f"data.split_seed={seed}"]
    if lr is not None:
        extra.append(f"optim.lr={lr}")
    if patience is not None:
        extra.append(f"trainer.early_stopping_patience={patience}")
    if variant.method in _STUDENTS:
        extra.append(f"model.teacher={teacher}")
    for assignment in (*variant.overrides, *extra):
        apply_override(data, assignment)
    return from_dict(data)


# --------------------------------------------------------------------------- running
@dataclass(frozen=True)
class _Job:
    variant: str
    seed: int
    lr: float
    config: dict[str, Any]
    run_dir: Path


def _run_job(job: _Job, threads: int | None) -> dict[str, Any]:
    """Train one run and read back what the report needs (runs in a worker process)."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    start = time.perf_counter()
    result = train(from_dict(job.config), job.run_dir, overwrite=True, progress=False)
    wall = time.perf_counter() - start
    log = read_epoch_log(job.run_dir / "logs" / "metrics.csv")
    heads = list(result.metrics)
    curves = {h: [v for _, v in log[f"val/{h}/f1_weighted"]] for h in heads}
    return {
        "variant": job.variant, "method": job.config["method"], "seed": job.seed,
        "lr": job.lr, "run_dir": str(job.run_dir), "seconds": result.seconds, "wall": wall,
        "epochs": len(curves[heads[0]]), "parameters": result.parameters,
        "val_best": {h: max(c) for h, c in curves.items()}, "val_curve": curves,
        "test": result.metrics,
        "diagnostics": {k: [v for _, v in log[k]] for k in DIAGNOSTICS if k in log},
    }


_Key = tuple[str, int, float]  # (variant, seed, lr): one run


@dataclass(frozen=True)
class _Pending:
    """A run waiting for others: its key, the runs it needs, and how to make its job.

    The job is made only once its dependencies are done (a student's teacher path depends
    on the teacher's chosen rate).
    """

    key: _Key
    after: tuple[_Key, ...]
    make: Callable[[], _Job]


def _run_all(pending: list[_Pending], finished: set[_Key], jobs: int,
             done: Callable[[dict[str, Any]], None]) -> None:
    """Run every pending item not yet finished, in list order as dependencies allow.

    At most ``jobs`` runs are in flight, so earlier items (earlier seeds) finish first
    and an interrupted comparison leaves whole seeds behind.
    """
    todo = [p for p in pending if p.key not in finished]

    def next_ready() -> _Pending | None:
        for p in todo:
            if all(k in finished for k in p.after):
                todo.remove(p)
                return p
        return None

    if jobs == 1:
        while (item := next_ready()) is not None:
            done(_run_job(item.make(), None))
            finished.add(item.key)
        return
    # Each worker leads its own session, hence its own scheduler autogroup on Linux:
    # parallel runs then get the CPU share of as many separate commands.
    with ProcessPoolExecutor(jobs, mp_context=get_context("spawn"),
                             initializer=os.setsid) as pool:
        running: dict[Future[dict[str, Any]], _Key] = {}
        while todo or running:
            while len(running) < jobs and (item := next_ready()) is not None:
                running[pool.submit(_run_job, item.make(), 1)] = item.key
            if not running:
                raise RuntimeError(f"unsatisfiable dependencies: {[p.key for p in todo]}")
            finished_now, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished_now:
                key = running.pop(future)
                done(future.result())
                finished.add(key)


def _lr_name(lr: float) -> str:
    return f"lr{lr:g}"


def choose_lrs(runs: list[dict[str, Any]], seed: int) -> dict[str, dict[str, float]]:
    """Per variant and head, the rate with the best validation score on ``seed``.

    Ties (common where a head saturates its small validation split, e.g. MS at 100%) are
    broken without looking at anything else: heads with fewer best rates choose first,
    and a tied head takes a rate another head of the method already chose (one run then
    serves both), else the smallest.
    """
    scores: dict[str, dict[str, dict[float, float]]] = {}
    for run in runs:
        if run["seed"] == seed:
            for h, score in run["val_best"].items():
                scores.setdefault(run["variant"], {}).setdefault(h, {})[run["lr"]] = score
    chosen: dict[str, dict[str, float]] = {}
    for variant, heads in scores.items():
        best = {h: sorted(lr for lr, v in by_lr.items() if v == max(by_lr.values()))
                for h, by_lr in heads.items()}
        picked: dict[str, float] = {}
        for h in sorted(best, key=lambda h: len(best[h])):
            shared = [lr for lr in best[h] if lr in picked.values()]
            picked[h] = (shared or best[h])[0]
        chosen[variant] = {h: picked[h] for h in heads}
    return chosen


# --------------------------------------------------------------------------- summary
def selected_runs(results: dict[str, Any]) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Per variant and head, the run at the chosen rate of every seed, in seed order."""
    by_key = {(r["variant"], r["seed"], r["lr"]): r for r in results["runs"]}
    out: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for variant, heads in results["chosen_lr"].items():
        for h, lr in heads.items():
            picked = [by_key.get((variant, seed, lr)) for seed in results["seeds"]]
            out.setdefault(variant, {})[h] = [r for r in picked if r is not None]
    return out


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """Per variant and head: test weighted F1 over seeds, epochs, time; paired differences.

    Only seeds every variant has finished enter the paired differences.
    """
    picked = selected_runs(results)
    summary: dict[str, Any] = {"methods": {}, "differences": {}}
    for variant, heads in picked.items():
        runs = [r for rs in heads.values() for r in rs]
        if not runs:
            continue
        f1 = {h: {**mean_std([r["test"][h]["f1_weighted"] for r in rs]),
                  "seeds": [r["seed"] for r in rs], "lr": results["chosen_lr"][variant][h]}
              for h, rs in heads.items() if rs}
        for entry in f1.values():
            entry["low"], entry["high"] = t_interval(entry["values"])
        unique = {(r["seed"], r["lr"]): r for r in runs}.values()
        summary["methods"][variant] = {
            "method": runs[0]["method"], "f1_weighted": f1,
            "epochs": mean_std([float(r["epochs"]) for r in unique]),
            "seconds": mean_std([r["wall"] for r in unique]),
            "parameters": runs[0]["parameters"]}
    if REFERENCE not in picked:
        return summary
    for variant, heads in picked.items():
        if variant == REFERENCE:
            continue
        for h, rs in heads.items():
            ref = {r["seed"]: r["test"][h]["f1_weighted"] for r in picked[REFERENCE].get(h, [])}
            other = {r["seed"]: r["test"][h]["f1_weighted"] for r in rs}
            seeds = [s for s in results["seeds"] if s in ref and s in other]
            if seeds:
                summary["differences"].setdefault(variant, {})[h] = {
                    **paired_difference([ref[s] for s in seeds], [other[s] for s in seeds]),
                    "seeds": seeds}
    return summary


# --------------------------------------------------------------------------- report
def _heads(summary: dict[str, Any]) -> list[str]:
    heads: list[str] = []
    for entry in summary["methods"].values():
        heads += [h for h in entry["f1_weighted"] if h not in heads]
    return sorted(heads, key=lambda h: (h == FUSED, heads.index(h)))  # fused last


def _cell(stats: dict[str, Any] | None) -> str:
    if stats is None:
        return "-"
    if len(stats["values"]) == 1:
        return f"{100 * stats['mean']:.1f}"
    return f"{100 * stats['mean']:.1f} ± {100 * stats['std']:.1f}"


def _diff_cell(d: dict[str, Any] | None) -> str:
    if d is None:
        return "-"
    if d["low"] is None:
        return f"{100 * d['mean']:+.1f}"
    p = "-" if d["p"] is None else f"{d['p']:.3f}"
    return (f"{100 * d['mean']:+.1f} [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}], "
            f"p={p}, {d['wins']}/{d['n']}")


def report_markdown(results: dict[str, Any]) -> str:
    """The Markdown report of a ``results.json`` dict (see the module docstring)."""
    summary = results["summary"]
    heads = _heads(summary)
    cfg = results["config"]
    lines = [
        "# DisCoM-KD vs. baselines and ablations", "", "Produced by:", "", "```",
        results["command"], "```", "",
        f"Protocol: seeds {results['seeds']} (each: its own random 70/10/20 split and "
        f"initialisation, the same for every method); learning rate per method and head "
        f"chosen on the validation split of seed {results['seeds'][0]} from "
        f"{results['lrs']} (DisCoM-KD's ablations use DisCoM-KD's rates); every run stops "
        f"when the mean validation weighted F1 of its "
        f"heads has not improved for {results['patience']} epochs (at most "
        f"{cfg['trainer']['max_epochs']}); each head keeps its best validation epoch. "
        f"Backbone `{cfg['model']['backbone']}` (width {cfg['model']['width']}), batch "
        f"{cfg['data']['batch_size']}. {len(results['runs'])} runs, "
        f"{results.get('wall_seconds', 0) / 60:.1f} min wall time.",
        "", "## Test weighted F1 (%), mean ± std over seeds", "",
        "| method | " + " | ".join(heads) + " | lr (per head) | epochs | time/run (s) | "
        "parameters | what |",
        "|---" * (len(heads) + 6) + "|",
    ]
    for name, entry in summary["methods"].items():
        f1 = entry["f1_weighted"]
        cells = [_cell(f1.get(h)) for h in heads]
        lrs = ", ".join(f"{h} {f1[h]['lr']:g}" for h in heads if h in f1)
        time_cell = f"{entry['seconds']['mean']:.0f}" + (
            " + teacher" if entry["method"] in _STUDENTS else "")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {lrs} | "
                     f"{entry['epochs']['mean']:.1f} | {time_cell} | {entry['parameters']:,} "
                     f"| {_BY_NAME[name].description} |")
    lines += ["", "Parameters: trainable parameters of the trained network (KD/DKD: the "
              "students only; the frozen teacher is the `teacher` row). `fused`: the "
              "teacher's prediction from all modalities together, not a single-modality "
              "model. Epochs: epochs run before early stopping (mean over runs).", ""]
    diffs = summary["differences"]
    if diffs:
        lines += [f"## {REFERENCE} minus each other method, paired by seed (F1 points)", "",
                  "Mean difference [95% t interval], paired t-test p-value, seeds where "
                  f"{REFERENCE} is better / seeds. An interval above 0: {REFERENCE} better.",
                  "", "| other method | " + " | ".join(heads) + " |",
                  "|---" * (len(heads) + 1) + "|"]
        for name, per_head in diffs.items():
            lines.append(f"| {name} | " + " | ".join(_diff_cell(per_head.get(h))
                                                      for h in heads) + " |")
        lines.append("")
    tuning = results["tuning"]
    lines += [f"## Learning-rate selection (validation weighted F1 %, seed "
              f"{results['seeds'][0]})", "",
              "| method | head | " + " | ".join(f"{lr:g}" for lr in results["lrs"]) + " |",
              "|---" * (len(results["lrs"]) + 2) + "|"]
    for name, per_head in tuning.items():
        for h, scores in per_head.items():
            cells = [f"{100 * scores[_lr_name(lr)]:.1f}" if _lr_name(lr) in scores else "-"
                     for lr in results["lrs"]]
            lines.append(f"| {name} | {h} | " + " | ".join(cells) + " |")
    lines.append("")
    return "\n".join(lines)


def plot_f1(results: dict[str, Any], path: Path) -> None:
    """Test weighted F1 per variant and head: mean with its 95% t interval, and each seed."""
    methods = results["summary"]["methods"]
    heads = [h for h in _heads(results["summary"]) if h != FUSED]
    names = [n for n in methods if any(h in methods[n]["f1_weighted"] for h in heads)]
    fig, axes = plt.subplots(1, len(heads), figsize=(5.5 * len(heads), 0.45 * len(names) + 1.8),
                             squeeze=False)
    for ax, h in zip(axes[0], heads, strict=True):
        for i, n in enumerate(names):
            entry = methods[n]["f1_weighted"].get(h)
            if entry is None:
                continue
            mean = 100 * entry["mean"]
            err = None
            if entry["low"] is not None:
                err = [[mean - 100 * entry["low"]], [100 * entry["high"] - mean]]
            ax.errorbar(mean, i, xerr=err, fmt="o", color="C0" if n == REFERENCE else "C1",
                        capsize=3)
            ax.plot([100 * v for v in entry["values"]], [i] * len(entry["values"]), "k.",
                    alpha=0.35, markersize=4)
        ax.set_yticks(range(len(names)), names)
        ax.invert_yaxis()
        ax.set_xlabel(f"{h} test weighted F1 (%)")
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(f"mean and 95% t interval over {len(results['seeds'])} paired seeds "
                 "(dots: seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_val_curves(results: dict[str, Any], path: Path) -> None:
    """Validation weighted F1 per epoch of every run at its chosen rate, per head."""
    picked = selected_runs(results)
    heads = [h for h in _heads(results["summary"]) if h != FUSED]
    fig, axes = plt.subplots(1, len(heads), figsize=(6 * len(heads), 4.5), squeeze=False)
    for ax, h in zip(axes[0], heads, strict=True):
        for i, (name, per_head) in enumerate(picked.items()):
            for j, run in enumerate(per_head.get(h, [])):
                curve = [100 * v for v in run["val_curve"][h]]
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


def plot_diagnostics(results: dict[str, Any], path: Path) -> bool:
    """Per-epoch adversarial diagnostics of the DisCoM-KD variants (mean over seeds).

    Returns:
        whether there was anything to plot (no DisCoM-KD runs: no file).
    """
    picked = selected_runs(results)
    series: dict[str, dict[str, list[list[float]]]] = {}
    for name, per_head in picked.items():
        runs = {r["run_dir"]: r for rs in per_head.values() for r in rs}.values()
        for run in runs:
            for key, values in run["diagnostics"].items():
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


def write_report(results: dict[str, Any], out: Path) -> None:
    """(Re)write report.md and the plots of ``out`` from a ``results.json`` dict alone."""
    results["summary"] = summarize(results)
    with atomic_path(out / "report.md", overwrite=True) as tmp:
        tmp.write_text(report_markdown(results))
    plot_f1(results, out / "f1.png")
    plot_val_curves(results, out / "val_curves.png")
    plot_diagnostics(results, out / "diagnostics.png")


def regenerate(out: str | Path) -> dict[str, Any]:
    """Rewrite the report, the plots and the summary of ``results.json`` from its runs.

    Raises:
        InputFileError: no readable ``results.json`` in ``out``.
    """
    path = Path(out) / "results.json"
    try:
        results = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise InputFileError(path, f"cannot read the comparison results ({err})") from err
    write_report(results, Path(out))
    _write_json(results, path)
    return results


def _write_json(results: dict[str, Any], path: Path) -> None:
    with atomic_path(path, overwrite=True) as tmp:
        tmp.write_text(json.dumps(results, indent=2))


# --------------------------------------------------------------------------- protocol
def _stages(variants: list[Variant]) -> list[list[Variant]]:
    """Variants in two stages: the teacher before the students distilled from it."""
    return [[v for v in variants if v.method not in _STUDENTS],
            [v for v in variants if v.method in _STUDENTS]]


def compare(config: Config, out: str | Path, seeds: int = 5,
            methods: Sequence[str] | None = None, lrs: Sequence[float] = DEFAULT_LRS,
            patience: int = 5, jobs: int = 1, overwrite: bool = False, resume: bool = False,
            command: str | None = None,
            echo: Callable[[str], Any] = log.info) -> dict[str, Any]:
    """Tune, train every selected variant for every seed, and write the report.

    Args:
        config: the shared experiment (data root, model, epoch cap); ``method``,
            ``optim.lr`` and ``trainer.early_stopping_patience`` are set per run.
        out: report directory (layout in the module docstring).
        seeds: number of paired seeds; seed ``i`` is ``config.seed + i``, the first also
            tunes the learning rate.
        methods: variant names to train (default: :data:`DEFAULT_METHODS`).
        lrs: learning-rate grid, searched per method on the first seed's validation split.
        patience: early-stopping patience in epochs.
        jobs: runs trained at once, each in its own process with one torch thread
            (1: in this process).
        overwrite: replace a non-empty ``out``.
        resume: keep the runs already recorded in ``out/results.json`` (same protocol
            required) and train only the missing ones.
        command: the command line to record in the report (default: the Python call).
        echo: receives one line per finished run.

    Returns:
        the ``results.json`` content.

    Raises:
        OutputExistsError: ``out`` is not empty and neither ``overwrite`` nor ``resume``.
        ConfigError: unknown method name, seeds, jobs or patience < 1, an empty grid, or
            ``resume`` with another protocol than the recorded one.
    """
    for name, value in (("--seeds", seeds), ("--jobs", jobs), ("--patience", patience)):
        if value < 1:
            raise ConfigError(name, f"expected at least 1, got {value}")
    if not lrs:
        raise ConfigError("--lrs", "expected at least one learning rate")
    variants = select_variants(methods)
    seed_values = [config.seed + i for i in range(seeds)]
    lrs = sorted(float(lr) for lr in lrs)
    results: dict[str, Any] = {
        "command": command or f"compare(config, {str(out)!r}, seeds={seeds}, "
                              f"methods={[v.name for v in variants]}, lrs={lrs})",
        "config": config.to_dict(), "seeds": seed_values, "lrs": lrs, "patience": patience,
        "variants": {v.name: {"method": v.method, "overrides": list(v.overrides),
                              "description": v.description} for v in variants},
        "tuning": {}, "chosen_lr": {}, "runs": [], "wall_seconds": 0.0, "summary": {},
    }
    out = Path(out)
    if resume and (out / "results.json").exists():
        previous = json.loads((out / "results.json").read_text())
        for key in ("config", "seeds", "lrs", "patience"):
            if previous[key] != results[key]:
                raise ConfigError("--resume", f"{out / 'results.json'} was made with another "
                                              f"{key}; resume needs the same protocol")
        results["runs"] = [r for r in previous["runs"] if r["variant"] in results["variants"]]
        elapsed = previous["wall_seconds"]
    else:
        out = check_writable(out, overwrite)
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        elapsed = 0.0
    start = time.perf_counter() - elapsed

    def done(run: dict[str, Any]) -> None:
        run["run_dir"] = str(Path(run["run_dir"]).relative_to(out))
        results["runs"].append(run)
        results["wall_seconds"] = time.perf_counter() - start
        _write_json(results, out / "results.json")
        scores = ", ".join(f"{h} {100 * m['f1_weighted']:.1f}" for h, m in run["test"].items())
        echo(f"[{len(results['runs'])}] {run['variant']} lr {run['lr']:g} seed {run['seed']}:"
             f" test weighted F1 {scores}, {run['epochs']} epochs ({run['wall']:.0f} s)")

    def job(variant: Variant, seed: int, lr: float) -> _Job:
        teacher = None
        if variant.method in _STUDENTS:
            t_lr = results["chosen_lr"]["teacher"][FUSED]
            teacher = out / "runs" / "teacher" / _lr_name(t_lr) / f"seed{seed}"
        cfg = _variant_config(config, variant, seed, teacher, lr, patience)
        return _Job(variant.name, seed, lr, cfg.to_dict(),
                    out / "runs" / variant.name / _lr_name(lr) / f"seed{seed}")

    finished = {(r["variant"], r["seed"], r["lr"]) for r in results["runs"]}
    tune_seed = seed_values[0]
    tuned = [v for v in variants if v.tuned_by is None]
    teachers = tuple(("teacher", tune_seed, lr) for lr in lrs)

    def after(v: Variant, seed: int) -> tuple[_Key, ...]:
        if v.method not in _STUDENTS:
            return ()
        if seed == tune_seed and "teacher" not in results["chosen_lr"]:
            return teachers  # the teacher's rate is chosen once all of them are done
        return (("teacher", seed, results["chosen_lr"]["teacher"][FUSED]),)

    def make(v: Variant, seed: int, lr: float) -> Callable[[], _Job]:
        def factory() -> _Job:
            if v.method in _STUDENTS and "teacher" not in results["chosen_lr"]:
                results["chosen_lr"]["teacher"] = choose_lrs(results["runs"], tune_seed)["teacher"]
            return job(v, seed, lr)
        return factory

    _run_all([_Pending((v.name, tune_seed, lr), after(v, tune_seed), make(v, tune_seed, lr))
              for v in tuned for lr in lrs], finished, jobs, done)
    results["chosen_lr"] = choose_lrs(results["runs"], tune_seed)
    results["tuning"] = {}
    for r in results["runs"]:
        if r["seed"] == tune_seed and _BY_NAME[r["variant"]].tuned_by is None:
            scores = results["tuning"].setdefault(r["variant"], {})
            for h, score in r["val_best"].items():
                scores.setdefault(h, {})[_lr_name(r["lr"])] = score
    for v in variants:
        if v.tuned_by is not None:
            results["chosen_lr"][v.name] = dict(results["chosen_lr"][v.tuned_by])
    _run_all([_Pending((v.name, seed, lr), after(v, seed), make(v, seed, lr))
              for seed in seed_values for stage in _stages(variants) for v in stage
              for lr in sorted(set(results["chosen_lr"][v.name].values()))],
             finished, jobs, done)
    results["wall_seconds"] = time.perf_counter() - start
    results["summary"] = summarize(results)
    _write_json(results, out / "results.json")
    write_report(results, out)
    return results


def command_line(argv: Sequence[str]) -> str:
    """The shell command that reproduces a ``discomkd-geo`` invocation."""
    return shlex.join(["discomkd-geo", *argv])
