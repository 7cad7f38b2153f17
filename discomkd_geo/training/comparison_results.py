"""What a comparison records (``results.json``), typed, and the summary derived from it.

:class:`ComparisonResults` is the whole file: the protocol, the learning-rate search and
one :class:`RunRecord` per trained run. The :class:`Summary` (means over seeds, t
intervals, paired differences) is derived from the runs whenever the file is written,
so it is never stale; reading a file ignores the summary stored in it. ``to_json`` and
``from_json`` keep the layout of the files written before these types existed.

A run's test metrics are ``RunRecord.test[head][metric]``: whatever the run's own test
recorded, plus anything :func:`~discomkd_geo.training.comparison_jobs.run_job` adds.
Every metric named in :data:`SUMMARY_METRICS` is summarised per method and head
(see :mod:`discomkd_geo.training.compare` for adding one).
"""

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ..errors import InputFileError
from ..files import atomic_path
from .map_score import MAP_METRICS, MapScore
from .stats import mean_std, paired_difference, t_interval

#: Per-epoch diagnostics of DisCoM-KD runs (logged by DisCoMKDTask).
DIAGNOSTICS = ("diag/disc_acc", "diag/grl_ratio", "diag/z_inv_norm")
#: Test metrics summarised per method and head, and the report's name for each.
SUMMARY_METRICS: dict[str, str] = {
    "f1_weighted": "weighted F1",
    "map_oa": "SAR-only map OA (held-out scenes)",
    "map_edge_oa": "SAR-only map OA within 3 px of a class boundary (held-out scenes)"}
#: The metric of the learning-rate search: the paper's.
PRIMARY = "f1_weighted"
#: Metrics of the paired differences: the primary one, and the map-level score of
#: :mod:`.map_score` where the runs have it.
PAIRED_METRICS = (PRIMARY, *MAP_METRICS)
#: The method every other row is compared with.
REFERENCE = "discomkd"
#: Methods distilled from a trained teacher (their time excludes the teacher's).
STUDENT_METHODS = frozenset({"kd", "dkd"})

Key = tuple[str, int, float]  # (variant, seed, lr): one run


def lr_name(lr: float) -> str:
    """A learning rate as it names run directories and tuning entries, e.g. ``lr0.001``."""
    return f"lr{lr:g}"


