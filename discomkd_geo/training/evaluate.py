"""Score one deployed single-modality predictor on a EuroSat-MS-SAR split.

Sits beside :mod:`~discomkd_geo.training.train`: where training tests the Lightning
model, this goes through exactly what a user deploys, :func:`~discomkd_geo.load_predictor`
on raw images, so it also checks that the checkpoint is self-describing (bands,
normalisation, classes). The split settings are read from the training config the
checkpoint carries, so ``test`` means the same images as during training. Besides the
scores, the expected calibration error of the branch's probabilities before and after its
temperature (:mod:`.calibration`), and their reliability diagram.
"""

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_confusion_matrix,
    multiclass_f1_score,
)
from tqdm.auto import tqdm

from ..config import Config, DataConfig, from_dict
from ..data.eurosat import EuroSATMSSAR, EuroSATOptions
from ..errors import CheckpointError, SettingsError
from ..logs import progress_disabled
from ..models._files import load_torch_file
from ..models.predictor import CHECKPOINT_KEY, Predictor, load_torch_predictor
from .calibration import calibration_of
from .plots import plot_reliability


def training_config(checkpoint: str | os.PathLike[str], trusted: bool = False) -> Config | None:
    """The training config recorded with a checkpoint, or ``None`` for exported files.

    Args:
        checkpoint: run directory (its ``config.yaml``), training ``.ckpt`` or exported file.
        trusted: see :func:`~discomkd_geo.models.predictor.load_torch_predictor`.
    """
    path = Path(checkpoint)
    if path.is_dir():
        with open(path / "config.yaml") as f:
            return from_dict(yaml.safe_load(f))
    payload = load_torch_file(path, trusted=trusted)
    if isinstance(payload, dict) and CHECKPOINT_KEY in payload:
        return from_dict(payload[CHECKPOINT_KEY]["config"])
    return None


def dataset_for(predictor: Predictor, data: DataConfig, split: str,
                source: str) -> EuroSATMSSAR:
    """The split of ``data`` holding the predictor's modality with its bands, in its order.

    Raises:
        CheckpointError: the dataset does not provide the predictor's modality or bands.
    """
    m = predictor.info.modality
    try:
        return EuroSATMSSAR(data.root or "data", split=split, modalities=(m,),
                            bands={m: predictor.info.bands},
                            options=EuroSATOptions(data.layout, data.split, data.split_seed))
    except ValueError as err:
        raise CheckpointError(f"{source}: the {m} branch does not fit the dataset at "
                              f"{data.root}: {err}") from err


def split_logits(predictor: Predictor, data: DataConfig, split: str, source: str,
                 batch_size: int = 256, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Uncalibrated logits ``(N, K)`` and labels ``(N,)`` of a split, through the predictor.

    The dataset's raw images go through exactly what is deployed (normalisation,
    channels-last branch), on the predictor's device.

    Args:
        predictor: the branch.
        data: the run's data settings (root, layout, split).
        split: ``train``, ``val`` or ``test``.
        source: the checkpoint, for error messages.
        batch_size: images per forward pass.
        progress: show a progress bar.

    Raises:
        CheckpointError: the dataset lacks the branch's modality, bands or classes.
    """
    m = predictor.info.modality
    dataset = dataset_for(predictor, data, split, source)
    if list(dataset.classes) != list(predictor.info.classes):
        raise CheckpointError(f"{source}: classes {predictor.info.classes} differ from "
                              f"the dataset's {list(dataset.classes)}")
    device = next(predictor.parameters()).device
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=data.num_workers)
    logits, labels = [], []
    with torch.inference_mode():
        for batch in tqdm(loader, desc=f"{split} {m}", disable=progress_disabled(progress)):
            logits.append(predictor.eval().logits(batch[f"image_{m}"].to(device)).float().cpu())
            labels.append(batch["label"])
    return torch.cat(logits).numpy(), torch.cat(labels).numpy()


def evaluate(checkpoint: str | os.PathLike[str], modality: str,
             data_root: str | os.PathLike[str] | None = None, split: str = "test",
             batch_size: int = 256, progress: bool = False, trusted: bool = False,
             plot: str | os.PathLike[str] | None = None,
             overwrite: bool = False) -> dict[str, Any]:
    """Weighted F1 (the paper's metric), macro F1, overall accuracy and calibration of a branch.

    The calibration is the expected calibration error (ECE, 15 confidence bins; Guo et
    al., 2017) of the plain softmax (``ece_before``) and of the probabilities the branch
    gives, with its temperature (``ece_after``; the same when it has none).

    Args:
        checkpoint: run directory, training checkpoint or exported predictor.
        modality: the branch to score, e.g. ``sar``.
        data_root: dataset root; default: the one recorded in the training config.
        split: ``train``, ``val`` or ``test``.
        batch_size: images per forward pass.
        progress: show a progress bar.
        trusted: read a checkpoint that would run code on load (see
            :func:`~discomkd_geo.models.predictor.load_torch_predictor`).
        plot: draw the reliability diagram, before and after, into this PNG.
        overwrite: replace an existing ``plot``.

    Returns:
        ``modality``, ``split``, ``samples``, ``f1_weighted``, ``f1_macro``, ``oa``,
        ``confusion`` (rows: true class, columns: predicted), ``classes``,
        ``temperature`` (``None``: not calibrated), ``ece_before``, ``ece_after``,
        ``nll_before`` and ``nll_after`` (mean negative log-likelihood).

    Raises:
        CheckpointError: unreadable checkpoint, missing modality, or bands the data lacks.
        SettingsError: no ``data_root`` given and none recorded.
        UntrustedFileError: the checkpoint would run code on load and ``trusted`` is false.
    """
    device = "cuda" if torch.cuda.is_available() else "cpu"
    predictor = load_torch_predictor(checkpoint, modality, map_location=device, trusted=trusted)
    config = training_config(checkpoint, trusted) or Config()
    data = config.data
    if data_root is not None:
        data.root = os.fspath(data_root)
    if data.root is None:
        raise SettingsError("data_root", "no dataset root given, and the checkpoint "
                                         "records none")
    logits, labels = split_logits(predictor, data, split, os.fspath(checkpoint), batch_size,
                                  progress)
    calibration, before, after = calibration_of(logits, labels, modality,
                                                predictor.info.temperature)
    if plot is not None:
        plot_reliability(before, after, f"{modality} branch, {split} split", plot,
                         predictor.info.temperature, overwrite)
    # The argmax of the logits: that of the probabilities, whatever the temperature.
    pred, target = torch.from_numpy(logits).argmax(dim=1), torch.from_numpy(labels)
    k = len(predictor.info.classes)
    return {
        "modality": modality,
        "split": split,
        "samples": int(target.numel()),
        "f1_weighted": float(multiclass_f1_score(pred, target, k, average="weighted")),
        "f1_macro": float(multiclass_f1_score(pred, target, k, average="macro")),
        "oa": float(multiclass_accuracy(pred, target, k, average="micro")),
        "confusion": multiclass_confusion_matrix(pred, target, k).tolist(),
        "classes": list(predictor.info.classes),
        **{key: getattr(calibration, key) for key in
           ("temperature", "ece_before", "ece_after", "nll_before", "nll_after")},
    }
