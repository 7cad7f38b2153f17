"""Gradient Reversal Layer (Ganin & Lempitsky, 2015) and the DANN coefficient ramp.

DisCoM-KD puts its modality discriminator behind a GRL: the forward pass is the
identity, the backward pass multiplies the gradient by ``-lambda``, so the
discriminator learns to tell modalities apart from ``z_inv`` while the invariant
encoders learn to make that impossible. Used by :mod:`discomkd_geo.models.discomkd`;
the training task picks ``lambda`` (constant, or :func:`dann_lambda` over training).
"""

import math
from typing import Any

import torch
from torch import Tensor, nn


class _GradientReversalFunction(torch.autograd.Function):
    """Identity forward; gradient times ``-lambda_`` backward."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, lambda_: float) -> Tensor:
        ctx.lambda_ = lambda_
        # view_as: a new tensor node, so autograd calls our backward for it.
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return -ctx.lambda_ * grad, None


def gradient_reversal(x: Tensor, lambda_: float = 1.0) -> Tensor:
    """Return ``x`` unchanged; its gradient is multiplied by ``-lambda_`` on the way back.

    Args:
        x: any tensor.
        lambda_: reversal coefficient (0 stops the gradient, 1 reverses it as is).

    Returns:
        A tensor equal to ``x``.
    """
    return _GradientReversalFunction.apply(x, float(lambda_))


class GradientReversal(nn.Module):
    """Module form of :func:`gradient_reversal` with a settable coefficient.

    Args:
        lambda_: default reversal coefficient; change it at any time through the
            attribute, or override it per call.
    """

    def __init__(self, lambda_: float = 1.0) -> None:
        super().__init__()
        self.lambda_ = float(lambda_)

    def forward(self, x: Tensor, lambda_: float | None = None) -> Tensor:
        """Identity forward; gradient times ``-lambda_`` (default ``self.lambda_``) backward."""
        return gradient_reversal(x, self.lambda_ if lambda_ is None else lambda_)

    def extra_repr(self) -> str:
        """Shown by ``print(module)``."""
        return f"lambda_={self.lambda_}"


def dann_lambda(progress: float, max_lambda: float = 1.0) -> float:
    """The DANN ramp of the GRL coefficient (Ganin et al., 2016).

    ``max_lambda * (2 / (1 + exp(-10 p)) - 1)``: 0 at the start of training, close to
    ``max_lambda`` at the end, so the adversary's noisy early gradients do not swamp
    the encoders.

    Args:
        progress: fraction of training done, clipped to [0, 1].
        max_lambda: coefficient reached at the end of training.

    Returns:
        The GRL coefficient at ``progress``.
    """
    p = min(max(float(progress), 0.0), 1.0)
    return max_lambda * (2.0 / (1.0 + math.exp(-10.0 * p)) - 1.0)