@dataclass(frozen=True)
class RunRecord:
    """One trained run, as the report needs it.

    Attributes:
        variant: comparison row (see :data:`~discomkd_geo.training.compare.VARIANTS`).
        method: its training method.
        seed: split and initialisation seed.
        lr: learning rate.
        run_dir: the run directory, relative to the report directory.
        seconds: training time (Lightning's fit).
        wall: wall time of the whole run (data set-up and tests included).
        epochs: epochs trained before early stopping.
        parameters: trainable parameters.
        val_best: per head, the best validation weighted F1.
        val_curve: per head, the validation weighted F1 of every epoch.
        test: per head and metric, the test score of the head's best checkpoint.
        diagnostics: per :data:`DIAGNOSTICS` key the run logged, its value per epoch.
    """

    variant: str
    method: str
    seed: int
    lr: float
    run_dir: str
    seconds: float
    wall: float
    epochs: int
    parameters: int
    val_best: dict[str, float]
    val_curve: dict[str, list[float]]
    test: dict[str, dict[str, float]]
    diagnostics: dict[str, list[float]]

    @property
    def key(self) -> Key:
        """What identifies the run in a comparison."""
        return self.variant, self.seed, self.lr

    def to_json(self) -> dict[str, Any]:
        """The run's entry in ``results.json``."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "RunRecord":
        """Inverse of :meth:`to_json` (extra keys are ignored)."""
        return cls(**{f.name: data[f.name] for f in fields(cls)})


@dataclass(frozen=True)
class VariantInfo:
    """A comparison row as ``results.json`` records it."""

    method: str
    overrides: list[str]
    description: str


@dataclass(frozen=True)
class Scores:
    """One metric of one method and head over the seeds at the chosen rate.

    Attributes:
        mean: mean over seeds.
        std: sample standard deviation (0 for one seed).
        values: one score per seed.
        seeds: the seeds, in the order of ``values``.
        lr: the head's chosen learning rate.
        low: lower bound of the 95% t interval of the mean (``None`` below two seeds).
        high: upper bound.
    """

    mean: float
    std: float
    values: list[float]
    seeds: list[int]
    lr: float
    low: float | None
    high: float | None


@dataclass(frozen=True)
class MethodSummary:
    """One comparison row, summarised over seeds.

    Attributes:
        method: training method.
        scores: per :data:`SUMMARY_METRICS` metric and head, its :class:`Scores`.
        epochs: ``mean``, ``std`` and ``values`` of the epochs of its runs.
        seconds: the same for the wall time of its runs.
        parameters: trainable parameters.
    """

    method: str
    scores: dict[str, dict[str, Scores]]
    epochs: dict[str, Any]
    seconds: dict[str, Any]
    parameters: int

    def to_json(self) -> dict[str, Any]:
        """Each metric under its own name, between ``method`` and ``epochs``."""
        return {"method": self.method,
                **{m: {h: asdict(s) for h, s in per_head.items()}
                   for m, per_head in self.scores.items()},
                "epochs": self.epochs, "seconds": self.seconds, "parameters": self.parameters}


@dataclass(frozen=True)
class Summary:
    """What the report shows: per method its scores, and the paired differences.

    Attributes:
        methods: per variant with runs, its :class:`MethodSummary`.
        differences: per variant and head, :data:`REFERENCE` minus the variant on
            :data:`PRIMARY`, paired by seed (:func:`~.stats.paired_difference` plus
            ``seeds``); only seeds both have finished.
        more_differences: the same for the other :data:`PAIRED_METRICS`, per metric
            (only those some runs have).
    """

    methods: dict[str, MethodSummary] = field(default_factory=dict)
    differences: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    more_differences: dict[str, dict[str, dict[str, dict[str, Any]]]] = field(
        default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The ``summary`` entry of ``results.json`` (files without map scores: as before)."""
        more = {f"differences_{m}": d for m, d in self.more_differences.items()}
        return {"methods": {n: m.to_json() for n, m in self.methods.items()},
                "differences": self.differences, **more}


