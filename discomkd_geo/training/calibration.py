"""Temperature scaling (Guo et al. 2017) and the expected calibration error: the arithmetic.

A branch trained with cross-entropy says "90% sure" more or less often than it is right 90%
of the time. Temperature scaling (Guo, Pleiss, Sun and Weinberger, "On Calibration of
Modern Neural Networks", ICML 2017, section 4.2) divides the logits by one scalar
``T > 0`` before the softmax, ``T`` minimising the negative log-likelihood (NLL) of the
validation split; one ``T`` for every class keeps each argmax, so accuracy is unchanged.
The miscalibration measured is the expected calibration error (ECE, their eq. 3): the
predictions are put in 15 equal-width bins of confidence (the top probability), and the
gaps between each bin's accuracy and mean confidence are averaged, weighted by the bin's
share of the predictions.

A branch that classifies every validation image right leaves ``T`` unidentified (the NLL
falls all the way to ``T = 0``). Its temperature is then the one that makes the mean
validation confidence equal the accuracy Laplace's rule of succession estimates from the
split, ``(correct + 1) / (n + 2)``: a uniform prior on the accuracy, one pseudo-error
and one pseudo-success (:func:`succession_temperature`).

NumPy in float64 on logits already computed: :mod:`.temperature_fit` fits a run's
branches with it, :mod:`.evaluate` reports the ECE, and the temperature is applied where
probabilities are made, :meth:`~discomkd_geo.models.predictor.Predictor.probabilities`.
"""

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.special import log_softmax

#: Confidence bins of the ECE and the reliability diagrams (Guo et al. use 15).
ECE_BINS = 15
#: Range searched for ``T``. The NLL keeps falling as ``T`` goes to 0 when every validation
#: image is classified correctly (nothing then says how sure to be); the NLL fit stops at
#: the bound, which still makes a 1-logit margin a 20-logit one, and
#: :func:`choose_temperature` takes :func:`succession_temperature` instead.
TEMPERATURE_BOUNDS = (0.05, 20.0)
#: How :func:`choose_temperature` fitted ``T``: Guo et al.'s NLL minimum, or (no
#: minimum within the bounds: a separable validation split) the rule of succession.
FIT_METHODS = ("nll", "succession")
#: Bisection steps on ``log T``: the bracket, log(400) = 6 wide, ends 6 / 2**60 wide.
_STEPS = 60


@dataclass(frozen=True)
class Reliability:
    """Predictions binned by confidence: the data of the ECE and of a reliability diagram.

    Attributes:
        counts: predictions per bin; bin ``m`` holds confidences in ``(m/M, (m+1)/M]``.
        confidence: mean confidence per bin (NaN where empty).
        accuracy: share of correct predictions per bin (NaN where empty).
    """

    counts: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray

    @classmethod
    def of(cls, probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> "Reliability":
        """Bin ``(N, K)`` probabilities of ``(N,)`` true labels (Guo et al., section 2)."""
        probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
        confidence = probs.max(axis=1)
        correct = (probs.argmax(axis=1) == labels).astype(np.float64)
        # Right-closed bins ((m-1)/M, m/M]: a confidence of exactly 1 is in the last one.
        index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
        counts = np.bincount(index, minlength=bins)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_conf = np.bincount(index, confidence, minlength=bins) / counts
            accuracy = np.bincount(index, correct, minlength=bins) / counts
        return cls(counts, mean_conf, accuracy)

    @property
    def ece(self) -> float:
        """Expected calibration error: ``sum_m |B_m| / n * |acc(B_m) - conf(B_m)|``."""
        used = self.counts > 0
        gaps = np.abs(self.accuracy[used] - self.confidence[used])
        return float((self.counts[used] * gaps).sum() / self.counts.sum())


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray,
                               bins: int = ECE_BINS) -> float:
    """ECE of ``(N, K)`` probabilities against ``(N,)`` labels (see :class:`Reliability`)."""
    return Reliability.of(probs, labels, bins).ece


def tempered_probabilities(logits: np.ndarray, temperature: float | None) -> np.ndarray:
    """``softmax(logits / T)`` in float64 (``T`` ``None``: the plain softmax)."""
    logits = np.asarray(logits, dtype=np.float64)
    return np.exp(log_softmax(logits if temperature is None else logits / temperature, axis=1))


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray,
                            temperature: float | None = None) -> float:
    """Mean NLL of ``(N,)`` labels under ``softmax(logits / T)``."""
    logits = np.asarray(logits, dtype=np.float64)
    log_p = log_softmax(logits if temperature is None else logits / temperature,
                        axis=1)
    return float(-log_p[np.arange(len(labels)), labels].mean())


def _falling_zero(f: Callable[[float], float], bounds: tuple[float, float]) -> float:
    """The ``T`` within ``bounds`` where ``f(log T)``, which falls as ``T`` grows, is zero.

    A bisection on ``log T`` (:data:`_STEPS` steps), the same on every run; the nearer
    bound when ``f`` does not change sign within them.
    """
    low, high = math.log(bounds[0]), math.log(bounds[1])
    if f(low) <= 0:  # already at or below zero at the smallest T
        return bounds[0]
    if f(high) >= 0:  # still at or above zero at the largest T
        return bounds[1]
    for _ in range(_STEPS):  # f(low) > 0 > f(high): the zero is between
        middle = (low + high) / 2
        if f(middle) > 0:
            low = middle
        else:
            high = middle
    return math.exp((low + high) / 2)


