"""The estimators of accuracy and area of a stratified random sample (Olofsson et al. 2014).

Pure NumPy, no files: the core of :mod:`discomkd_geo.assessment`, below
:mod:`.assess` (which turns reference points into error matrices) and beside
:mod:`.sampling` (which draws the samples). Every function takes error matrices with any
leading batch dimensions, so thousands of samples are estimated in one call (the
coverage test in ``tests/test_assessment.py`` estimates 400 at once).

Notation of Olofsson, Foody, Herold, Stehman, Woodcock & Wulder (2014), "Good practices
for estimating area and assessing accuracy of land change", Remote Sensing of Environment
148:42-57: map classes ``i`` are the strata (rows), reference classes ``j`` the columns,
``n_ij`` the sample counts, ``n_i.`` the points of stratum ``i`` and ``W_i`` its share of
the mapped area. Then

* ``p_ij = W_i n_ij / n_i.`` (estimated area proportions), ``p_.j = sum_i p_ij``;
* overall accuracy ``O = sum_j p_jj``, ``V(O) = sum_i W_i^2 U_i (1 - U_i) / (n_i. - 1)``;
* user's accuracy ``U_i = n_ii / n_i.``, ``V(U_i) = U_i (1 - U_i) / (n_i. - 1)``;
* producer's accuracy ``P_j = p_jj / p_.j``, ``V(P_j) = [W_j^2 (1 - P_j)^2 U_j (1 - U_j) /
  (n_j. - 1) + P_j^2 sum_{i != j} W_i^2 (n_ij / n_i.)(1 - n_ij / n_i.) / (n_i. - 1)] /
  p_.j^2`` (their N-weighted form with ``N_i = W_i N``, the ``N`` cancelling);
* area proportion ``p_.k`` with ``S(p_.k) = sqrt(sum_i W_i^2 (n_ik / n_i.)(1 - n_ik /
  n_i.) / (n_i. - 1))``; the area is ``A p_.k`` with standard error ``A S(p_.k)``.

The same formulas serve a simple random (or systematic) sample post-stratified by the
map's classes (Card 1982): ``n_i.`` are then the points that fell in each class.

The 95 % intervals are of one of the kinds of :data:`INTERVALS`; the point estimates and
standard errors above are the paper's whichever the kind:

* ``wald``, the paper's: ``estimate +- 1.96 SE``, clipped to the values the quantity can
  take (0-1; clipping never removes the true value, so it leaves the coverage as it is).
  It undercovers when a stratum's count of a cell is near 0 or near ``n_i.``: a sample
  that draws none of an error hiding in a large stratum (say 5 % of it, 2.5 expected
  points of 50) estimates the area too low *and* its standard error near zero.
* ``score`` (default): the interval of the values ``p`` that a score test at 5 % does not
  reject, the test's variance taken at ``p`` rather than at the estimate: Wilson's (1927)
  interval, extended to the stratified estimators as sums of independent binomial
  proportions ``q_i`` (stratum ``i``'s share of a class). At ``p`` the ``q_i`` are their
  maximum-likelihood values under ``sum_i c_i q_i = p`` (``c_i = W_i``), found through
  the constraint's Lagrange multiplier; the variance is ``sum_i c_i^2 q_i (1 - q_i) /
  n_i``. A stratum where none of a class was drawn can then hold some of it, as much
  as its binomial likelihood allows. For one stratum it is Wilson's interval exactly
  (user's accuracy); producer's accuracy ``p_jj / p_.j`` is tested as the linear
  constraint ``p_jj - P p_.j = 0``. Brown, Cai & DasGupta (2001) and, for survey
  proportions, Franco, Little, Louis & Slud (2019) recommend Wilson-type intervals over
  Wald's.

A stratum with mapped area but no point makes every estimate it enters ``NaN``; one with a
single point gives ``NaN`` standard errors (its variance cannot be estimated). Callers
refuse both before estimating (:func:`discomkd_geo.assessment.assess.assess`).
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

#: The standard normal quantile of a two-sided 95 % interval.
Z95 = 1.959963984540054

#: Bisection steps of the score intervals: the bracket of the multiplier's arcsinh
#: (width 40) shrinks to 1e-12, that of a producer's accuracy (width <= 1) to 3e-14.
BISECTIONS = 45

#: Lower and upper bounds, each shaped as the estimates they bound.
Bounds = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class Estimates:
    """Accuracy and area-proportion estimates of stratified samples.

    Shapes: ``(..., k)`` per class, ``(...)`` overall, ``(..., k, k)`` matrices (rows:
    map classes, columns: reference classes), where ``...`` are the batch dimensions of
    the counts given.

    Attributes:
        weights: ``W_i``, each stratum's share of the mapped area.
        counts: ``n_ij``, the sample counts.
        proportions: ``p_ij``, estimated area proportions.
        overall: overall accuracy. overall_se: its standard error.
        users: user's accuracy per map class. users_se: its standard error.
        producers: producer's accuracy per reference class. producers_se: its SE.
        area: ``p_.k``, the estimated share of the mapped area per reference class.
        area_se: its standard error.
    """

    weights: np.ndarray
    counts: np.ndarray
    proportions: np.ndarray
    overall: np.ndarray
    overall_se: np.ndarray
    users: np.ndarray
    users_se: np.ndarray
    producers: np.ndarray
    producers_se: np.ndarray
    area: np.ndarray
    area_se: np.ndarray


def _divide(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a / b`` where ``b`` is not 0, else ``NaN``, without warnings."""
    a, b = np.broadcast_arrays(np.asarray(a, float), np.asarray(b, float))
    return np.divide(a, b, out=np.full(a.shape, np.nan), where=b != 0)


