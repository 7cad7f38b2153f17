"""Train DisCoM-KD, its baselines and its ablations alike, and report how they compare.

Behind ``discomkd-geo compare``. The protocol is built to decide, not only to run:

* **Same budget, converged**: every run trains until none of its heads has improved its
  validation weighted F1 for ``patience`` epochs (at most ``trainer.max_epochs``;
  ``trainer.early_stopping_rule``); each head keeps its best validation epoch, as the
  paper selects. Validation curves are recorded so the plateau can be checked.
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
* **On the product** (``map_score``, off by default): every run with a SAR head maps
  held-out synthetic scenes from SAR alone with the inference engine
  (:mod:`.map_score`); the report gives map OA and edge OA (within 3 px of a class
  boundary) per method with 95% t intervals, and DisCoM-KD minus each other row, paired
  by seed, on both: does training with MS make the SAR-only *map* better?
* **Diagnostics**: DisCoM-KD runs log the discriminator's accuracy, the gradient norm the
  GRL sends to ``z_inv`` relative to L_cl's, and the norm of ``z_inv`` per epoch.

Per seed the late-fusion teacher (at its chosen rate) trains before the KD/DKD students
distilled from it. Runs are independent processes when ``jobs > 1`` (one torch thread
each). The report directory holds::

    REPORT/runs/<variant>/lr<lr>/seed<i>/  one ordinary run directory per run (with a
                          map score: also maps/, map_score.json with per-scene figures)
    REPORT/scenes/scene<seed>/  the held-out scenes of the map score (if asked)
    REPORT/results.json   config, seeds, grid, chosen rates, every run (test metrics, best
                          validation score, validation curve, diagnostics, epochs, time)
                          and the summary; the report is regenerated from it alone
                          (:func:`regenerate`)
    REPORT/report.md      tables: F1 mean ± std, paired differences, chosen rates, epochs
                          (and map OA / edge OA with intervals and paired differences)
    REPORT/f1.png         F1 per method and head with 95% intervals
    REPORT/maps.png       the same for the map score (--map-scenes), when there is one
    REPORT/val_curves.png validation weighted F1 per epoch (every run at its chosen rate)
    REPORT/diagnostics.png  discriminator accuracy, GRL/L_cl gradient ratio, |z_inv|

The code is in four modules: this one (the protocol: variants, learning-rate choice, the
order of the runs), :mod:`.comparison_jobs` (training one run, running many in worker
processes), :mod:`.comparison_results` (what ``results.json`` holds, as frozen
dataclasses, and the summary over seeds) and :mod:`.comparison_report` (Markdown and
figures).

Adding a per-run metric (as the map score is added): compute it in
:func:`.comparison_jobs.run_job` and store it with the run's test scores,
``RunRecord.test[head]["<name>"]`` (``results.json`` keeps it; older files simply lack
it), then add ``"<name>": "<title>"`` to :data:`.comparison_results.SUMMARY_METRICS`:
the summary then gives its mean ± std and 95% t interval per method and head, and the
report a table of it (with its 95% t intervals). Paired differences are computed for
:data:`.comparison_results.PAIRED_METRICS` (weighted F1 and the map score); the
learning-rate choice stays on :data:`.comparison_results.PRIMARY` (weighted F1).
"""

import shlex
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..config import Config, apply_override, from_dict
from ..errors import ResumeError, SettingsError
from ..files import check_writable
from ..logs import log
from .baselines import FUSED
from .comparison_jobs import Job, Pending, run_all
from .comparison_report import write_report
from .comparison_results import (
    STUDENT_METHODS,
    ComparisonResults,
    Key,
    RunRecord,
    VariantInfo,
    lr_name,
)
from .map_score import NO_MAP_SCORE, MapScore, make_scenes


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
#: Trained when no methods are named: everything but DKD (available with --methods).
DEFAULT_METHODS = tuple(v.name for v in VARIANTS if v.name != "dkd")
#: Learning-rate grid searched per method (Adam).
DEFAULT_LRS = (3e-4, 1e-3, 3e-3)
#: ``--quick``: a small end-to-end check of the whole protocol (the test suite runs it).
QUICK: dict[str, Any] = {
    "seeds": 2, "lrs": (1e-3, 3e-3), "patience": 1, "methods": ("mono", "discomkd"),
    "overrides": ("model.backbone=small_cnn", "model.width=4", "data.batch_size=16",
                  "data.num_workers=0",
                  "trainer.max_epochs=2"),
}


