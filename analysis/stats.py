"""Confidence intervals and paired tests over seeds, from :mod:`scipy.stats`.

Comparisons are made over a handful of seeds (3 to 5), where a normal interval would be far too narrow, so
every interval is Student t. The same seed gives every variant the same data partition, device classes and
per-round device conditions, so two variants are best compared *paired by seed*: the per-seed differences'
mean with its t interval, and the paired t-test (:func:`scipy.stats.ttest_rel`) of whether that mean is 0.
Pairing removes the seed-to-seed spread both variants share, so a difference the two unpaired intervals
leave overlapping can still be resolved (and one they show apart is confirmed only if the pairs agree).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from scipy import stats as _scipy_stats

__all__ = [
    "Interval",
    "PairedTest",
    "log_ratio_interval",
    "mean_interval",
    "paired_test",
    "student_t_quantile",
]


def student_t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (``scipy.stats.t.ppf``)."""
    if not 0.0 < p < 1.0 or df <= 0:
        raise ValueError(f"student_t_quantile: need 0 < p < 1 and df > 0, got p={p}, df={df}")
    return float(_scipy_stats.t.ppf(p, df))


@dataclass(frozen=True)
class Interval:
    """``mean`` with the two-sided Student-t interval ``[low, high]`` over ``n`` values (NaN when n < 2)."""

    mean: float
    low: float
    high: float
    n: int
    std: float

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2.0

    def overlaps(self, other: Interval) -> bool:
        """True when the intervals share a point; NaN bounds (one seed) count as overlapping: not shown apart."""
        if any(math.isnan(v) for v in (self.low, self.high, other.low, other.high)):
            return True
        return self.low <= other.high and other.low <= self.high


def mean_interval(values: Iterable[float], confidence: float = 0.95) -> Interval:
    """Mean and t interval of the finite ``values`` (NaN/inf are dropped: runs that never reached a target)."""
    data = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(data)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0, math.nan)
    mean = sum(data) / n
    if n == 1:
        return Interval(mean, math.nan, math.nan, 1, math.nan)
    std = math.sqrt(sum((v - mean) ** 2 for v in data) / (n - 1))
    half = student_t_quantile(0.5 + confidence / 2.0, n - 1) * std / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, std)


def log_ratio_interval(
    numerators: Iterable[float], denominators: Iterable[float], confidence: float = 0.95
) -> Interval:
    """Geometric-mean ratio of paired values with the t interval of the log ratios, mapped back by ``exp``.

    Why logs: a speed-up of 2x and one of 0.5x should average to 1x, not 1.25x, and the interval of a
    ratio is asymmetric. Pairs where either side is not a positive finite number are dropped. ``std`` is
    the standard deviation of the log ratios.
    """
    logs = [
        math.log(float(a) / float(b))
        for a, b in zip(numerators, denominators, strict=True)
        if _positive(a) and _positive(b)
    ]
    inner = mean_interval(logs, confidence)
    if inner.n == 0:
        return inner
    low = math.exp(inner.low) if inner.n > 1 else math.nan
    high = math.exp(inner.high) if inner.n > 1 else math.nan
    return Interval(math.exp(inner.mean), low, high, inner.n, inner.std)


@dataclass(frozen=True)
class PairedTest:
    """Paired comparison of two variants over seeds: ``difference`` is the mean of the per-seed differences
    ``a - b`` with its t interval (``n`` pairs), ``statistic`` / ``p_value`` the paired t-test's."""

    difference: Interval
    statistic: float
    p_value: float

    @property
    def n(self) -> int:
        return self.difference.n

    @property
    def verdict(self) -> str:
        """``higher`` / ``lower`` when the interval of the difference excludes 0 (equivalently the two-sided
        p-value is below 1 - confidence), else ``not resolved`` (also with fewer than two pairs)."""
        low, high = self.difference.low, self.difference.high
        if self.n < 2 or math.isnan(low):
            return "not resolved"
        if low > 0:
            return "higher"
        if high < 0:
            return "lower"
        return "not resolved"


def paired_test(a: Iterable[float], b: Iterable[float], confidence: float = 0.95) -> PairedTest:
    """Paired t-test of ``a`` against ``b`` (``scipy.stats.ttest_rel``) and the t interval of ``a - b``.

    ``a[i]`` and ``b[i]`` are the two variants' values at the same seed; pairs where either is NaN (a run
    that never reached a target) are dropped. With identical differences (no spread) the statistic is 0
    (p = 1) when they are all 0, else infinite with p = 0; with fewer than two pairs both are NaN.
    """
    pairs = [
        (float(x), float(y))
        for x, y in zip(a, b, strict=True)
        if x is not None and y is not None and math.isfinite(float(x)) and math.isfinite(float(y))
    ]
    difference = mean_interval([x - y for x, y in pairs], confidence)
    if difference.n < 2:
        return PairedTest(difference, math.nan, math.nan)
    if difference.std == 0:
        if difference.mean == 0:
            return PairedTest(difference, 0.0, 1.0)
        return PairedTest(difference, math.copysign(math.inf, difference.mean), 0.0)
    result = _scipy_stats.ttest_rel([x for x, _ in pairs], [y for _, y in pairs])
    return PairedTest(difference, float(result.statistic), float(result.pvalue))


def _positive(value: float | None) -> bool:
    return value is not None and math.isfinite(float(value)) and float(value) > 0