def stratified_estimates(counts: np.ndarray, weights: np.ndarray) -> Estimates:
    """Olofsson et al.'s (2014) estimates from error matrices of sample counts.

    Args:
        counts: ``(..., k, k)`` sample counts ``n_ij`` (rows: map class / stratum,
            columns: reference class).
        weights: ``(..., k)`` or ``(k,)`` mapped-area shares ``W_i`` (summing to 1).

    Returns:
        The estimates (see :class:`Estimates` and the module docstring's formulas).
    """
    counts = np.asarray(counts, dtype=float)
    weights = np.broadcast_to(np.asarray(weights, dtype=float), counts.shape[:-1])
    points = counts.sum(axis=-1)  # n_i.
    mapped = weights > 0
    # A stratum without mapped area adds nothing; one with area but no point is unknown.
    share = np.where(mapped[..., None], _divide(counts, points[..., None]), 0.0)
    term = np.where(mapped[..., None],
                    _divide(weights[..., None] ** 2 * share * (1 - share),
                            points[..., None] - 1), 0.0)
    proportions = weights[..., None] * share
    area = proportions.sum(axis=-2)
    diagonal = np.diagonal(proportions, axis1=-2, axis2=-1)
    users = _divide(np.diagonal(counts, axis1=-2, axis2=-1), points)
    own = np.diagonal(term, axis1=-2, axis2=-1)  # W_j^2 U_j (1 - U_j) / (n_j. - 1)
    area_var = term.sum(axis=-2)
    producers = _divide(diagonal, area)
    producers_var = _divide((1 - producers) ** 2 * own + producers ** 2 * (area_var - own),
                            area ** 2)
    return Estimates(
        weights=weights, counts=counts, proportions=proportions,
        overall=diagonal.sum(axis=-1), overall_se=np.sqrt(own.sum(axis=-1)),
        users=users, users_se=np.sqrt(_divide(users * (1 - users), points - 1)),
        producers=producers, producers_se=np.sqrt(producers_var),
        area=area, area_se=np.sqrt(area_var))


def interval(value: np.ndarray, se: np.ndarray, low: float = 0.0,
             high: float = np.inf) -> Bounds:
    """The 95 % interval ``value +- 1.96 se``, clipped to ``[low, high]``."""
    value, se = np.asarray(value, float), np.asarray(se, float)
    return np.clip(value - Z95 * se, low, high), np.clip(value + Z95 * se, low, high)


def _tilted_shares(x: np.ndarray, n: np.ndarray, c: np.ndarray,
                   multiplier: np.ndarray) -> np.ndarray:
    """The maximum-likelihood binomial shares under a linear constraint's multiplier.

    They maximise ``sum_i [x_i log q_i + (n_i - x_i) log(1 - q_i) - multiplier c_i
    q_i]``: each ``q_i`` is the root in [0, 1] of ``a q^2 - (a + n) q + x = 0`` with ``a =
    multiplier c_i``, written so that neither branch cancels: ``2x / (s + r)`` where
    ``s = a + n > 0``, ``(r - s) / (-2a)`` where ``s <= 0`` (then ``a < 0``), with
    ``r = sqrt(s^2 - 4 a x)``.
    """
    a = multiplier * c
    s = a + n
    r = np.sqrt(np.maximum(s * s - 4 * a * x, 0.0))
    positive = s > 0
    numerator = np.where(positive, 2 * x, r - s)
    denominator = np.where(positive, s + r, -2 * a)
    shares = np.divide(numerator, denominator, out=np.zeros_like(numerator),
                       where=denominator > 0)
    return np.clip(shares, 0.0, 1.0)


