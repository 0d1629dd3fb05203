"""95% intervals for the latencies a sweep reports, the rule that says when to stop timing, slow rounds.

Method. A variant is timed in slices spread over time (runner/engine/worker.py: `repeats` x `slices`, 15
by default); within a slice every call is timed alone. Calls inside a slice are NOT independent: the
host has slow phases of 0.1-12 s that raise every call in them 1.15-1.9x, so an interval computed from
the calls as if i.i.d. is far too narrow. The slice is the unit: each statistic (p50, p95, p99, mean) is
computed per slice, the row's value is the median across slices, and its interval is the distribution-
free confidence interval of that median from the order statistics of the slice values (the binomial
argument MLPerf LoadGen uses for its early-stopping tail bounds, and textbook nonparametric statistics):
with Y ~ Binomial(n, q) the number of values below the true q-quantile, the sorted values
x(1) <= ... <= x(n) give P(x(l) <= true quantile <= x(u)) >= P(l <= Y <= u-1). We take l and u with
each tail at most (1-conf)/2 (equal-tailed), so the coverage holds for any continuous distribution
(normal, heavy-tailed, bimodal alike) and errs wide on ties. It assumes the slices are independent,
which slices spread over time approximate; slow host rounds that hit every variant at once break it,
hence `slow_rounds` (the caller re-times those rounds rather than averaging them in).
The estimand of the `p95` interval is the p95 of a typical slice (a slice's p95 over its own calls), not
the p95 of all calls pooled; for p50 and mean the two agree closely.

Too few values. With n values the widest interval is [min, max], covering 1 - q^n - (1-q)^n; for the
median that reaches 95% at n = 6 (`min_units`). Below that `quantile_ci` clamps the bound it cannot
hold to min / max (both, for the median) and returns `.ok` False with the actual `.coverage`, and
`interval_columns` writes NaN (no interval rather than a 94% one labelled 95%); the report then prints
the value as before, and `tight_enough` says False.

API (numpy only):

    quantile_ci(values, q, conf=0.95) -> Interval          # Interval is a (lo, hi) tuple with .mid,
    unit_ci(unit_values, conf=0.95) -> Interval            #   .coverage, .n, .ok attributes
    interval_columns(slices_lat_ms, slices_host_ms, conf=0.95) -> dict   # the row's columns, COLUMNS
    halfwidth_pct(interval) -> float                       # (hi - lo) / 2 / mid, in %
    tight_enough(slice_p50s, target_pct, conf=0.95) -> bool
    plan_more(slice_p50s, target_pct, *, spent_s, max_s, max_slices, conf=0.95, step=1) -> (int, str | None)
    slow_rounds(p50s, factor=SLOW_FACTOR, min_variants=2) -> np.ndarray[bool]

The engine's loop: time a round of slices; re-time the rounds `slow_rounds` flags; then
`more, reason = plan_more(p50s_of_the_variant, target_pct, spent_s=..., max_s=..., max_slices=...)`;
time `more` slices (0: stop, and write `stop_reason=reason`, one of STOP_REASONS, with `target_pct` and
`slices_timed`); finally `row.update(interval_columns(lat_slices, host_slices))`.
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import numpy as np

STATS = ("p50", "p95", "p99", "mean")
STOP_REASONS = ("target", "budget", "max_slices")
SLOW_FACTOR = 1.2   # a round is slow when every variant in it reads >= this x its own median slice p50
COLUMNS = tuple([f"{clock}_{s}_{end}_ms" for clock in ("lat", "host") for s in STATS for end in ("lo", "hi")]
                + ["lat_p50_halfwidth_pct", "ci_units"])


class Interval(tuple):
    """(lo, hi); `mid` the point estimate (the sample quantile), `coverage` the binomial probability that
    [lo, hi] holds the true quantile, `n` the values used, `ok` whether coverage reached the asked conf."""

    def __new__(cls, lo: float, hi: float, mid: float, coverage: float, n: int, ok: bool):
        self = super().__new__(cls, (float(lo), float(hi)))
        self.mid, self.coverage, self.n, self.ok = float(mid), float(coverage), int(n), bool(ok)
        return self

    lo = property(lambda self: self[0])
    hi = property(lambda self: self[1])


_NONE = (math.nan, math.nan, math.nan, 0.0, 0, False)


def _binom_cdf(n: int, q: float) -> np.ndarray:
    """F(k) = P(Y <= k), k = 0..n, Y ~ Binomial(n, q), 0 < q < 1 (log-space: no overflow for large n)."""
    k = np.arange(n + 1, dtype=np.float64)
    lg = np.vectorize(math.lgamma)
    logpmf = lg(n + 1.0) - lg(k + 1.0) - lg(n - k + 1.0) + k * math.log(q) + (n - k) * math.log1p(-q)
    return np.minimum(np.cumsum(np.exp(logpmf)), 1.0)


@functools.lru_cache(maxsize=512)
def order_ranks(n: int, q: float, conf: float = 0.95) -> tuple[int, int, float, bool]:
    """1-based ranks (l, u) of the equal-tailed order-statistic interval for the q-quantile of n values,
    its coverage, and whether each tail could be held to (1-conf)/2 (else the rank is clamped to 1 / n)."""
    if n < 1 or not 0 < q < 1 or not 0 < conf < 1:
        raise ValueError(f"need n >= 1, 0 < q < 1, 0 < conf < 1 (n={n}, q={q}, conf={conf})")
    alpha = (1.0 - conf) / 2.0
    cdf = _binom_cdf(n, q)
    eps = 1e-12
    lows = np.nonzero(cdf[:n] <= alpha + eps)[0]          # F(l-1) <= alpha, l-1 in 0..n-1
    l = int(lows[-1]) + 1 if lows.size else 1
    ups = np.nonzero(cdf[:n] >= 1.0 - alpha - eps)[0]      # F(u-1) >= 1-alpha, u-1 in 0..n-1
    u = int(ups[0]) + 1 if ups.size else n
    l = min(l, u)
    # P(x(l) <= quantile) = P(Y >= l), P(quantile <= x(u)) = P(Y <= u-1): coverage F(u-1) - F(l-1)
    return l, u, float(cdf[u - 1] - cdf[l - 1]), bool(lows.size and ups.size)


def quantile_ci(values: Sequence[float], q: float, conf: float = 0.95) -> Interval:
    """Distribution-free `conf` interval for the q-quantile of i.i.d. `values` (non-finite ones dropped).
    With too few values for `conf`, the bound that cannot hold is min / max, `.ok` is False and `.coverage`
    says what the interval does cover; no values: all NaN."""
    v = np.sort(np.asarray(values, dtype=np.float64).ravel())
    v = v[np.isfinite(v)]
    if v.size == 0:
        return Interval(*_NONE)
    l, u, cov, ok = order_ranks(v.size, q, conf)
    return Interval(v[l - 1], v[u - 1], np.quantile(v, q), cov, v.size, ok)


def unit_ci(unit_values: Sequence[float], conf: float = 0.95) -> Interval:
    """The interval of a statistic computed once per unit (slice): its value is the median across units
    (`.mid`), its interval the order-statistic interval of that median."""
    return quantile_ci(unit_values, 0.5, conf)


def halfwidth_pct(ci: Interval) -> float:
    """Half the interval's width relative to its point estimate, in %; NaN when there is no honest interval."""
    if not ci.ok or not math.isfinite(ci.mid) or ci.mid <= 0:
        return math.nan
    return 100.0 * (ci.hi - ci.lo) / 2.0 / ci.mid


