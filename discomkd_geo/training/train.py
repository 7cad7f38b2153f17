"""Run a training experiment from a :class:`~discomkd_geo.config.Config` into a run directory.

Called by ``discomkd-geo train`` (and by ``compare`` for every method). Lightning does the
loop, so users get checkpointing, resume, mixed precision, multi-GPU and loggers from the
config's ``trainer`` section. Every checkpoint is written atomically (a temporary file moved
into place), in a background thread while the next epoch trains, so a run killed at any
moment resumes from its latest complete epoch, and a resumed run on the CPU ends with the
same weights as an uninterrupted one. A run directory holds::

    RUN/config.yaml             the resolved configuration
    RUN/stats/<modality>.json   normalisation statistics of the training split
    RUN/checkpoints/best-<m>.ckpt  best epoch per modality (validation weighted F1),
                                the paper's per-modality model selection (weights only)
    RUN/checkpoints/last.ckpt   end of the latest epoch, for --resume: model, optimiser,
                                epoch, best scores, random states
    RUN/decoders/<m>.pt         with model.decoder_epochs: the best branch plus a per-pixel
                                decoder (loaded in its place; see decoder_fit.py)
    RUN/logs/metrics.csv        every logged value (TensorBoard too when installed)
    RUN/metrics.json            test metrics per modality, each with its best checkpoint,
                                and each branch's calibration (temperature_fit.py)
    RUN/plots/*.png             loss terms, F1 curves, confusion matrices, reliability
                                diagrams (validation split, before and after calibration)
"""

import csv
import json
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger
from lightning.pytorch.utilities import rank_zero_only

from ..config import Config, to_yaml
from ..data.datamodule import MSSARDataModule
from ..errors import ResumeError
from ..files import check_writable
from ..logs import log
from ..memory import retain_freed_memory
from ..models._files import LOAD_ERRORS, load_error_message, load_torch_file
from .baselines import DKDTask, KDTask, MonoTask, TeacherTask
from .calibration import BranchCalibration
from .checkpoint_io import BackgroundCheckpointIO
from .decoder_fit import decoder_modalities, fit_decoders
from .module import DisCoMKDTask, MultiModalTask
from .plots import plot_run
from .progress import TrainingProgress
from .temperature_fit import calibrate_run

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
        reporter: whether this process wrote the run's files and reports it: always in
            a single process, rank 0 only in a distributed run.
    """

    run_dir: Path
    checkpoints: dict[str, Path]
    metrics: dict[str, dict[str, float]]
    seconds: float
    parameters: int
    reporter: bool = True


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


class AtomicCheckpoint(ModelCheckpoint):
    """A :class:`ModelCheckpoint` that flushes the log first and saves the random states.

    The trainer's :class:`~.checkpoint_io.BackgroundCheckpointIO` writes each file beside
    its target and moves it into place, so a kill during the write leaves the previous
    checkpoint whole. The loggers are flushed first, so the log holds every epoch a
    checkpoint holds. The global random states (augmentations, data-loader seeds) travel
    in the callback's state, so a resumed run draws what the uninterrupted run would
    have drawn.
    """

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        for logger in trainer.loggers:
            logger.save()
        super()._save_checkpoint(trainer, filepath)

    def state_dict(self) -> dict[str, Any]:
        """ModelCheckpoint's state (best scores and paths) plus the random states."""
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        # Plain values: Lightning may load checkpoints with torch's weights_only.
        rng = {"torch": torch.get_rng_state(), "python": random.getstate(),
               "numpy": [kind, keys.tolist(), pos, has_gauss, gauss]}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {**super().state_dict(), "rng": rng}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the best scores and the random states of a checkpoint."""
        state = dict(state_dict)
        rng = state.pop("rng", None)
        super().load_state_dict(state)
        if rng is not None:
            torch.set_rng_state(rng["torch"])
            kind, keys, pos, has_gauss, gauss = rng["numpy"]
            np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
            random.setstate(rng["python"])
            if "cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])


def _loggers(run_dir: Path) -> list[Logger]:
    """The CSV logger (first) and TensorBoard's when installed; they write on rank 0 only."""
    loggers: list[Logger] = [CSVLogger(run_dir, name="logs", version="")]
    try:  # TensorBoard is optional (pip install discomkd-geo[tensorboard])
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(run_dir, name="logs", version="tensorboard"))
    except ModuleNotFoundError:
        pass
    return loggers


