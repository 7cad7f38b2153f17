"""Paired statistics of a comparison over seeds.

Is method A better than B, and by how much? Used by :mod:`discomkd_geo.training.compare`.
Every seed trains every method on the same split and initialisation seed, so the per-seed
differences are paired: their mean, a 95% Student-t interval of that mean, and a two-sided
paired t-test (plus the count of seeds A wins) answer the question with the seed-to-seed
spread of the *difference*, which is smaller than that of either method.
"""

import statistics
from typing import Any

import numpy as np
from scipy import stats as scipy_stats


def mean_std(values: list[float]) -> dict[str, Any]:
    """Mean, sample standard deviation (0 for one value) and the values themselves."""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "values": values}


def t_interval(values: list[float],
               level: float = 0.95) -> tuple[float, float] | tuple[None, None]:
    """Student-t confidence interval of the mean (``None`` bounds for fewer than 2 values).

    ``None`` rather than NaN: the results are JSON, which has no NaN.
    """
    if len(values) < 2:
        return None, None
    x = np.asarray(values, dtype=float)
    half = scipy_stats.t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
    return float(x.mean() - half), float(x.mean() + half)


def paired_difference(a: list[float], b: list[float], level: float = 0.95) -> dict[str, Any]:
    """``a - b`` paired by position: mean, t interval, paired t-test p-value, wins.

    Args:
        a: scores of method A, one per seed.
        b: scores of method B on the same seeds, in the same order.
        level: confidence level of the interval.

    Returns:
        ``mean``, ``low``/``high`` (interval), ``p`` (two-sided paired t-test; ``None``
        for fewer than two seeds or a constant difference), ``wins``/``n`` (seeds where
        ``a > b``), and the per-seed ``differences``.

    Raises:
        ValueError: ``a`` and ``b`` differ in length.
    """
    if len(a) != len(b):
        raise ValueError(f"paired scores need equal lengths, got {len(a)} and {len(b)}")
    diff = [x - y for x, y in zip(a, b, strict=True)]
    low, high = t_interval(diff, level)
    p = None
    if len(diff) > 1 and np.std(diff) > 0:
        p = float(scipy_stats.ttest_rel(a, b).pvalue)
    return {"mean": statistics.fmean(diff), "low": low, "high": high, "p": p,
            "wins": sum(d > 0 for d in diff), "n": len(diff), "differences": diff}