def _last_accepted(accepts: Callable[[np.ndarray], np.ndarray], inside: np.ndarray,
                   outside: np.ndarray) -> np.ndarray:
    """Bisect elementwise from values a test accepts towards values it rejects.

    Returns the last accepted values, within ``|outside - inside| / 2^BISECTIONS`` of
    where the test turns.
    """
    for _ in range(BISECTIONS):
        middle = (inside + outside) / 2
        ok = accepts(middle)
        inside, outside = np.where(ok, middle, inside), np.where(ok, outside, middle)
    return inside


def _sides(shape: tuple[int, ...], lower: float, upper: float) -> np.ndarray:
    """``lower`` and ``upper`` on a new first axis: both bounds bisected in one pass."""
    return np.stack([np.full(shape, lower), np.full(shape, upper)])


def _solve_multiplier(x: np.ndarray, n: np.ndarray, c: np.ndarray,
                      target: np.ndarray) -> np.ndarray:
    """The shares under ``sum_i c_i q_i = target`` (``target`` shaped as the batch).

    ``sum_i c_i q_i`` falls as the multiplier rises (each ``c_i q_i`` does), so the
    multiplier is bisected, as ``sinh`` of a bracketed value to span every scale.
    """
    arcsinh = _last_accepted(
        lambda s: (c * _tilted_shares(x, n, c, np.sinh(s)[..., None])).sum(-1) > target,
        np.full(target.shape, -40.0), np.full(target.shape, 40.0))
    return _tilted_shares(x, n, c, np.sinh(arcsinh)[..., None])