def select_variants(names: Sequence[str] | None) -> list[Variant]:
    """The variants to train, in training order; KD/DKD bring in their teacher.

    Args:
        names: variant names (see :data:`VARIANTS`); ``None`` or empty:
            :data:`DEFAULT_METHODS`. An ablation brings in the variant it is tuned by.

    Raises:
        SettingsError: an unknown name (``param``: ``methods``).
    """
    wanted = set(names or DEFAULT_METHODS)
    unknown = sorted(wanted - set(_BY_NAME))
    if unknown:
        raise SettingsError("methods", f"unknown method(s) {unknown}; "
                                       f"expected some of {list(_BY_NAME)}")
    if wanted & STUDENT_METHODS:
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
    if variant.method in STUDENT_METHODS:
        extra.append(f"model.teacher={teacher}")
    for assignment in (*variant.overrides, *extra):
        apply_override(data, assignment)
    return from_dict(data)


def choose_lrs(runs: Iterable[RunRecord], seed: int) -> dict[str, dict[str, float]]:
    """Per variant and head, the rate with the best validation score on ``seed``.

    Ties (common where a head saturates its small validation split, e.g. MS at 100%) are
    broken without looking at anything else: heads with fewer best rates choose first,
    and a tied head takes a rate another head of the method already chose (one run then
    serves both), else the smallest.
    """
    scores: dict[str, dict[str, dict[float, float]]] = {}
    for run in runs:
        if run.seed == seed:
            for h, score in run.val_best.items():
                scores.setdefault(run.variant, {}).setdefault(h, {})[run.lr] = score
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


def tuning_scores(runs: Iterable[RunRecord], seed: int,
                  tuned: set[str]) -> dict[str, dict[str, dict[str, float]]]:
    """Per tuned variant and head, the best validation score of each rate on ``seed``."""
    tuning: dict[str, dict[str, dict[str, float]]] = {}
    for r in runs:
        if r.seed == seed and r.variant in tuned:
            scores = tuning.setdefault(r.variant, {})
            for h, score in r.val_best.items():
                scores.setdefault(h, {})[lr_name(r.lr)] = score
    return tuning


def _stages(variants: list[Variant]) -> list[list[Variant]]:
    """Variants in two stages: the teacher before the students distilled from it."""
    return [[v for v in variants if v.method not in STUDENT_METHODS],
            [v for v in variants if v.method in STUDENT_METHODS]]


class _Comparison:
    """One comparison under way: its results so far, saved after every run.

    Args:
        results: the results to extend (recorded runs of a resumed comparison included).
        config: the shared experiment.
        variants: the rows to train.
        out: report directory.
        elapsed: wall seconds already spent (resumed comparison).
        echo: receives one line per finished run.
    """

    def __init__(self, results: ComparisonResults, config: Config, variants: list[Variant],
                 out: Path, elapsed: float, echo: Callable[[str], Any]) -> None:
        self.results = results
        self.config = config
        self.variants = variants
        self.out = out
        self.start = time.perf_counter() - elapsed
        self.echo = echo
        self.tune_seed = results.seeds[0]
        self.finished: set[Key] = {r.key for r in results.runs}
        self.map_score = results.map_score or NO_MAP_SCORE
        self.scenes = tuple(make_scenes(self.map_score, out / "scenes"))

    def record(self, run: RunRecord) -> None:
        """Keep a finished run (its directory relative to the report), save, and say so."""
        run = replace(run, run_dir=str(Path(run.run_dir).relative_to(self.out)))
        self.results = self.results.with_run(run, time.perf_counter() - self.start)
        self.results.save(self.out / "results.json")
        scores = ", ".join(f"{h} {100 * m['f1_weighted']:.1f}" for h, m in run.test.items())
        self.echo(f"[{len(self.results.runs)}] {run.variant} lr {run.lr:g} seed {run.seed}: "
                  f"test weighted F1 {scores}, {run.epochs} epochs ({run.wall:.0f} s)")

    def _job(self, variant: Variant, seed: int, lr: float) -> Job:
        teacher = None
        if variant.method in STUDENT_METHODS:
            if "teacher" not in self.results.chosen_lr:  # all teacher rates are done
                chosen = {**self.results.chosen_lr,
                          "teacher": choose_lrs(self.results.runs, self.tune_seed)["teacher"]}
                self.results = replace(self.results, chosen_lr=chosen)
            t_lr = self.results.chosen_lr["teacher"][FUSED]
            teacher = self.out / "runs" / "teacher" / lr_name(t_lr) / f"seed{seed}"
        cfg = _variant_config(self.config, variant, seed, teacher, lr, self.results.patience)
        return Job(variant.name, seed, lr, cfg.to_dict(),
                   self.out / "runs" / variant.name / lr_name(lr) / f"seed{seed}",
                   self.map_score, self.scenes)

    def _pending(self, v: Variant, seed: int, lr: float) -> Pending:
        after: tuple[Key, ...] = ()
        if v.method in STUDENT_METHODS:
            if seed == self.tune_seed and "teacher" not in self.results.chosen_lr:
                # the teacher's rate is chosen once all of them are done
                after = tuple(("teacher", seed, t_lr) for t_lr in self.results.lrs)
            else:
                after = (("teacher", seed, self.results.chosen_lr["teacher"][FUSED]),)
        return Pending((v.name, seed, lr), after, lambda: self._job(v, seed, lr))

    def tune(self, jobs: int) -> None:
        """Train the grid on the first seed, then choose every variant's rates."""
        tuned = [v for v in self.variants if v.tuned_by is None]
        run_all([self._pending(v, self.tune_seed, lr) for v in tuned for lr in self.results.lrs],
                self.finished, jobs, self.record)
        chosen = choose_lrs(self.results.runs, self.tune_seed)
        for v in self.variants:
            if v.tuned_by is not None:
                chosen[v.name] = dict(chosen[v.tuned_by])
        tuning = tuning_scores(self.results.runs, self.tune_seed, {v.name for v in tuned})
        self.results = replace(self.results, chosen_lr=chosen, tuning=tuning)

    def train_seeds(self, jobs: int) -> None:
        """Train every variant at its chosen rates on every seed, seed by seed."""
        run_all([self._pending(v, seed, lr) for seed in self.results.seeds
                 for stage in _stages(self.variants) for v in stage
                 for lr in sorted(set(self.results.chosen_lr[v.name].values()))],
                self.finished, jobs, self.record)


