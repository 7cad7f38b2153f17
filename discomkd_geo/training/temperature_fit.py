"""Calibrate a trained run's branches: one temperature each, fitted on its validation split.

Each branch is fitted as the run maps with it: loaded from the run directory (the best
checkpoint per modality, or ``RUN/decoders/<modality>.pt``, which holds the same window
classifier plus a decoder), on the raw validation images through the deployed predictor
(:func:`~.evaluate.split_logits`), by temperature scaling (:mod:`.calibration`; Guo et al.,
"On Calibration of Modern Neural Networks", ICML 2017). The temperature is then written
into every file of the branch (``PredictorInfo.temperature``), so ``load_torch_predictor``,
``export`` (torch and ONNX) and ``predict`` take it from there and every probability the
branch gives is calibrated (:meth:`~discomkd_geo.models.predictor.Predictor.probabilities`).
``train`` calibrates at the end of every run (before any decoder is fitted, which then
inherits the temperature); ``discomkd-geo fit-calibration RUN`` calibrates runs trained
before.
"""

import json
import os
from pathlib import Path
from typing import Any

import torch

from ..config import load_config
from ..errors import CheckpointError, OutputError
from ..files import atomic_path
from ..logs import log
from ..models._files import load_torch_file
from ..models.predictor import CHECKPOINT_KEY, PREDICTOR_FORMAT, RUN_DECODERS, load_torch_predictor
from .calibration import TEMPERATURE_BOUNDS, BranchCalibration, calibration_of, choose_temperature
from .decoder_fit import run_modalities
from .evaluate import split_logits
from .plots import plot_reliability


def run_files(run_dir: str | os.PathLike[str], modality: str) -> list[Path]:
    """The files a run's ``modality`` branch is loaded from: best checkpoint, decoder file."""
    run_dir = Path(run_dir)
    files = [run_dir / "checkpoints" / f"best-{modality}.ckpt"]
    decoded = run_dir / RUN_DECODERS / f"{modality}.pt"
    return files + [decoded] if decoded.is_file() else files


def _info_of(payload: Any, modality: str, path: Path) -> dict[str, Any]:
    """The ``PredictorInfo`` dict of ``modality`` in a training checkpoint or predictor file."""
    if isinstance(payload, dict) and CHECKPOINT_KEY in payload:
        entry = payload[CHECKPOINT_KEY].get("predictors", {}).get(modality)
        if entry is not None:
            return entry["info"]
    elif isinstance(payload, dict) and payload.get("format") == PREDICTOR_FORMAT:
        return payload["info"]
    raise CheckpointError(f"{path}: no {modality!r} branch to calibrate")


def file_temperature(path: Path, modality: str) -> float | None:
    """The temperature a checkpoint or predictor file records for ``modality``, if any."""
    return _info_of(load_torch_file(path), modality, path).get("temperature")


def write_temperature(path: Path, modality: str, temperature: float | None) -> None:
    """Record ``temperature`` (``None``: uncalibrated) in a branch of a file, atomically."""
    payload = load_torch_file(path)
    _info_of(payload, modality, path)["temperature"] = (None if temperature is None
                                                        else float(temperature))
    with atomic_path(path, overwrite=True) as tmp:
        torch.save(payload, tmp)


def reliability_plot(run_dir: str | os.PathLike[str], modality: str, split: str) -> Path:
    """Where a run keeps the reliability diagram of a branch on a split."""
    return Path(run_dir) / "plots" / f"reliability_{modality}_{split}.png"


def calibrate_run(run_dir: str | os.PathLike[str], modalities: list[str] | None = None,
                  data_root: str | os.PathLike[str] | None = None, overwrite: bool = False,
                  progress: bool = False) -> dict[str, BranchCalibration]:
    """Fit each branch's temperature on the run's validation split; write it into the run.

    Every branch is fitted before anything is written. Then the temperature goes into
    the branch's files (:func:`run_files`), its reliability diagram on the validation
    split, before and after, into ``RUN/plots/reliability_<modality>_val.png``, and the
    results into ``RUN/metrics.json`` (``calibration``) when the run has one.

    Args:
        run_dir: a training run directory.
        modalities: the branches; default: every single-modality branch of the run.
        data_root: dataset root; default: the one in the run's config.
        overwrite: fit again branches that have a temperature already.
        progress: show progress bars.

    Returns:
        The calibration of each branch on the validation split.

    Raises:
        OutputError: a branch has a temperature already and ``overwrite`` is false
            (checked before any fitting).
        CheckpointError: no such branch, or a dataset that does not fit it.
    """
    run_dir = Path(run_dir)
    if modalities is None:
        modalities = run_modalities(run_dir)
    files = {m: run_files(run_dir, m) for m in modalities}
    for m, paths in files.items():
        if not paths[0].is_file():
            raise CheckpointError(f"{run_dir}: no {m!r} branch (no {paths[0].name})")
        fitted = file_temperature(paths[0], m)
        if fitted is not None and not overwrite:
            raise OutputError(run_dir, f"the {m} branch is calibrated already (temperature "
                                       f"{fitted:.4g}); pass overwrite=True to fit it again",
                              param="overwrite")
    config = load_config(run_dir / "config.yaml")
    if data_root is not None:
        config.data.root = os.fspath(data_root)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    results, diagrams = {}, {}
    for m in modalities:
        predictor = load_torch_predictor(run_dir, m, map_location=device)
        logits, labels = split_logits(predictor, config.data, "val", os.fspath(run_dir),
                                      progress=progress)
        temperature, method = choose_temperature(logits, labels)
        if method == "succession":
            log.info("%s calibration: every validation image is classified right, so the "
                     "NLL has no minimum; temperature set by the rule of succession (mean "
                     "confidence (n + 1) / (n + 2) on %d images)", m, len(labels))
        result, *diagrams[m] = calibration_of(logits, labels, m, temperature, method)
        results[m] = result
        if result.at_bound:
            log.warning("%s calibration: the temperature is at its upper bound %g: the "
                        "branch is far more confident than it is right", m,
                        TEMPERATURE_BOUNDS[1])
    (run_dir / "plots").mkdir(exist_ok=True)
    for m, result in results.items():
        for path in files[m]:
            write_temperature(path, m, result.temperature)
        plot_reliability(*diagrams[m], f"{m} branch, validation split",
                         reliability_plot(run_dir, m, "val"), result.temperature)
    _record(run_dir, results)
    return results


def _record(run_dir: Path, results: dict[str, BranchCalibration]) -> None:
    """Merge ``results`` into ``RUN/metrics.json``'s ``calibration`` entry, if the file exists.

    ``train`` calibrates before it writes the file, and puts the results in it itself.
    """
    path = run_dir / "metrics.json"
    if not path.is_file():
        return
    summary = json.loads(path.read_text())
    summary.setdefault("calibration", {}).update({m: r.to_dict() for m, r in results.items()})
    with atomic_path(path, overwrite=True) as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
