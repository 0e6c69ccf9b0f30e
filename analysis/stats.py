"""Confidence intervals over seeds: Student t, written out so analysis/ needs no SciPy.

Comparisons are made over a handful of seeds (3 to 5), where a normal interval would be far too narrow;
the t quantile is computed from the regularised incomplete beta function (Numerical Recipes, 6.4).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["Interval", "log_ratio_interval", "mean_interval", "student_t_quantile"]


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def _incomplete_beta(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta ``I_x(a, b)``."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def _t_cdf(t: float, df: float) -> float:
    tail = 0.5 * _incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def student_t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (bisection on the CDF)."""
    if not 0.0 < p < 1.0 or not df > 0:
        raise ValueError(f"student_t_quantile: need 0 < p < 1 and df > 0, got p={p}, df={df}")
    if p < 0.5:
        return -student_t_quantile(1.0 - p, df)
    low, high = 0.0, 1.0
    while _t_cdf(high, df) < p:
        high *= 2.0
    for _ in range(200):
        mid = 0.5 * (low + high)
        if _t_cdf(mid, df) < p:
            low = mid
        else:
            high = mid
        if high - low < 1e-12 * max(1.0, high):
            break
    return 0.5 * (low + high)


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


def _positive(value: float | None) -> bool:
    return value is not None and math.isfinite(float(value)) and float(value) > 0
