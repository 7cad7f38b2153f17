"""Train DisCoM-KD, its baselines and its ablations alike, and report how they compare.

Behind ``discomkd-geo compare``. Every variant trains through
:func:`~discomkd_geo.training.train.train` from the same config, with the same budget and
the same seeds (seed ``i`` sets both the training seed and the random split, as the
paper's repeated splits do), so the only difference between two rows is the method. Per
seed the late-fusion teacher trains before the KD and DKD students it is distilled into.
The report directory holds::

    REPORT/runs/<variant>/seed<i>/  one ordinary run directory per variant and seed
    REPORT/results.json             every run's test metrics, time and parameter count,
                                    and the per-variant summary (updated after each run)
    REPORT/report.md                the Markdown table (weighted F1 mean +- std over seeds)
    REPORT/f1.png                   bar chart of the same numbers
"""

import json
import shlex
import shutil
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .._io import atomic_path, check_writable  # noqa: E402
from ..config import Config, apply_override, from_dict  # noqa: E402
from ..errors import ConfigError  # noqa: E402
from .baselines import FUSED  # noqa: E402
from .train import train  # noqa: E402


@dataclass(frozen=True)
class Variant:
    """One row of the comparison: a training method and the config changes it makes.

    Attributes:
        name: row name, also the run sub-directory.
        method: ``Config.method`` of its runs.
        overrides: dotted config overrides on top of the shared config.
        description: what the row is, for the report.
    """

    name: str
    method: str
    overrides: tuple[str, ...]
    description: str


_PAIRED = ("data.paired=true",)  # the teacher and its students see a sample's modalities together

#: Every row of the comparison, in training order (the teacher before its students).
VARIANTS: tuple[Variant, ...] = (
    Variant("mono", "mono", (), "one supervised classifier per modality (lower bound)"),
    Variant("teacher", "teacher", _PAIRED, "late-fusion multi-modal teacher (all modalities)"),
    Variant("kd", "kd", _PAIRED, "Hinton KD from the teacher into each modality"),
    Variant("dkd", "dkd", _PAIRED, "Decoupled KD (Zhao et al., 2022) from the teacher"),
    Variant("discomkd", "discomkd", (), "DisCoM-KD, all terms"),
    Variant("discomkd-no-adv", "discomkd", ("loss.adv=0",), "DisCoM-KD without L_adv"),
    Variant("discomkd-no-perp", "discomkd", ("loss.perp=0",), "DisCoM-KD without L_perp"),
    Variant("discomkd-no-aux", "discomkd", ("loss.aux=0",), "DisCoM-KD without L_aux"),
    Variant("discomkd-no-mod", "discomkd", ("loss.mod=0",), "DisCoM-KD without L_mod"),
    Variant("discomkd-signed", "discomkd", ("loss.orthogonality=signed",),
            "DisCoM-KD with the public code's signed L_perp"),
)
_BY_NAME = {v.name: v for v in VARIANTS}
_STUDENTS = {"kd", "dkd"}


def select_variants(names: Sequence[str] | None) -> list[Variant]:
    """The variants to train, in training order; KD/DKD bring in their teacher.

    Args:
        names: variant names (see :data:`VARIANTS`); ``None`` or empty: all of them.

    Raises:
        ConfigError: an unknown name.
    """
    if not names:
        return list(VARIANTS)
    wanted = set(names)
    unknown = sorted(wanted - set(_BY_NAME))
    if unknown:
        raise ConfigError("--methods", f"unknown method(s) {unknown}; "
                                       f"expected some of {list(_BY_NAME)}")
    if wanted & _STUDENTS:
        wanted.add("teacher")
    return [v for v in VARIANTS if v.name in wanted]


def _variant_config(config: Config, variant: Variant, seed: int,
                    teacher: Path | None) -> Config:
    data = config.to_dict()
    extra = [f"method={variant.method}", f"seed={seed}", f"data.split_seed={seed}"]
    if variant.method in _STUDENTS:
        extra.append(f"model.teacher={teacher}")
    for assignment in (*variant.overrides, *extra):
        apply_override(data, assignment)
    return from_dict(data)


