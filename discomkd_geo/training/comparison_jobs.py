"""Running a comparison's training runs: one job per run, in order, as dependencies allow.

Used by :mod:`discomkd_geo.training.compare`. A :class:`Pending` run waits for the runs
it needs (a student for its teacher); :func:`run_all` trains them in list order, in this
process or in up to ``jobs`` worker processes, and hands each :class:`RunRecord` to a
callback as soon as it finishes.
"""

import os
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from ..config import from_dict
from ..constants import SAR
from .comparison_results import DIAGNOSTICS, Key, RunRecord
from .map_score import NO_MAP_SCORE, MapScore, score_run
from .plots import read_epoch_log
from .train import train


@dataclass(frozen=True)
class Job:
    """One run to train: its comparison key, its full config and its directory.

    ``scenes`` are the held-out scenes its SAR head maps, as ``map_score`` says (none:
    no map score).
    """

    variant: str
    seed: int
    lr: float
    config: dict[str, Any]
    run_dir: Path
    map_score: MapScore = NO_MAP_SCORE
    scenes: tuple[Path, ...] = ()


def run_job(job: Job, threads: int | None) -> RunRecord:
    """Train one run and read back what the report needs (runs in a worker process).

    Args:
        job: the run.
        threads: torch threads (``None``: leave torch's default).

    Returns:
        the run's record, ``run_dir`` as given (absolute or not); with the job's
        scenes, head ``sar`` also holds the map score (:func:`.map_score.score_run`).
    """
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    start = time.perf_counter()
    result = train(from_dict(job.config), job.run_dir, overwrite=True, progress=False)
    test = result.metrics
    if job.scenes and SAR in test:
        test = {**test, SAR: {**test[SAR], **score_run(job.run_dir, list(job.scenes),
                                                       job.map_score, threads)}}
    wall = time.perf_counter() - start
    log = read_epoch_log(job.run_dir / "logs" / "metrics.csv")
    heads = list(result.metrics)
    curves = {h: [v for _, v in log[f"val/{h}/f1_weighted"]] for h in heads}
    return RunRecord(
        variant=job.variant, method=job.config["method"], seed=job.seed, lr=job.lr,
        run_dir=str(job.run_dir), seconds=result.seconds, wall=wall,
        epochs=len(curves[heads[0]]), parameters=result.parameters,
        val_best={h: max(c) for h, c in curves.items()}, val_curve=curves,
        test=test,
        diagnostics={k: [v for _, v in log[k]] for k in DIAGNOSTICS if k in log})


@dataclass(frozen=True)
class Pending:
    """A run waiting for others: its key, the runs it needs, and how to make its job.

    The job is made only once its dependencies are done (a student's teacher path depends
    on the teacher's chosen rate).
    """

    key: Key
    after: tuple[Key, ...]
    make: Callable[[], Job]


def run_all(pending: list[Pending], finished: set[Key], jobs: int,
            done: Callable[[RunRecord], None]) -> None:
    """Run every pending item not yet finished, in list order as dependencies allow.

    At most ``jobs`` runs are in flight, so earlier items (earlier seeds) finish first
    and an interrupted comparison leaves whole seeds behind. ``finished`` grows with
    every run done.
    """
    todo = [p for p in pending if p.key not in finished]

    def next_ready() -> Pending | None:
        for p in todo:
            if all(k in finished for k in p.after):
                todo.remove(p)
                return p
        return None

    if jobs == 1:
        while (item := next_ready()) is not None:
            done(run_job(item.make(), None))
            finished.add(item.key)
        return
    # Each worker leads its own session, hence its own scheduler autogroup on Linux:
    # parallel runs then get the CPU share of as many separate commands.
    with ProcessPoolExecutor(jobs, mp_context=get_context("spawn"),
                             initializer=os.setsid) as pool:
        running: dict[Future[RunRecord], Key] = {}
        while todo or running:
            while len(running) < jobs and (item := next_ready()) is not None:
                running[pool.submit(run_job, item.make(), 1)] = item.key
            if not running:
                raise RuntimeError(f"unsatisfiable dependencies: {[p.key for p in todo]}")
            finished_now, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished_now:
                key = running.pop(future)
                done(future.result())
                finished.add(key)