def _continue_log(logger: CSVLogger, epochs_done: int) -> None:
    """Keep the log rows of the first ``epochs_done`` epochs for a resumed run to extend.

    Lightning's CSV writer deletes an existing ``metrics.csv`` when it starts; rows of an
    epoch the kill interrupted are dropped, since that epoch is trained again.
    """
    path = Path(logger.log_dir) / "metrics.csv"
    header: list[str] = []
    rows: list[dict[str, str]] = []
    if path.is_file():
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            header = list(reader.fieldnames or [])
            rows = [r for r in reader if r.get("epoch") and float(r["epoch"]) < epochs_done]
    writer = logger.experiment  # deletes the file
    if header:
        with path.open("w", newline="") as f:
            out = csv.DictWriter(f, fieldnames=header)
            out.writeheader()
            out.writerows(rows)
        writer.metrics_keys = header


def _callbacks(config: Config, task: MultiModalTask, run_dir: Path) -> list[Callback]:
    ckpt_dir = run_dir / "checkpoints"
    # Best checkpoints hold weights only: they are for testing and prediction, and
    # resuming needs only last.ckpt. Adam's two moments would triple every file (a
    # ResNet-18 DisCoM-KD: 540 MiB instead of 180), written whenever a score improves.
    callbacks: list[Callback] = [
        AtomicCheckpoint(dirpath=ckpt_dir, filename=f"best-{m}", monitor=f"val/{m}/f1_weighted",
                         mode="max", save_top_k=1, auto_insert_metric_name=False,
                         enable_version_counter=False, save_weights_only=True)
        for m in task.heads
    ]
    # Unmonitored, top 1: rewritten at the end of every epoch. Listed after the best-*
    # callbacks, so it saves their scores of the same epoch.
    callbacks.append(AtomicCheckpoint(dirpath=ckpt_dir, filename="last", save_top_k=1,
                                      enable_version_counter=False))
    patience = config.trainer.early_stopping_patience
    if patience is not None:  # see MultiModalTask.on_validation_epoch_end
        monitor = {"heads": "val/f1_best",
                   "mean": "val/f1_weighted"}[config.trainer.early_stopping_rule]
        callbacks.append(EarlyStopping(monitor=monitor, mode="max", patience=patience))
    return callbacks


def log_interval(config: Config, batches: int) -> int:
    """``trainer.log_every_n_steps``, at most the training batches of one epoch.

    Every value is logged per epoch, so the interval changes no log; Lightning warns
    (once per run) when an epoch has fewer batches than the interval.

    Args:
        config: the experiment (``limit_train_batches``, the interval).
        batches: a rank's training batches per epoch
            (:meth:`~discomkd_geo.data.datamodule.MSSARDataModule.train_batches`).
    """
    limit = config.trainer.limit_train_batches
    # Lightning: a float is a fraction of the epoch, an int a number of batches (the
    # config reads every number as a float: above 1, a number of batches).
    batches = int(batches * limit) if limit <= 1.0 else min(batches, int(limit))
    return max(1, min(config.trainer.log_every_n_steps, batches))


def _prepare_run_dir(run_dir: Path, resume: bool) -> None:
    if not resume and run_dir.exists():
        shutil.rmtree(run_dir)
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)