def _mean_std(values: list[float]) -> dict[str, Any]:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "values": values}


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per variant: weighted F1 mean/std over seeds per head, mean time, parameters.

    Args:
        runs: entries of ``results.json``'s ``runs`` (``variant``, ``seconds``,
            ``parameters``, ``test`` = metrics per head).
    """
    grouped: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        grouped.setdefault(run["variant"], []).append(run)
    summary = {}
    for name, group in grouped.items():
        heads = {h: _mean_std([r["test"][h]["f1_weighted"] for r in group])
                 for h in group[0]["test"]}
        summary[name] = {"method": group[0]["method"], "seeds": [r["seed"] for r in group],
                         "f1_weighted": heads,
                         "seconds": statistics.fmean(r["seconds"] for r in group),
                         "parameters": group[0]["parameters"]}
    return summary


def _heads(summary: dict[str, dict[str, Any]]) -> list[str]:
    heads: list[str] = []
    for entry in summary.values():
        heads += [h for h in entry["f1_weighted"] if h not in heads]
    return sorted(heads, key=lambda h: (h == FUSED, heads.index(h)))  # fused last


def _cell(stats: dict[str, Any] | None) -> str:
    if stats is None:
        return "-"
    if len(stats["values"]) == 1:
        return f"{100 * stats['mean']:.1f}"
    return f"{100 * stats['mean']:.1f} ± {100 * stats['std']:.1f}"


def report_markdown(results: dict[str, Any]) -> str:
    """The Markdown report of a ``results.json`` dict: command, table, DisCoM-KD gains."""
    summary = results["summary"]
    heads = _heads(summary)
    n_seeds = len(results["seeds"])
    lines = [
        "# DisCoM-KD vs. baselines and ablations",
        "",
        "Produced by:",
        "",
        "```",
        results["command"],
        "```",
        "",
        f"Test weighted F1 (%) of each modality's own classifier, mean ± std over "
        f"{n_seeds} seed(s) {results['seeds']} (each seed: its own random 70/10/20 split and "
        f"initialisation; best validation epoch per modality). Backbone "
        f"`{results['config']['model']['backbone']}`, {results['config']['trainer']['max_epochs']}"
        f" epochs, batch {results['config']['data']['batch_size']}.",
        "",
        "| method | " + " | ".join(f"{h} F1" for h in heads)
        + " | train time (s) | parameters | what |",
        "|---" * (len(heads) + 4) + "|",
    ]
    for name, entry in summary.items():
        cells = [_cell(entry["f1_weighted"].get(h)) for h in heads]
        time = f"{entry['seconds']:.0f}" + (" + teacher" if entry["method"] in _STUDENTS else "")
        lines.append(f"| {name} | " + " | ".join(cells)
                     + f" | {time} | {entry['parameters']:,} | {_BY_NAME[name].description} |")
    lines += ["", "Parameters: trainable parameters of the trained network (KD/DKD: the "
              "students only; the frozen teacher is the `teacher` row). `fused`: the "
              "teacher's prediction from all modalities together, not a single-modality "
              "model.", ""]
    if "discomkd" in summary and "mono" in summary:
        lines.append("DisCoM-KD minus the mono-modal baseline (weighted F1 points):")
        lines.append("")
        for h in heads:
            if h in summary["discomkd"]["f1_weighted"] and h in summary["mono"]["f1_weighted"]:
                delta = (summary["discomkd"]["f1_weighted"][h]["mean"]
                         - summary["mono"]["f1_weighted"][h]["mean"])
                lines.append(f"- {h}: {100 * delta:+.1f}")
        lines.append("")
    return "\n".join(lines)


def plot_report(results: dict[str, Any], path: Path) -> None:
    """Grouped bar chart: weighted F1 per variant and head, with std error bars."""
    summary = results["summary"]
    heads = _heads(summary)
    names = list(summary)
    x = np.arange(len(names))
    width = 0.8 / len(heads)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.0 * len(names) + 2), 4.5))
    for i, h in enumerate(heads):
        stats = [summary[n]["f1_weighted"].get(h) for n in names]
        means = [100 * s["mean"] if s else np.nan for s in stats]
        stds = [100 * s["std"] if s else 0.0 for s in stats]
        ax.bar(x + (i - (len(heads) - 1) / 2) * width, means, width, yerr=stds, capsize=3,
               label=h)
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_ylabel("test weighted F1 (%)")
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(title="classifier")
    ax.set_title(f"mean ± std over {len(results['seeds'])} seed(s)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _write_json(results: dict[str, Any], path: Path) -> None:
    with atomic_path(path, overwrite=True) as tmp:
        tmp.write_text(json.dumps(results, indent=2))


def compare(config: Config, out: str | Path, seeds: int = 3,
            methods: Sequence[str] | None = None, overwrite: bool = False,
            command: str | None = None, progress: bool = False,
            echo: Callable[[str], Any] = print) -> dict[str, Any]:
    """Train every selected variant for every seed and write the report.

    Args:
        config: the shared experiment (data root, model, budget); ``method`` is ignored.
        out: report directory (layout in the module docstring).
        seeds: number of seeds; seed ``i`` is ``config.seed + i``.
        methods: variant names to train (default: all of :data:`VARIANTS`).
        overwrite: replace a non-empty ``out``.
        command: the command line to record in the report (default: the Python call).
        progress: show Lightning's progress bars.
        echo: receives one line per finished run.

    Returns:
        the ``results.json`` content.

    Raises:
        OutputExistsError: ``out`` is not empty and ``overwrite`` is false.
        ConfigError: unknown method name or seeds < 1.
    """
    if seeds < 1:
        raise ConfigError("--seeds", f"expected at least 1, got {seeds}")
    variants = select_variants(methods)
    out = check_writable(out, overwrite)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    seed_values = [config.seed + i for i in range(seeds)]
    results: dict[str, Any] = {
        "command": command or f"compare(config, {str(out)!r}, seeds={seeds}, "
                              f"methods={[v.name for v in variants]})",
        "config": config.to_dict(), "seeds": seed_values,
        "variants": {v.name: {"method": v.method, "overrides": list(v.overrides),
                              "description": v.description} for v in variants},
        "runs": [], "summary": {},
    }
    total = len(variants) * seeds
    for s_index, seed in enumerate(seed_values):
        teacher: Path | None = None
        for v_index, variant in enumerate(variants):
            run_dir = out / "runs" / variant.name / f"seed{seed}"
            result = train(_variant_config(config, variant, seed, teacher), run_dir,
                           overwrite=True, progress=progress)
            if variant.method == "teacher":
                teacher = result.checkpoints[FUSED]
            results["runs"].append({
                "variant": variant.name, "method": variant.method, "seed": seed,
                "run_dir": str(run_dir.relative_to(out)), "seconds": result.seconds,
                "parameters": result.parameters, "test": result.metrics,
            })
            results["summary"] = summarize(results["runs"])
            _write_json(results, out / "results.json")
            scores = ", ".join(f"{h} {100 * m['f1_weighted']:.1f}"
                               for h, m in result.metrics.items())
            echo(f"[{s_index * len(variants) + v_index + 1}/{total}] {variant.name} seed {seed}:"
                 f" weighted F1 {scores} ({result.seconds:.0f} s)")
    with atomic_path(out / "report.md", overwrite=True) as tmp:
        tmp.write_text(report_markdown(results))
    plot_report(results, out / "f1.png")
    return results


def command_line(argv: Sequence[str]) -> str:
    """The shell command that reproduces a ``discomkd-geo`` invocation."""
    return shlex.join(["discomkd-geo", *argv])