def _start(results: ComparisonResults, out: Path, overwrite: bool,
           resume: bool) -> tuple[ComparisonResults, float]:
    """The results to extend and the wall seconds spent: resumed, or a fresh ``out``."""
    if resume and (out / "results.json").exists():
        previous = ComparisonResults.load(out / "results.json")
        for key in ("config", "seeds", "lrs", "patience", "map_score"):
            if getattr(previous, key) != getattr(results, key):
                raise ResumeError(out / "results.json", f"made with another {key}; "
                                  "resume=True needs the same protocol", param="resume")
        runs = tuple(r for r in previous.runs if r.variant in results.variants)
        return replace(results, runs=runs), previous.wall_seconds
    out = check_writable(out, overwrite)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    return results, 0.0


def compare(config: Config, out: str | Path, seeds: int = 5,
            methods: Sequence[str] | None = None, lrs: Sequence[float] = DEFAULT_LRS,
            patience: int = 5, jobs: int = 1, overwrite: bool = False, resume: bool = False,
            command: str | None = None, map_score: MapScore = NO_MAP_SCORE,
            echo: Callable[[str], Any] = log.info) -> ComparisonResults:
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
        map_score: whether and how every run with a SAR head maps held-out scenes
            (default: not at all; see :mod:`.map_score`).
        echo: receives one line per finished run.

    Returns:
        what ``results.json`` holds.

    Raises:
        OutputExistsError: ``out`` is not empty and neither ``overwrite`` nor ``resume``.
        SettingsError: unknown method name, seeds, jobs or patience < 1, or an empty
            grid (``param`` names the argument).
        ResumeError: ``resume`` with another protocol than the recorded one.
    """
    for name, value in (("seeds", seeds), ("jobs", jobs), ("patience", patience)):
        if value < 1:
            raise SettingsError(name, f"expected at least 1, got {value}")
    if not lrs:
        raise SettingsError("lrs", "expected at least one learning rate")
    variants = select_variants(methods)
    grid = sorted(float(lr) for lr in lrs)
    results = ComparisonResults(
        command=command or f"compare(config, {str(out)!r}, seeds={seeds}, "
                           f"methods={[v.name for v in variants]}, lrs={grid})",
        config=config.to_dict(), seeds=[config.seed + i for i in range(seeds)], lrs=grid,
        patience=patience,
        variants={v.name: VariantInfo(v.method, list(v.overrides), v.description)
                  for v in variants},
        map_score=map_score if map_score.scenes else None)
    out = Path(out)
    results, elapsed = _start(results, out, overwrite, resume)
    run = _Comparison(results, config, variants, out, elapsed, echo)
    run.tune(jobs)
    run.train_seeds(jobs)
    results = replace(run.results, wall_seconds=time.perf_counter() - run.start)
    results.save(out / "results.json")
    write_report(results, out)
    return results


def regenerate(out: str | Path) -> ComparisonResults:
    """Rewrite the report, the figures and the summary of ``results.json`` from its runs.

    Raises:
        InputFileError: no readable ``results.json`` in ``out``.
    """
    path = Path(out) / "results.json"
    results = ComparisonResults.load(path)
    write_report(results, Path(out))
    results.save(path)
    return results


def command_line(argv: Sequence[str]) -> str:
    """The shell command that reproduces a ``discomkd-geo`` invocation."""
    return shlex.join(["discomkd-geo", *argv])
