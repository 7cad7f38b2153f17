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
95 % intervals are ``estimate +- 1.96 SE``, clipped to the values the quantity can take
(0-1 for accuracies and proportions): clipping never removes the true value from an
interval, so it leaves the coverage unchanged.

A stratum with mapped area but no point makes every estimate it enters ``NaN``; one with a
single point gives ``NaN`` standard errors (its variance cannot be estimated). Callers
refuse both before estimating (:func:`discomkd_geo.assessment.assess.assess`).
"""

from dataclasses import dataclass

import numpy as np

#: The standard normal quantile of a two-sided 95 % interval.
Z95 = 1.959963984540054


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
             high: float = np.inf) -> tuple[np.ndarray, np.ndarray]:
    """The 95 % interval ``value +- 1.96 se``, clipped to ``[low, high]``."""
    value, se = np.asarray(value, float), np.asarray(se, float)
    return np.clip(value - Z95 * se, low, high), np.clip(value + Z95 * se, low, high)
