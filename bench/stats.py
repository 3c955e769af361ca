"""Means and 95% t-intervals over seeds, paired and Welch differences, and the claim verdicts, with
no dependency beyond the standard library.

Student's t quantile comes from the regularised incomplete beta function (a
continued fraction, evaluated with the modified Lentz method) inverted by
bisection, for any real degrees of freedom (Welch's are not integers): within
1e-9 of scipy for df up to 1e5. scipy is not a dependency of this project.

A difference between two configurations is paired over seeds where they share
any (`compare`), Welch's only where they share none; `verdict` turns its
interval into a verdict in `bench.report.verdict`. Below both the report and the gate:
it imports nothing of the project.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass

CONFIDENCE = 0.95  # every interval in the report


def _beta_fraction(a: float, b: float, x: float) -> float:
    """Continued fraction of I_x(a, b) (modified Lentz); converges fast for x < (a + 1) / (a + b + 2)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        for aa in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float, y: float | None = None) -> float:
    """The regularised incomplete beta function I_x(a, b); `y` = 1 - x where the caller has it exactly.

    Passing y matters where x rounds to 1: t_sf near t = 0 at large df.
    """
    y = 1.0 - x if y is None else y
    if x <= 0.0:
        return 0.0
    if y <= 0.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log(y)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, y) / b


def t_sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with `df` degrees of freedom."""
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t), t * t / (df + t * t))
    return tail if t >= 0 else 1.0 - tail


def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t (p in (0, 1), df > 0), e.g. t_quantile(0.975, 2) = 4.302653.

    Bisection on t_sf to a relative 1e-15: within 1e-9 of scipy's `t.ppf` for df up to 1e5
    (tests/test_stats.py holds the reference values).
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"p={p} must lie strictly between 0 and 1")
    if not df > 0:
        raise ValueError(f"df={df} must be positive")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    if p == 0.5:
        return 0.0
    target = 1.0 - p
    lo, hi = 0.0, 2.0
    while t_sf(hi, df) > target:
        lo, hi = hi, hi * 2.0
    for _ in range(300):
        mid = 0.5 * (lo + hi)
        if t_sf(mid, df) > target:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-15 * hi:
            break
    return 0.5 * (lo + hi)


@dataclass(frozen=True)
class Summary:
    """Mean, sample standard deviation and 95% t-interval of one configuration's seeds.

    With one value, sd, lo and hi are NaN: one seed says nothing about the spread.
    """

    n: int
    mean: float
    sd: float
    lo: float
    hi: float


def summarize(values: Iterable[float]) -> Summary:
    xs = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    n = len(xs)
    if n == 0:
        return Summary(0, math.nan, math.nan, math.nan, math.nan)
    mean = sum(xs) / n
    if n == 1:
        return Summary(1, mean, math.nan, math.nan, math.nan)
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    half = t_quantile(0.5 + CONFIDENCE / 2, n - 1) * sd / math.sqrt(n)
    return Summary(n, mean, sd, mean - half, mean + half)


@dataclass(frozen=True)
class Difference:
    """b - a with its 95% interval, and how it was computed.

    method: PAIRED (over the seeds both sides have: Student t, n - 1 df, on the per-seed
    differences) or WELCH (two independent samples: unequal variances, Welch-Satterthwaite
    df). n: the pairs, or the smaller side; n_a, n_b: the values used on each side.
    lo, hi and df are NaN where n < 2: one seed says nothing about the spread.
    """

    diff: float
    lo: float
    hi: float
    df: float
    method: str = "welch"
    n: int = 0
    n_a: int = 0
    n_b: int = 0


PAIRED, WELCH = "paired", "welch"


def welch(a: Summary, b: Summary) -> Difference:
    """Difference of means b - a and its Welch t-interval, from the two summaries."""
    diff = b.mean - a.mean
    n = min(a.n, b.n)
    if n < 2:
        return Difference(diff, math.nan, math.nan, math.nan, WELCH, n, a.n, b.n)
    va, vb = a.sd**2 / a.n, b.sd**2 / b.n
    se = math.sqrt(va + vb)
    if se == 0.0:  # identical values on both sides: no spread to widen the interval
        return Difference(diff, diff, diff, float(a.n + b.n - 2), WELCH, n, a.n, b.n)
    df = (va + vb) ** 2 / (va**2 / (a.n - 1) + vb**2 / (b.n - 1))
    half = t_quantile(0.5 + CONFIDENCE / 2, df) * se
    return Difference(diff, diff - half, diff + half, df, WELCH, n, a.n, b.n)


def _finite(values: Mapping[Hashable, float]) -> dict:
    return {k: float(v) for k, v in values.items() if v is not None and math.isfinite(float(v))}


def paired(a: Mapping[Hashable, float], b: Mapping[Hashable, float]) -> Difference:
    """Mean of b[s] - a[s] over the seeds s that both have a finite value, with its paired t-interval."""
    a, b = _finite(a), _finite(b)
    common = [s for s in a if s in b]
    d = summarize(b[s] - a[s] for s in common)
    n = d.n
    if n < 2:
        return Difference(d.mean, math.nan, math.nan, math.nan, PAIRED, n, n, n)
    return Difference(d.mean, d.lo, d.hi, float(n - 1), PAIRED, n, n, n)


def compare(a: Mapping[Hashable, float], b: Mapping[Hashable, float]) -> Difference:
    """b - a, each a seed -> value mapping (NaN and None left out).

    Paired over the common seeds where there are any: a cell's seed fixes its data order and
    initial weights, so the per-seed difference cancels what the two cells share, and an
    unpaired interval would throw that away. Welch only where no seed is common. Seeds of
    one side with no partner are left out of a paired difference (its n says how many count).
    """
    a, b = _finite(a), _finite(b)
    if any(s in b for s in a):
        return paired(a, b)
    return welch(summarize(a.values()), summarize(b.values()))