def epochs_done(run_dir: Path) -> int:
    """Epochs completed by the run in ``run_dir``, from its ``last.ckpt``.

    Raises:
        ResumeError: there is no readable ``last.ckpt`` to resume from.
        UntrustedFileError: ``last.ckpt`` would run code on load.
    """
    last = run_dir / "checkpoints" / "last.ckpt"
    if not last.is_file():
        raise ResumeError(run_dir, "nothing to resume: no checkpoints/last.ckpt (a run "
                                   "writes it after its first epoch); run without "
                                   "resume=True", param="resume")
    try:  # weights-only, like Lightning's own load of it (see train)
        checkpoint = load_torch_file(last)
    except LOAD_ERRORS as err:  # torch raises several kinds for a damaged file
        raise ResumeError(last, f"cannot be read ({load_error_message(err)})") from err
    return int(checkpoint["epoch"]) + 1


def _finished(run_dir: Path) -> TrainResult:
    """The result a finished run recorded in ``metrics.json``."""
    summary = json.loads((run_dir / "metrics.json").read_text())
    checkpoints = {m: run_dir / "checkpoints" / f"best-{m}.ckpt" for m in summary["test"]}
    return TrainResult(run_dir, checkpoints, summary["test"], summary["seconds"],
                       summary["parameters"])


def _calibrate(config: Config, run_dir: Path,
               modalities: list[str]) -> dict[str, BranchCalibration]:
    """Fit every branch's temperature on the validation patches (see ``temperature_fit``).

    Runs trained from whole scenes (``data.dataset: scenes``) are left uncalibrated: the
    deployed predictor is scored on EuroSat-MS-SAR patches (:func:`.evaluate.dataset_for`).
    """
    if config.data.dataset != "eurosat" or not modalities:
        return {}
    results = calibrate_run(run_dir, modalities, overwrite=True)
    for m, r in results.items():
        log.info("%s calibration: temperature %.4g (%s), validation ECE %.4f -> %.4f (%d "
                 "images)", m, r.temperature, r.method, r.ece_before, r.ece_after, r.samples)
    return results


