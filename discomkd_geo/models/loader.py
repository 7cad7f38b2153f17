"""Load any deployable branch: a PyTorch checkpoint or export, or an ONNX export.

The one entry point the CLI and ``discomkd_geo.load_predictor`` use. An ``.onnx`` file
goes to onnxruntime and never imports torch; anything else to
:func:`discomkd_geo.models.predictor.load_predictor`.
"""

import os

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
    from .predictor import load_predictor as load_torch

    return load_torch(path, modality, map_location, trusted=trusted)