@dataclass(frozen=True)
class ComparisonResults:
    """Everything a comparison records; the report is made from it alone.

    Attributes:
        command: the command line that made it.
        config: the shared experiment config.
        seeds: the paired seeds; the first tunes the learning rates.
        lrs: the learning-rate grid.
        patience: early-stopping patience in epochs.
        variants: the rows, in training order.
        tuning: per tuned variant and head, the best validation score per rate
            (keys :func:`lr_name`) on the first seed.
        chosen_lr: per variant and head, the rate its runs use.
        runs: every finished run, in the order they finished.
        wall_seconds: wall time of the comparison so far.
        map_score: how maps were scored (``None``: they were not; files written before
            map scores have no such entry).
    """

    command: str
    config: dict[str, Any]
    seeds: list[int]
    lrs: list[float]
    patience: int
    variants: dict[str, VariantInfo]
    tuning: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    chosen_lr: dict[str, dict[str, float]] = field(default_factory=dict)
    runs: tuple[RunRecord, ...] = ()
    wall_seconds: float = 0.0
    map_score: MapScore | None = None

    def selected_runs(self) -> dict[str, dict[str, list[RunRecord]]]:
        """Per variant and head, the run at the chosen rate of every seed, in seed order."""
        by_key = {r.key: r for r in self.runs}
        out: dict[str, dict[str, list[RunRecord]]] = {}
        for variant, heads in self.chosen_lr.items():
            for h, lr in heads.items():
                picked = [by_key.get((variant, seed, lr)) for seed in self.seeds]
                out.setdefault(variant, {})[h] = [r for r in picked if r is not None]
        return out

    def summary(self) -> Summary:
        """See :func:`summarize`."""
        return summarize(self)

    def to_json(self) -> dict[str, Any]:
        """The content of ``results.json`` (the summary derived now from the runs)."""
        return {"command": self.command, "config": self.config, "seeds": self.seeds,
                "lrs": self.lrs, "patience": self.patience,
                "variants": {n: asdict(v) for n, v in self.variants.items()},
                "tuning": self.tuning, "chosen_lr": self.chosen_lr,
                "runs": [r.to_json() for r in self.runs], "wall_seconds": self.wall_seconds,
                **({} if self.map_score is None else {"map_score": self.map_score.to_json()}),
                "summary": self.summary().to_json()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ComparisonResults":
        """Inverse of :meth:`to_json`; the stored summary is not read."""
        return cls(command=data["command"], config=data["config"], seeds=data["seeds"],
                   lrs=data["lrs"], patience=data["patience"],
                   variants={n: VariantInfo(**v) for n, v in data["variants"].items()},
                   tuning=data["tuning"], chosen_lr=data["chosen_lr"],
                   runs=tuple(RunRecord.from_json(r) for r in data["runs"]),
                   wall_seconds=data.get("wall_seconds", 0.0),
                   map_score=MapScore(**data["map_score"]) if "map_score" in data else None)

    def with_run(self, run: RunRecord, wall_seconds: float) -> "ComparisonResults":
        """These results with one more finished run."""
        return replace(self, runs=(*self.runs, run), wall_seconds=wall_seconds)

    def save(self, path: Path) -> None:
        """Write ``results.json`` atomically."""
        with atomic_path(path, overwrite=True) as tmp:
            tmp.write_text(json.dumps(self.to_json(), indent=2))

    @classmethod
    def load(cls, path: Path) -> "ComparisonResults":
        """Read a ``results.json``.

        Raises:
            InputFileError: the file is missing, not JSON, or not comparison results.
        """
        try:
            return cls.from_json(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError) as err:
            raise InputFileError(path, f"cannot read the comparison results ({err})") from err
        except (KeyError, TypeError) as err:
            raise InputFileError(path, f"cannot read the comparison results (not a "
                                       f"results.json of compare: {err!r})") from err


def _scores(runs: list[RunRecord], head: str, metric: str, lr: float) -> Scores:
    values = [r.test[head][metric] for r in runs]
    stats = mean_std(values)
    low, high = t_interval(values)
    return Scores(stats["mean"], stats["std"], values, [r.seed for r in runs], lr, low, high)


def _differences(results: ComparisonResults, picked: dict[str, dict[str, list[RunRecord]]],
                 metric: str) -> dict[str, Any]:
    """Per variant and head, :data:`REFERENCE` minus it on ``metric``, paired by seed."""
    differences: dict[str, dict[str, dict[str, Any]]] = {}
    for variant, heads in picked.items():
        if variant == REFERENCE:
            continue
        for h, rs in heads.items():
            ref = {r.seed: r.test[h][metric] for r in picked[REFERENCE].get(h, [])
                   if metric in r.test[h]}
            other = {r.seed: r.test[h][metric] for r in rs if metric in r.test[h]}
            seeds = [s for s in results.seeds if s in ref and s in other]
            if seeds:
                differences.setdefault(variant, {})[h] = {
                    **paired_difference([ref[s] for s in seeds], [other[s] for s in seeds]),
                    "seeds": seeds}
    return differences


def summarize(results: ComparisonResults) -> Summary:
    """Per variant and head: test scores over seeds, epochs, time; paired differences.

    Only seeds both variants have finished enter the paired differences; a metric a run
    lacks (a results.json older than the metric, a compare without map scores) is left
    out of that head's scores and differences, and a metric no head has is left out.
    """
    picked = results.selected_runs()
    methods: dict[str, MethodSummary] = {}
    for variant, heads in picked.items():
        runs = [r for rs in heads.values() for r in rs]
        if not runs:
            continue
        scores = {m: {h: _scores(rs, h, m, results.chosen_lr[variant][h])
                      for h, rs in heads.items() if rs and all(m in r.test[h] for r in rs)}
                  for m in SUMMARY_METRICS}
        scores = {m: s for m, s in scores.items() if s or m == PRIMARY}  # as older files
        unique = {(r.seed, r.lr): r for r in runs}.values()
        methods[variant] = MethodSummary(
            runs[0].method, scores, mean_std([float(r.epochs) for r in unique]),
            mean_std([r.wall for r in unique]), runs[0].parameters)
    if REFERENCE not in picked:
        return Summary(methods)
    more = {m: _differences(results, picked, m) for m in PAIRED_METRICS if m != PRIMARY}
    return Summary(methods, _differences(results, picked, PRIMARY),
                   {m: d for m, d in more.items() if d})