def _sum_bounds(x: np.ndarray, n: np.ndarray, c: np.ndarray) -> Bounds:
    """Score bounds of ``sum_i c_i q_i`` (``c_i >= 0``) over the last axis (the strata).

    Along the multiplier the constrained sum moves monotonically away from the estimate
    (down for a positive multiplier, up for a negative one), so each bound is found by
    bisecting the multiplier for the last value the score test accepts.
    """
    estimate = (c * x / n).sum(-1)

    def constrained(arcsinh: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The constrained sum and whether the score test accepts it."""
        q = _tilted_shares(x, n, c, np.sinh(arcsinh)[..., None])
        value = (c * q).sum(-1)
        variance = (c * c * q * (1 - q) / n).sum(-1)
        return value, (value - estimate) ** 2 <= Z95 ** 2 * variance

    # A positive multiplier lowers the sum: the lower bound; a negative one the upper.
    arcsinh = _last_accepted(lambda s: constrained(s)[1], _sides(estimate.shape, 0.0, 0.0),
                             _sides(estimate.shape, 40.0, -40.0))
    bounds = np.where(np.isnan(estimate), np.nan, constrained(arcsinh)[0])
    return bounds[0], bounds[1]


def _strata_axes(e: Estimates) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Counts as ``(..., reference class, stratum)``, stratum sizes and weights to match.

    Strata without mapped area weigh nothing: one point of nothing stands in for them
    so that no share is ``0 / 0``; a mapped stratum without points keeps ``n = 0`` and
    makes the bounds it enters ``NaN``, as it makes the estimates (the callers silence
    the division's warning: :data:`_NAN_SILENTLY`).
    """
    points = e.counts.sum(-1)
    unmapped = e.weights <= 0
    x = np.where(unmapped[..., None], 0.0, e.counts)
    n = np.where(unmapped, 1.0, points)
    return (np.swapaxes(x, -1, -2), n[..., None, :],
            np.where(unmapped, 0.0, e.weights)[..., None, :])


#: What the score bounds divide under: a mapped stratum without points gives ``NaN``.
_NAN_SILENTLY = {"divide": "ignore", "invalid": "ignore"}


class IntervalKind(Protocol):
    """A way to give 95 % intervals of the estimates (see the module docstring)."""

    #: The name the CLI and the API take.
    name: str
    #: One line on how the intervals are made, for reports.
    summary: str

    def overall(self, e: Estimates) -> Bounds:
        """Bounds of overall accuracy."""

    def users(self, e: Estimates) -> Bounds:
        """Bounds of each map class's user's accuracy."""

    def producers(self, e: Estimates) -> Bounds:
        """Bounds of each reference class's producer's accuracy."""

    def area(self, e: Estimates) -> Bounds:
        """Bounds of each reference class's share of the mapped area."""


class WaldIntervals:
    """Olofsson et al.'s (2014): ``estimate +- 1.96 SE``, clipped to 0-1."""

    name = "wald"
    summary = "Wald, estimate +- 1.96 SE (Olofsson et al. 2014), clipped to 0-1"

    def overall(self, e: Estimates) -> Bounds:
        """``O +- 1.96 S(O)``."""
        return interval(e.overall, e.overall_se, high=1.0)

    def users(self, e: Estimates) -> Bounds:
        """``U_i +- 1.96 S(U_i)``."""
        return interval(e.users, e.users_se, high=1.0)

    def producers(self, e: Estimates) -> Bounds:
        """``P_j +- 1.96 S(P_j)``."""
        return interval(e.producers, e.producers_se, high=1.0)

    def area(self, e: Estimates) -> Bounds:
        """``p_.k +- 1.96 S(p_.k)``."""
        return interval(e.area, e.area_se, high=1.0)


class ScoreIntervals:
    """Score (Wilson-type) intervals of the stratified estimators (module docstring)."""

    name = "score"
    summary = ("score (Wilson-type: the variance at each value tested, strata's shares "
               "at their constrained maximum likelihood)")

    def overall(self, e: Estimates) -> Bounds:
        """Bounds of ``sum_i W_i U_i``: a sum over strata of the diagonal's shares."""
        x, n, w = _strata_axes(e)
        diagonal = np.diagonal(x, axis1=-2, axis2=-1)[..., None, :]
        with np.errstate(**_NAN_SILENTLY):
            low, high = _sum_bounds(diagonal, n, w)
        return low[..., 0], high[..., 0]

    def users(self, e: Estimates) -> Bounds:
        """Wilson's interval of ``n_ii`` successes in ``n_i.`` points."""
        x = np.diagonal(e.counts, axis1=-2, axis2=-1)
        n = e.counts.sum(-1)
        with np.errstate(**_NAN_SILENTLY):
            centre = (x + Z95 ** 2 / 2) / (n + Z95 ** 2)
            half = Z95 * np.sqrt(x * (n - x) / n + Z95 ** 2 / 4) / (n + Z95 ** 2)
        return np.clip(centre - half, 0.0, 1.0), np.clip(centre + half, 0.0, 1.0)

    def producers(self, e: Estimates) -> Bounds:
        """Bounds of ``P_j = p_jj / p_.j``, by a score test of each value ``P``.

        ``P_j = P`` is the linear hypothesis ``sum_i c_i q_ij = 0`` with ``c_i = W_i
        ([i = j] - P)``; the bounds are the values the test accepts. Its statistic is
        zero at the estimate and grows away from it on each side, so each bound is
        bisected, each step solving for the constrained shares.
        """
        x, n, w = _strata_axes(e)
        own = np.eye(x.shape[-1], dtype=bool)
        estimate = e.producers

        def accepted(value: np.ndarray) -> np.ndarray:
            c = w * (own - value[..., None])
            fitted = _solve_multiplier(x, n, c, np.zeros(value.shape))
            statistic = (c * x / n).sum(-1) ** 2
            return statistic <= Z95 ** 2 * (c * c * fitted * (1 - fitted) / n).sum(-1)

        known = ~np.isnan(estimate)
        start = np.where(known, estimate, 0.5)
        with np.errstate(**_NAN_SILENTLY):
            bounds = _last_accepted(accepted, np.stack([start, start]),
                                    _sides(start.shape, 0.0, 1.0))
        bounds = np.where(known, bounds, np.nan)
        return bounds[0], bounds[1]

    def area(self, e: Estimates) -> Bounds:
        """Bounds of ``p_.k = sum_i W_i q_ik`` per reference class ``k``."""
        x, n, w = _strata_axes(e)
        with np.errstate(**_NAN_SILENTLY):
            return _sum_bounds(x, n, w)


#: The interval kinds by name; ``score`` is the default (module docstring: why).
INTERVALS: dict[str, IntervalKind] = {kind.name: kind
                                      for kind in (ScoreIntervals(), WaldIntervals())}
DEFAULT_INTERVAL = "score"