def _per_slice(slices: list) -> dict[str, list[float]]:
    """p50, p95, p99 (percentiles as runner/bench.stats takes them) and mean of every non-empty slice, one
    list per statistic (non-finite times dropped; slices of one length in one numpy call)."""
    by_size: dict[int, list[np.ndarray]] = {}
    for x in slices:
        a = np.asarray(x, dtype=np.float64).ravel()
        a = a[np.isfinite(a)]
        if a.size:
            by_size.setdefault(a.size, []).append(a)
    out: dict[str, list[float]] = {s: [] for s in STATS}
    for group in by_size.values():
        stack = np.vstack(group)
        p50, p95, p99 = np.percentile(stack, [50, 95, 99], axis=1)
        for s, v in zip(STATS, (p50, p95, p99, stack.mean(axis=1))):
            out[s] += v.tolist()
    return out


def interval_columns(slices_lat_ms: list, slices_host_ms: list | None, conf: float = 0.95) -> dict:
    """The row's interval columns (COLUMNS) from one variant's slices (each an array of per-call times):
    `{lat,host}_{p50,p95,p99,mean}_{lo,hi}_ms` (NaN where fewer slices than `conf` needs, see the module
    docstring), `lat_p50_halfwidth_pct` and `ci_units` (the number of non-empty slices of the event clock)."""
    out: dict = {}
    for clock, slices in (("lat", slices_lat_ms), ("host", slices_host_ms or [])):
        per = _per_slice(slices)
        for s in STATS:
            ci = unit_ci(per[s], conf)
            out[f"{clock}_{s}_lo_ms"] = ci.lo if ci.ok else math.nan
            out[f"{clock}_{s}_hi_ms"] = ci.hi if ci.ok else math.nan
            if clock == "lat" and s == "p50":
                out["lat_p50_halfwidth_pct"] = halfwidth_pct(ci)
                out["ci_units"] = len(per["p50"])
    return {c: out[c] for c in COLUMNS}


