"""Load any deployable branch: a PyTorch checkpoint or export, or an ONNX export.

The one entry point the CLI and ``discomkd_geo.load_predictor`` use. An ``.onnx`` file
goes to onnxruntime and never imports torch; anything else to
:func:`discomkd_geo.models.predictor.load_torch_predictor`. A run's best checkpoint named alone
comes with the per-pixel decoder its run gave it, as the run directory does.
"""

import os
from pathlib import Path

from ..logs import log
from .info import BranchPredictor

#: File suffix of ONNX exports (``discomkd-geo export --format onnx``).
ONNX_SUFFIX = ".onnx"


def is_onnx(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names an ONNX model (by its suffix, as ONNX files have no magic)."""
    return os.fspath(path).lower().endswith(ONNX_SUFFIX)


def load_predictor(path: str | os.PathLike[str], modality: str | None = None,
                   map_location: str = "cpu", trusted: bool = False) -> BranchPredictor:
    """Load a single-modality predictor from a checkpoint, a run or an exported file.

    Args:
        path: a training checkpoint (``.ckpt``), a training run directory, a file written
            by ``discomkd-geo export`` (``.pt``), or an ONNX export (``.onnx``).
        modality: the branch to load; may be omitted for exported (single-branch) files.
        map_location: device to load torch weights on (ONNX models choose their own).
        trusted: load a torch file whose pickle needs more than tensors and plain values
            (it could run code; see :mod:`._files`). ONNX files hold no pickle.

    Raises:
        CheckpointError: unreadable file, or no such modality in it.
        UntrustedFileError: a torch file that would run code, unless ``trusted``.
    """
    if is_onnx(path):
        from .onnx_predictor import OnnxPredictor

        return OnnxPredictor.load(path, modality)
    from .predictor import load_torch_predictor as load_torch

    predictor = load_torch(path, modality, map_location, trusted=trusted)
    return _with_run_decoder(Path(path), predictor, map_location, trusted)


def _with_run_decoder(path: Path, predictor: BranchPredictor, map_location: str,
                      trusted: bool) -> BranchPredictor:
    """``RUN/checkpoints/best-<modality>.ckpt`` with its run's decoder, if fit on it.

    The run directory loads ``RUN/decoders/<modality>.pt`` when ``fit-decoder`` wrote one
    (the same weights plus the decoder): the checkpoint named alone mapped in windows mode
    where its run maps per pixel. A decoder fit on other weights (the run trained on
    after ``fit-decoder``) is not taken, and the log says which mode that means.
    """
    import torch

    from .predictor import RUN_DECODERS
    from .predictor import load_torch_predictor as load_torch

    modality = predictor.info.modality
    decoded = path.parent.parent / RUN_DECODERS / f"{modality}.pt"
    if (predictor.has_decoder or path.name != f"best-{modality}.ckpt"
            or path.parent.name != "checkpoints" or not decoded.is_file()):
        return predictor
    fitted = load_torch(decoded, modality, map_location, trusted=trusted)
    theirs = fitted.branch.state_dict()
    if all(key in theirs and torch.equal(value, theirs[key])
           for key, value in predictor.branch.state_dict().items()):
        log.debug("%s: with its run's per-pixel decoder (%s), as the run directory loads it",
                  path, decoded)
        return fitted
    log.warning("%s: its run's decoder %s was fit on other weights, so it is left out: "
                "this checkpoint has no per-pixel decoder and maps in mode windows by "
                "default (fit-decoder again for mode pixel)", path, decoded)
    return predictor
