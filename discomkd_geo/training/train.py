"""Run a training experiment from a :class:`~discomkd_geo.config.Config` into a run directory.

Called by ``discomkd-geo train`` (and by ``compare`` for every method). Lightning does the
loop, so users get checkpointing, resume, mixed precision, multi-GPU and loggers from the
config's ``trainer`` section. A run directory holds::

    RUN/config.yaml             the resolved configuration
    RUN/stats/<modality>.json   normalisation statistics of the training split
    RUN/checkpoints/best-<m>.ckpt  best epoch per modality (validation weighted F1),
                                the paper's per-modality model selection
    RUN/checkpoints/last.ckpt   for --resume
    RUN/logs/metrics.csv        every logged value (TensorBoard too when installed)
    RUN/metrics.json            test metrics per modality, each with its best checkpoint
    RUN/plots/*.png             loss terms, F1 curves, confusion matrices
"""

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import yaml
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger

from .._io import check_writable
from ..config import Config
from ..data.datamodule import MSSARDataModule
from .baselines import DKDTask, KDTask, MonoTask, TeacherTask
from .module import DisCoMKDTask, MultiModalTask
from .plots import plot_run
from .progress import TrainingProgress

#: Training method name -> task class (``kd``/``dkd`` need a teacher: see ``build_task``).
TASKS: dict[str, type[MultiModalTask]] = {
    "discomkd": DisCoMKDTask, "mono": MonoTask, "teacher": TeacherTask, "kd": KDTask,
    "dkd": DKDTask,
}


@dataclass
class TrainResult:
    """What a finished run produced.

    Attributes:
        run_dir: the run directory.
        checkpoints: best checkpoint per head (each predictable modality; ``fused`` for
            the multi-modal teacher).
        metrics: test metrics per head (``f1_weighted``, ``f1_macro``, ``oa``).
        seconds: wall-clock training time (fit only).
        parameters: trainable parameter count of the trained network.
    """

    run_dir: Path
    checkpoints: dict[str, Path]
    metrics: dict[str, dict[str, float]]
    seconds: float
    parameters: int


def data_info(dm: MSSARDataModule) -> dict[str, Any]:
    """The DataModule facts a task stores in its checkpoints (JSON-able)."""
    return {
        "modalities": {m: list(b) for m, b in dm.modalities.items()},
        "stats": {m: s.to_dict() for m, s in dm.stats.items()},
        "classes": list(dm.classes),
        "colors": [list(c) for c in dm.colors],
        "patch_size": int(dm.patch_size),
        "pixel_size": dm.pixel_size,
        "units": dict(dm.units),
    }


def _loggers(run_dir: Path) -> list[Logger]:
    loggers: list[Logger] = [CSVLogger(run_dir, name="logs", version="")]
    try:  # TensorBoard is optional (pip install discomkd-geo[tensorboard])
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(run_dir, name="logs", version="tensorboard"))
    except ModuleNotFoundError:
        pass
    return loggers


def _callbacks(config: Config, task: MultiModalTask, run_dir: Path) -> list[Callback]:
    ckpt_dir = run_dir / "checkpoints"
    callbacks: list[Callback] = [
        ModelCheckpoint(dirpath=ckpt_dir, filename=f"best-{m}", monitor=f"val/{m}/f1_weighted",
                        mode="max", save_top_k=1, auto_insert_metric_name=False,
                        enable_version_counter=False)
        for m in task.heads
    ]
    callbacks.append(ModelCheckpoint(dirpath=ckpt_dir, filename="last", save_top_k=0,
                                     save_last=True, enable_version_counter=False))
    patience = config.trainer.early_stopping_patience
    if patience is not None:
        first = task.heads[0]
        callbacks.append(EarlyStopping(monitor=f"val/{first}/f1_weighted", mode="max",
                                       patience=patience))
    return callbacks


def _prepare_run_dir(run_dir: Path, overwrite: bool, resume: bool) -> None:
    if not resume:
        check_writable(run_dir, overwrite)
        if run_dir.exists():
            shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)


def train(config: Config, run_dir: str | Path, overwrite: bool = False, resume: bool = False,
          progress: bool = True,
          build_task: Callable[[Config, dict[str, Any]], MultiModalTask] | None = None,
          ) -> TrainResult:
    """Train ``config.method`` and evaluate each modality's best checkpoint on the test split.

    Args:
        config: the experiment.
        run_dir: output directory (see the module docstring for its layout).
        overwrite: replace an existing non-empty ``run_dir``.
        resume: continue from ``run_dir/checkpoints/last.ckpt``.
        progress: report progress: a bar on a terminal, a line every few epochs in a log.
        build_task: custom task factory (the comparison uses it to hand a trained teacher
            to distillation baselines); default: ``TASKS[config.method]``.

    Raises:
        OutputExistsError: ``run_dir`` is not empty and neither ``overwrite`` nor ``resume``.
        DiscomkdGeoError: bad data or configuration (one-line message).
    """
    run_dir = Path(run_dir)
    _prepare_run_dir(run_dir, overwrite, resume)
    L.seed_everything(config.seed, workers=True, verbose=False)
    dm = MSSARDataModule(config.data, seed=config.seed)
    dm.setup("fit")
    info = data_info(dm)
    (run_dir / "stats").mkdir(exist_ok=True)
    for m, stats in dm.stats.items():
        stats.save_json(run_dir / "stats" / f"{m}.json")
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))

    if build_task is None:
        task = TASKS[config.method](config.to_dict(), info)
    else:
        task = build_task(config, info)
    tc = config.trainer
    callbacks = _callbacks(config, task, run_dir)
    if progress:
        callbacks.append(TrainingProgress(task.heads))
    trainer = L.Trainer(
        max_epochs=tc.max_epochs, accelerator=tc.accelerator, devices=tc.devices,
        precision=tc.precision, limit_train_batches=tc.limit_train_batches,
        log_every_n_steps=tc.log_every_n_steps, default_root_dir=run_dir,
        callbacks=callbacks, logger=_loggers(run_dir),
        enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    last = run_dir / "checkpoints" / "last.ckpt"
    start = time.perf_counter()
    trainer.fit(task, datamodule=dm, ckpt_path=last if resume and last.exists() else None)
    seconds = time.perf_counter() - start

    checkpoints: dict[str, Path] = {}
    metrics: dict[str, dict[str, float]] = {}
    confusion: dict[str, list[list[int]]] = {}
    for m in task.heads:
        checkpoints[m] = run_dir / "checkpoints" / f"best-{m}.ckpt"
        task.test_confusion[m].reset()
        results = trainer.test(task, datamodule=dm, ckpt_path=checkpoints[m], verbose=False)[0]
        metrics[m] = {k.rsplit("/", 1)[1]: float(v) for k, v in results.items()
                      if k.startswith(f"test/{m}/")}
        confusion[m] = task.test_confusion[m].compute().tolist()
    summary = {"method": config.method, "seconds": seconds,
               "parameters": sum(p.numel() for p in task.model.parameters() if p.requires_grad),
               "test": metrics, "confusion": confusion, "classes": info["classes"]}
    (run_dir / "metrics.json").write_text(json.dumps(summary, indent=2))
    plot_run(run_dir)
    return TrainResult(run_dir, checkpoints, metrics, seconds, summary["parameters"])
