"""Models: encoders, the DisCoM-KD network, baselines' branches, losses and predictors.

Sits under training and inference (which import it) and beside the data layer; it
imports nothing from either. The names below load on first use, so that the torch-free
modules of this package (:mod:`.info`, :mod:`.loader`, :mod:`.onnx_predictor`) import
without PyTorch.
"""

from importlib import import_module
from typing import Any

#: Public name -> submodule defining it.
_EXPORTS = {
    "BranchedModel": "branches", "DisCoMKDBranch": "branches", "MonoBranch": "branches",
    "build_branch": "branches",
    "DisCoMKD": "discomkd", "DisCoMKDOutput": "discomkd", "ModalityOutput": "discomkd",
    "GradientReversal": "grl", "dann_lambda": "grl", "gradient_reversal": "grl",
    "DisCoMKDLoss": "losses", "orthogonality_penalty": "losses",
    "Predictor": "predictor", "PredictorInfo": "info", "load_predictor": "loader",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