def min_units(q: float = 0.5, conf: float = 0.95) -> int:
    """The fewest values for which `quantile_ci` can reach `conf` (6 for the median at 95%)."""
    n = 1
    while not order_ranks(n, q, conf)[3]:
        n += 1
    return n


def tight_enough(slice_p50s: Sequence[float], target_pct: float, conf: float = 0.95) -> bool:
    """True when the p50 interval across slices exists and its half-width is at most target_pct %."""
    hw = halfwidth_pct(unit_ci(slice_p50s, conf))
    return math.isfinite(hw) and hw <= target_pct


def plan_more(slice_p50s: Sequence[float], target_pct: float, *, spent_s: float, max_s: float, max_slices: int,
              conf: float = 0.95, step: int = 1) -> tuple[int, str | None]:
    """How many more slices to time, and why to stop: (0, 'target' | 'max_slices' | 'budget') or (k, None).

    `spent_s` is the time the variant's slices took so far (its own share); a slice is assumed to cost
    their mean. The projection uses half-width ~ 1/sqrt(n): n_needed = n * (half-width / target)^2, at least
    enough slices for an honest interval (`min_units`), rounded up to a multiple of `step` (e.g. slices
    per round), then capped by `max_slices` and by what the budget `max_s` leaves."""
    n = int(np.isfinite(np.asarray(slice_p50s, dtype=np.float64)).sum())
    if tight_enough(slice_p50s, target_pct, conf):
        return 0, "target"
    if n >= max_slices:
        return 0, "max_slices"
    per_slice = spent_s / n if n else 0.0
    if n and spent_s + per_slice > max_s:
        return 0, "budget"
    hw = halfwidth_pct(unit_ci(slice_p50s, conf))
    need = max(min_units(0.5, conf), n + 1)
    if math.isfinite(hw) and target_pct > 0:
        need = max(need, math.ceil(n * (hw / target_pct) ** 2))
    more = need - n
    more = -(-more // step) * step if step > 1 else more
    more = min(more, max_slices - n)
    if per_slice > 0:
        more = min(more, int((max_s - spent_s) // per_slice))
    return max(more, 1), None


def slow_rounds(p50s, factor: float = SLOW_FACTOR, min_variants: int = 2) -> np.ndarray:
    """Which rounds were a host slow phase: every variant timed in the round read >= `factor` x its own
    median over rounds (one variant alone cannot tell the host from itself: at least `min_variants`).

    `p50s`: variants x rounds (NaN where a variant was not timed in a round), or {variant: [p50 per round]}.
    Returns a bool per round; the caller re-times those rounds and keeps the new slices instead."""
    if isinstance(p50s, dict):
        rows = [np.asarray(v, dtype=np.float64) for v in p50s.values()]
        width = max((r.size for r in rows), default=0)
        p50s = np.array([np.pad(r, (0, width - r.size), constant_values=np.nan) for r in rows]).reshape(-1, width)
    a = np.asarray(p50s, dtype=np.float64)
    if a.ndim != 2 or a.size == 0:
        return np.zeros(a.shape[-1] if a.ndim else 0, dtype=bool)
    with np.errstate(all="ignore"):
        med = np.nanmedian(np.where(np.isfinite(a), a, np.nan), axis=1, keepdims=True)
        ratio = a / med
    timed = np.isfinite(ratio)
    return (timed.sum(axis=0) >= min_variants) & np.all(~timed | (ratio >= factor), axis=0)


# ---------------------------------------------------------------- across processes

Z95 = 1.959964  # the normal 97.5% point: the across-process interval is a normal one in log latency
CHI2_1_MEDIAN = 0.454936  # the median of a chi-square with one degree of freedom (robust pooling below)


def _log_se(lo, hi) -> float:
    """A within-process interval [lo, hi] read back as a standard error of log latency (0 without one)."""
    lo, hi = float(lo), float(hi)
    return math.log(hi / lo) / (2 * Z95) if math.isfinite(lo) and math.isfinite(hi) and 0 < lo <= hi else 0.0


def across_processes(summary, twins) -> "pd.DataFrame":
    """The summary's intervals widened to hold a fresh process's value: a copy of `summary` (one line per
    variant, runner/results.summarize) with every `{lat,host}_{stat}_{lo,hi}_ms` replaced where the variant
    was timed in a second process too (`twins`: rows of RECHECK_SCHEMA from runner/engine's twin phase),
    plus `ci_processes` (processes behind the interval) and `between_pct` (the between-process s.d. used, %).

    Why: slices inside one process cannot see what changes from one process to the next (on an H200 a
    graphed ShuffleNet read 8-9% apart in two processes whose own intervals were 0.3% wide; eager rows
    18-28%), so a one-process interval held only 44% of re-checks (reports/h200-1gpu-engine/).
    Model, in log latency: a process shifts the whole distribution by an effect of s.d. sigma; each process
    measures its median with the within-process error of its slices (the order-statistic interval read as a
    normal one). Each variant's two processes give sigma^2 ~ d^2/2 less the within part (d their gap);
    sigma^2 is then the largest of: the variant's own d^2/2; the mean estimate over its model's variants of
    the same kind (eager, graphed, compiled: one architecture jumps between processes where another does
    not, and two processes of one variant can miss a jump the others show); and a robust pool over every
    variant of that kind (the median estimate over the median of chi-square(1)). The interval is centred
    between the two processes with the spread of the difference between that centre and a fresh process
    (1.5 sigma^2 + the within terms). It is checked, not assumed: the re-check phase (a third set of
    processes) reports the fraction of re-checks inside it."""
    import pandas as pd

    out = summary.copy().reset_index(drop=True)
    n = len(out)
    col = {c: pd.to_numeric(out[c], errors="coerce").to_numpy(dtype=float, copy=True) if c in out
           else np.full(n, np.nan)
           for c in [f"{k}_{s}_{e}ms" for k in ("lat", "host") for s in STATS for e in ("", "lo_", "hi_")]}
    out["ci_processes"], out["between_pct"] = np.where(np.isfinite(col["lat_p50_lo_ms"]), 1, 0), np.nan
    if twins is None or twins.empty or out.empty:
        return out
    tw = twins[twins["status"] == "ok"].drop_duplicates("variant_id", keep="last").set_index("variant_id")
    tw = tw.reindex(out["variant_id"])
    ok = out["status"].eq("ok").to_numpy() & tw.index.notna()
    kind = np.where(out["compile"].fillna("none").ne("none"), "compiled",
                    np.where(out["cuda_graph"].fillna(False).astype(bool), "graphed", "eager"))
    model = (out["model"].fillna("") if "model" in out else pd.Series([""] * n)).to_numpy()
    se_twin = np.vectorize(_log_se)(pd.to_numeric(tw["recheck_p50_lo_ms"], errors="coerce").to_numpy(dtype=float),
                                    pd.to_numeric(tw["recheck_p50_hi_ms"], errors="coerce").to_numpy(dtype=float))
    for clock, twin_col in (("lat", "recheck_p50_ms"), ("host", "recheck_host_p50_ms")):
        a, b = col[f"{clock}_p50_ms"], pd.to_numeric(tw[twin_col], errors="coerce").to_numpy(dtype=float)
        use = ok & (a > 0) & (b > 0)
        se_a = np.vectorize(_log_se)(col[f"{clock}_p50_lo_ms"], col[f"{clock}_p50_hi_ms"])
        se_b = se_twin if clock == "lat" else se_a
        with np.errstate(all="ignore"):
            d = np.log(a / b)
        est = np.maximum(0.0, d * d / 2 - (se_a ** 2 + se_b ** 2) / 2)
        for i in np.nonzero(use)[0]:
            same_kind = use & (kind == kind[i])
            same_model = same_kind & (model == model[i])
            var = max(d[i] ** 2 / 2, float(est[same_model].mean()) if same_model.sum() >= 2 else 0.0,
                      float(np.median(est[same_kind])) / CHI2_1_MEDIAN if same_kind.sum() >= 3 else 0.0)
            if clock == "lat":
                out.loc[i, ["ci_processes", "between_pct"]] = [2, 100.0 * math.sqrt(var)]
            for s in STATS:
                value = col[f"{clock}_{s}_ms"][i]
                if not value > 0:
                    continue
                se_s = se_a[i] if s == "p50" else _log_se(col[f"{clock}_{s}_lo_ms"][i], col[f"{clock}_{s}_hi_ms"][i])
                h = Z95 * math.sqrt(1.5 * var + se_s ** 2 / 4 + se_b[i] ** 2 / 4 + (se_s ** 2 + se_b[i] ** 2) / 2)
                centre = math.log(value) - d[i] / 2
                col[f"{clock}_{s}_lo_ms"][i], col[f"{clock}_{s}_hi_ms"][i] = math.exp(centre - h), math.exp(centre + h)
    for c in [f"{k}_{s}_{e}_ms" for k in ("lat", "host") for s in STATS for e in ("lo", "hi")]:
        if c in out:
            out[c] = col[c]
    twice = out["ci_processes"].to_numpy() == 2
    hw = 100.0 * (col["lat_p50_hi_ms"] - col["lat_p50_lo_ms"]) / 2 / col["lat_p50_ms"]
    out["lat_p50_halfwidth_pct"] = np.where(twice, hw, out.get("lat_p50_halfwidth_pct", np.nan))
    return out