def train(config: Config, run_dir: str | Path, overwrite: bool = False, resume: bool = False,
          progress: bool = True,
          build_task: Callable[[Config, dict[str, Any]], MultiModalTask] | None = None,
          echo: Callable[[str], None] = log.info) -> TrainResult:
    """Train ``config.method`` and evaluate each modality's best checkpoint on the test split.

    Args:
        config: the experiment.
        run_dir: output directory (see the module docstring for its layout).
        overwrite: replace an existing non-empty ``run_dir``.
        resume: continue from ``run_dir/checkpoints/last.ckpt`` (the end of the latest
            epoch): model, optimiser, epoch, best scores, random states and log. A
            finished run (``metrics.json`` written) is returned as it is.
        progress: report progress: a bar on a terminal, a line every few epochs in a log.
        build_task: custom task factory (the comparison uses it to hand a trained teacher
            to distillation baselines); default: ``TASKS[config.method]``.
        echo: where to say that the run resumes, or had finished.

    Raises:
        OutputExistsError: ``run_dir`` is not empty and neither ``overwrite`` nor ``resume``.
        ResumeError: ``resume`` and there is nothing to resume.
        DatasetSplitError: a split is empty or lacks classes (checked before training).
        DiscomkdGeoError: bad data or configuration (one-line message).
    """
    run_dir = Path(run_dir)
    done = epochs_done(run_dir) if resume else None
    if done is not None and (run_dir / "metrics.json").is_file():
        echo(f"{run_dir}: finished ({done} epochs) before; nothing to resume")
        return _finished(run_dir)
    # Under DDP every process runs this function; the others start once rank 0 has
    # prepared the run directory (Lightning's launcher) or beside it (SLURM, torchrun),
    # and must neither refuse nor replace it. Their rank is in their environment.
    if done is None and rank_zero_only.rank == 0:
        check_writable(run_dir, overwrite)
    L.seed_everything(config.seed, workers=True, verbose=False)
    dm = MSSARDataModule(config.data, seed=config.seed)
    dm.setup()  # every split, checked before the run directory is touched
    info = data_info(dm)

    if build_task is None:
        task = TASKS[config.method](config.to_dict(), info)
    else:
        task = build_task(config, info)
    decoded = decoder_modalities(config.model, list(task.modalities),  # checked early
                                 task.predictable_modalities)
    tc = config.trainer
    callbacks = _callbacks(config, task, run_dir)
    if progress:
        callbacks.append(TrainingProgress(task.heads))
    trainer = L.Trainer(
        max_epochs=tc.max_epochs, accelerator=tc.accelerator, devices=tc.devices,
        precision=tc.precision, limit_train_batches=tc.limit_train_batches,
        default_root_dir=run_dir,
        callbacks=callbacks, logger=_loggers(run_dir),
        enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, plugins=[BackgroundCheckpointIO()],
        strategy=tc.strategy, num_nodes=tc.num_nodes,
        # The DataModule shards every split per rank itself (class-stratified, see
        # RankShard): Lightning's DistributedSampler would replace those samplers.
        use_distributed_sampler=False,
    )
    # A rank's batches are known once the trainer has counted the ranks: set before
    # fit, as Lightning reads it (an interval above them warns, once per run and rank).
    trainer.log_every_n_steps = log_interval(config, dm.train_batches(trainer.world_size))
    if trainer.is_global_zero:  # the files of the run are rank 0's to write
        _prepare_run_dir(run_dir, resume)
        (run_dir / "stats").mkdir(exist_ok=True)
        for m, stats in dm.stats.items():
            stats.save_json(run_dir / "stats" / f"{m}.json")
        (run_dir / "config.yaml").write_text(to_yaml(config))
        if done is not None:
            _continue_log(trainer.loggers[0], done)  # type: ignore[arg-type]
            echo(f"resuming from epoch {done} ({done} of {tc.max_epochs} epochs done)")
    if isinstance(trainer.accelerator, CPUAccelerator):
        retain_freed_memory()  # every step allocates the same tensors (see memory.py)
    start = time.perf_counter()
    trainer.fit(task, datamodule=dm, weights_only=True,  # files cannot run code (_files.py)
                ckpt_path=run_dir / "checkpoints" / "last.ckpt" if done is not None else None)
    seconds = time.perf_counter() - start
    # Rank 0 arrives once its checkpoint writes are done (the end of fit waits for them):
    # every rank then tests the same best checkpoints.
    trainer.strategy.barrier("checkpoints written")

    checkpoints: dict[str, Path] = {}
    metrics: dict[str, dict[str, float]] = {}
    confusion: dict[str, list[list[int]]] = {}
    for m in task.heads:
        checkpoints[m] = run_dir / "checkpoints" / f"best-{m}.ckpt"
        task.test_confusion[m].reset()
        results = trainer.test(task, datamodule=dm, ckpt_path=checkpoints[m], verbose=False,
                               weights_only=True)[0]
        metrics[m] = {k.rsplit("/", 1)[1]: float(v) for k, v in results.items()
                      if k.startswith(f"test/{m}/")}
        confusion[m] = task.test_confusion[m].compute().tolist()
    parameters = sum(p.numel() for p in task.model.parameters() if p.requires_grad)
    if not trainer.is_global_zero:  # calibration, decoders, metrics and plots: rank 0's
        return TrainResult(run_dir, checkpoints, metrics, seconds, parameters, reporter=False)
    calibration = _calibrate(config, run_dir, task.predictable_modalities)
    # After the calibration: the decoders' predictor files inherit the temperatures.
    if config.model.decoder_epochs and decoded:
        fit_decoders(run_dir, None, decoded, epochs=config.model.decoder_epochs,
                     overwrite=True)
    summary = {"method": config.method, "seconds": seconds,
               "parameters": parameters,
               "test": metrics, "confusion": confusion, "classes": info["classes"],
               "calibration": {m: c.to_dict() for m, c in calibration.items()}}
    (run_dir / "metrics.json").write_text(json.dumps(summary, indent=2))
    plot_run(run_dir)
    return TrainResult(run_dir, checkpoints, metrics, seconds, parameters)
