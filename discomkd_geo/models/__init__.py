"""Models: encoders, the DisCoM-KD network, baselines' branches, losses and predictors.

Sits under training and inference (which import it) and beside the data layer; it
imports nothing from either.
"""

from .branches import BranchedModel, DisCoMKDBranch, MonoBranch, build_branch
from .discomkd import DisCoMKD, DisCoMKDOutput, ModalityOutput
from .grl import GradientReversal, dann_lambda, gradient_reversal
from .losses import DisCoMKDLoss, orthogonality_penalty
from .predictor import Predictor, PredictorInfo, load_predictor

__all__ = [
    "BranchedModel",
    "DisCoMKD",
    "DisCoMKDBranch",
    "DisCoMKDLoss",
    "DisCoMKDOutput",
    "GradientReversal",
    "ModalityOutput",
    "MonoBranch",
    "Predictor",
    "PredictorInfo",
    "build_branch",
    "dann_lambda",
    "gradient_reversal",
    "load_predictor",
    "orthogonality_penalty",
]
