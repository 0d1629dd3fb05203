"""runner/intervals.py: coverage of the order-statistic intervals on synthetic data with known medians
(normal, heavy-tailed, bimodal, and slices with a shared slow phase), the stopping rule, slow rounds, and
how the report renders an interval. Pure numpy; a few seconds."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from runner import intervals as iv

TRIALS, UNITS = 400, 15


def _bimodal_cdf(x: float) -> float:
    """0.6 N(1, 0.05) + 0.4 N(1.6, 0.08): a variant with a fast and a slow mode."""
    phi = lambda z: 0.5 * (1 + math.erf(z / math.sqrt(2)))  # noqa: E731
    return 0.6 * phi((x - 1.0) / 0.05) + 0.4 * phi((x - 1.6) / 0.08)


def _median_of(cdf, lo: float, hi: float) -> float:
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < 0.5 else (lo, mid)
    return (lo + hi) / 2


def _draw(kind: str, rng: np.random.Generator, size) -> np.ndarray:
    if kind == "normal":
        return rng.normal(3.0, 0.3, size)
    if kind == "lognormal":  # heavy right tail
        return np.exp(rng.normal(math.log(3.0), 0.8, size))
    fast = rng.random(size) < 0.6
    return np.where(fast, rng.normal(1.0, 0.05, size), rng.normal(1.6, 0.08, size))


TRUE_MEDIAN = {"normal": 3.0, "lognormal": 3.0, "bimodal": _median_of(_bimodal_cdf, 0.5, 2.0)}


@pytest.mark.parametrize("kind", ["normal", "lognormal", "bimodal"])
def test_median_interval_covers_the_true_median(kind):
    rng = np.random.default_rng(23)
    draws = _draw(kind, rng, (TRIALS, UNITS))
    cis = [iv.unit_ci(d) for d in draws]
    assert all(c.ok for c in cis)
    truth = TRUE_MEDIAN[kind]
    coverage = np.mean([c.lo <= truth <= c.hi for c in cis])
    # 15 units: ranks 4 and 12, exact coverage 0.9648 for any continuous distribution
    assert 0.93 <= coverage <= 0.995, coverage
    # not absurdly wide: ranks 4 and 12 of 15 sit near the quartiles, so the typical width is about the
    # distribution's interquartile range (a bimodal one's spans both modes: that is its honest width)
    q25, q75 = np.percentile(_draw(kind, rng, 200_000), [25, 75])
    widths = np.array([c.hi - c.lo for c in cis])
    assert np.median(widths) <= 1.3 * (q75 - q25), (np.median(widths), q75 - q25)


def test_tail_quantile_interval_and_too_few_values():
    ci = iv.quantile_ci(np.arange(1.0, 16.0), 0.5)
    assert (ci.lo, ci.hi) == (4.0, 12.0) and ci.ok and abs(ci.coverage - 0.96484375) < 1e-9
    # 5 values cannot give a 95% interval of the median: [min, max] at its true coverage 15/16, flagged
    few = iv.quantile_ci([5, 1, 4, 2, 3], 0.5)
    assert (few.lo, few.hi) == (1.0, 5.0) and not few.ok and abs(few.coverage - 0.9375) < 1e-9
    assert iv.min_units(0.5, 0.95) == 6
    # p99 of 600 i.i.d. values (300 are too few: 0.99^300 > 2.5%): a bound below the max is possible, coverage over 95%
    rng = np.random.default_rng(1)
    hits = []
    for _ in range(200):
        ci = iv.quantile_ci(rng.exponential(1.0, 600), 0.99)
        hits.append(ci.lo <= math.log(100) <= ci.hi)
    assert ci.ok and np.mean(hits) >= 0.93
    nan = iv.quantile_ci([math.nan], 0.5)
    assert math.isnan(nan.lo) and not nan.ok and nan.n == 0


def _slow_phase_slices(rng, n_slices=UNITS, calls=40):
    """Slices whose calls share a slow phase: each slice's calls scaled by one multiplier (autocorrelated
    within the slice). The median of the slice p50s is 1.0 (both parts symmetric about it)."""
    mult = 1.0 + rng.normal(0, 0.05, n_slices)
    return [m + rng.normal(0, 0.02, calls) for m in mult]


def test_slices_as_units_cover_where_pooled_calls_do_not():
    rng = np.random.default_rng(5)
    unit_hits, pooled_hits = [], []
    for _ in range(200):
        slices = _slow_phase_slices(rng)
        cols = iv.interval_columns(slices, slices)
        unit_hits.append(cols["lat_p50_lo_ms"] <= 1.0 <= cols["lat_p50_hi_ms"])
        pooled = iv.quantile_ci(np.concatenate(slices), 0.5)  # the calls as if i.i.d.: far too narrow
        pooled_hits.append(pooled.lo <= 1.0 <= pooled.hi)
    assert np.mean(unit_hits) >= 0.93
    assert np.mean(pooled_hits) < 0.6


def test_interval_columns():
    rng = np.random.default_rng(2)
    lat = [rng.normal(3.0, 0.1, 50) for _ in range(15)]
    host = [x + 0.05 for x in lat]
    cols = iv.interval_columns(lat, host)
    assert tuple(cols) == iv.COLUMNS and cols["ci_units"] == 15
    for clock in ("lat", "host"):
        for s in iv.STATS:
            assert cols[f"{clock}_{s}_lo_ms"] <= cols[f"{clock}_{s}_hi_ms"]
    p50s = [np.median(x) for x in lat]
    ci = iv.unit_ci(p50s)
    assert cols["lat_p50_lo_ms"] == ci.lo and cols["lat_p50_hi_ms"] == ci.hi
    assert cols["lat_p50_halfwidth_pct"] == pytest.approx(100 * (ci.hi - ci.lo) / 2 / np.median(p50s))
    assert cols["host_p50_lo_ms"] == pytest.approx(ci.lo + 0.05)
    # one repeat of 5 slices: no honest 95% interval, NaN; no host clock at all: NaN
    few = iv.interval_columns(lat[:5], None)
    assert few["ci_units"] == 5 and math.isnan(few["lat_p50_lo_ms"]) and math.isnan(few["lat_p50_halfwidth_pct"])
    assert math.isnan(few["host_mean_hi_ms"])


def test_stopping_rule():
    rng = np.random.default_rng(3)
    steady = list(3.0 * (1 + rng.normal(0, 0.003, 15)))     # graphed-like: +-0.3%
    noisy = list(3.0 * (1 + rng.normal(0, 0.15, 15)))      # eager-like on a busy host: +-15%
    assert iv.tight_enough(steady, 2.0) and not iv.tight_enough(noisy, 2.0)
    assert not iv.tight_enough([3.0] * 5, 2.0)              # identical, but too few slices for 95%
    assert iv.plan_more(steady, 2.0, spent_s=1.5, max_s=10, max_slices=60) == (0, "target")
    more, why = iv.plan_more(noisy, 2.0, spent_s=1.5, max_s=10, max_slices=60)
    assert why is None and 1 <= more <= 45
    assert iv.plan_more(noisy, 2.0, spent_s=1.5, max_s=10, max_slices=60, step=5)[0] % 5 == 0
    assert iv.plan_more(noisy, 2.0, spent_s=10, max_s=10, max_slices=60) == (0, "budget")
    assert iv.plan_more(noisy, 2.0, spent_s=1.5, max_s=10, max_slices=15) == (0, "max_slices")
    assert iv.plan_more([3.0] * 3, 2.0, spent_s=0.3, max_s=10, max_slices=60) == (3, None)  # up to 6
    # the loop converges: keep adding slices of a 4%-spread variant until the 1% target or 200 slices
    vals = list(3.0 * (1 + rng.normal(0, 0.04, 15)))
    while True:
        more, why = iv.plan_more(vals, 1.0, spent_s=0.1 * len(vals), max_s=1e9, max_slices=200)
        if not more:
            break
        vals += list(3.0 * (1 + rng.normal(0, 0.04, more)))
    assert why in ("target", "max_slices") and (why != "target" or iv.tight_enough(vals, 1.0))


def test_slow_rounds():
    rng = np.random.default_rng(4)
    p50s = np.array([1.0, 2.0, 0.05])[:, None] * (1 + rng.normal(0, 0.01, (3, 15)))
    p50s[:, 4] *= 1.5          # a host slow phase: every variant slow
    p50s[0, 7] *= 1.5          # one variant slow alone: its own noise, not the host
    p50s[2, 9] = np.nan        # a variant not timed in a round
    p50s[:2, 9] *= 1.3
    slow = iv.slow_rounds(p50s)
    assert slow.tolist() == [i in (4, 9) for i in range(15)]
    assert not iv.slow_rounds(p50s[:1]).any()               # one variant cannot tell the host from itself
    assert iv.slow_rounds({"a": list(p50s[0]), "b": list(p50s[1][:6])})[4]