def fit_temperature(logits: np.ndarray, labels: np.ndarray,
                    bounds: tuple[float, float] = TEMPERATURE_BOUNDS) -> float:
    """The temperature minimising the NLL of ``labels`` under ``softmax(logits / T)``.

    With ``b = 1 / T`` the NLL, ``mean(logsumexp(b z) - b z_y)``, is convex in ``b`` (a
    log-sum-exp of linear functions, minus a linear one), so its slope
    ``mean(E_p[z] - z_y)`` rises with ``b`` and the minimum is where it crosses zero: a
    bisection on ``log T`` finds it within the bounds, the same on every run (float64,
    no random start, no learning rate).

    Args:
        logits: ``(N, K)`` uncalibrated logits.
        labels: ``(N,)`` true classes.
        bounds: the range of ``T`` searched; the nearer bound if the minimum lies beyond.

    Returns:
        ``T``, a positive float.
    """
    z = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels)
    target = z[np.arange(len(labels)), labels]

    def slope(log_t: float) -> float:  # d NLL / d b at b = exp(-log_t)
        p = np.exp(log_softmax(z * math.exp(-log_t), axis=1))
        return float(((p * z).sum(axis=1) - target).mean())

    # The slope falls as T grows (b shrinks): still falling at the smallest T, the
    # minimum lies below it; already rising at the largest, above it.
    return _falling_zero(slope, bounds)


def succession_temperature(logits: np.ndarray, labels: np.ndarray,
                           bounds: tuple[float, float] = TEMPERATURE_BOUNDS) -> float:
    """The temperature whose mean confidence is the rule of succession's accuracy.

    Laplace's rule of succession estimates a branch's accuracy from ``c`` right answers
    in ``n`` as ``(c + 1) / (n + 2)``, the posterior mean under a uniform prior: after
    150 right answers out of 150, 0.9934, not 1. The temperature returned makes the mean
    top probability over the split equal to it. Each image's top probability falls as
    ``T`` grows (its top logit stays on top), so the mean does too and a bisection on
    ``log T`` finds it, the same on every run.

    Args:
        logits: ``(N, K)`` uncalibrated logits.
        labels: ``(N,)`` true classes.
        bounds: the range of ``T`` searched; the nearer bound if the match lies beyond.

    Returns:
        ``T``, a positive float.
    """
    z = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels)
    target = (float((z.argmax(axis=1) == labels).sum()) + 1) / (len(labels) + 2)

    def excess(log_t: float) -> float:  # mean confidence minus the target, falls with T
        return float(np.exp(log_softmax(z * math.exp(-log_t), axis=1)).max(axis=1).mean()
                     - target)

    return _falling_zero(excess, bounds)


def choose_temperature(logits: np.ndarray, labels: np.ndarray) -> tuple[float, str]:
    """A branch's temperature on its validation logits, and how it was fitted.

    Guo et al.'s NLL minimum (:func:`fit_temperature`, method ``"nll"``) where it lies
    above the lower bound of :data:`TEMPERATURE_BOUNDS`; at that bound the split is
    separable and the NLL says nothing, so :func:`succession_temperature` (method
    ``"succession"``). Leaving such a branch at ``T = 1`` kept the demo's MS branch
    under-confident (validation ECE 0.108); the bound itself made its windows nearly
    one-hot.
    """
    temperature = fit_temperature(logits, labels)
    if temperature > TEMPERATURE_BOUNDS[0]:
        return temperature, "nll"
    return succession_temperature(logits, labels), "succession"


@dataclass(frozen=True)
class BranchCalibration:
    """A branch's fitted temperature and its calibration before and after, on one split.

    Attributes:
        modality: the branch.
        temperature: the branch's ``T`` (``None``: not calibrated, before = after).
        samples: images of the split.
        ece_before: ECE of the plain softmax.
        ece_after: ECE with ``T``.
        nll_before: mean NLL of the plain softmax.
        nll_after: mean NLL with ``T``.
        at_bound: ``T`` is a bound of :data:`TEMPERATURE_BOUNDS` (see there).
        method: how ``T`` was fitted (:data:`FIT_METHODS`; ``None``: not fitted here,
            e.g. a checkpoint's temperature evaluated on another split).
    """

    modality: str
    temperature: float | None
    samples: int
    ece_before: float
    ece_after: float
    nll_before: float
    nll_after: float
    at_bound: bool
    method: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON form (``modality`` left out: it is the key it is stored under)."""
        data = asdict(self)
        del data["modality"]
        return data


def calibration_of(logits: np.ndarray, labels: np.ndarray, modality: str,
                   temperature: float | None, method: str | None = None
                   ) -> tuple[BranchCalibration, Reliability, Reliability]:
    """The calibration of ``softmax(logits)`` and of ``softmax(logits / T)``, and their bins."""
    before = Reliability.of(tempered_probabilities(logits, None), labels)
    after = Reliability.of(tempered_probabilities(logits, temperature), labels)
    result = BranchCalibration(
        modality, temperature, len(labels), before.ece, after.ece,
        negative_log_likelihood(logits, labels),
        negative_log_likelihood(logits, labels, temperature),
        temperature in TEMPERATURE_BOUNDS, method)
    return result, before, after
