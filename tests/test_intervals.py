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


# ---------------------------------------------------------------- the report's use of the intervals

def _summary_rows() -> pd.DataFrame:
    """Two brief rows with intervals (B1, O1: overlapping p50s) and one from before the intervals (B2)."""
    base = {"status": "ok", "model": "mobilenet", "memory_format": "contiguous", "compile": "none",
            "cuda_graph": False, "bn_fold": False, "top1_pct": 90.0, "size_mb": 6.0, "repeats": 3,
            "top1_drift_pts": 0.0, "lat_p99_ms": 4.2, "host_p50_ms": 3.5, "unstable": False, "compile_s": None,
            "gpu_exclusive": True, "label": "MobileNetV3", "error": None}
    b1 = dict(base, variant_id="b1", brief_id="B1", precision="fp32", lat_mean_ms=3.42, lat_p50_ms=3.3,
              lat_p95_ms=3.8, host_p95_ms=3.9, lat_mean_lo_ms=3.1, lat_mean_hi_ms=3.9, lat_p50_lo_ms=3.2,
              lat_p50_hi_ms=3.45, lat_p95_lo_ms=3.6, lat_p95_hi_ms=4.1, host_p95_lo_ms=3.7, host_p95_hi_ms=4.3,
              lat_p99_lo_ms=4.0, lat_p99_hi_ms=4.6, host_p50_lo_ms=3.3, host_p50_hi_ms=3.6, ci_units=15)
    o1 = dict(b1, variant_id="o1", brief_id="O1", precision="fp16", lat_mean_ms=3.35, lat_p50_ms=3.25,
              lat_p50_lo_ms=3.15, lat_p50_hi_ms=3.4, host_p95_ms=3.85, top1_pct=89.9)
    b2 = dict(base, variant_id="b2", brief_id="B2", model="resnet18", precision="fp32", lat_mean_ms=1.5,
              lat_p50_ms=1.45, lat_p95_ms=1.6, host_p95_ms=1.7)
    return pd.DataFrame([b1, o1, b2])


def test_brief_and_all_tables_render_intervals():
    from runner import report_tables
    s = _summary_rows()
    brief = "\n".join(report_tables._brief_section(s))
    assert "| 3.420 [3.100, 3.900] | 3.800 [3.600, 4.100] |" in brief      # B1: mean and p95 with intervals
    assert "| 1.500 | 1.600 |" in brief                                    # B2, an older row: as before
    assert "95% interval" in brief and "15 slices" in brief
    everything = "\n".join(report_tables._all_section(s.assign(p50_cv_pct=1.0)))
    assert "3.300 [3.200, 3.450]" in everything and "3.500 [3.300, 3.600]" in everything
    old = "\n".join(report_tables._brief_section(s[s["variant_id"] == "b2"]))
    assert "[" not in old.split("| ID |")[1] and "interval" not in old       # no intervals: nothing added


def test_decisions_and_choice_say_not_distinguishable():
    from runner import decisions, report_tables
    s = _summary_rows()
    d = decisions.decide(s).set_index("variant_id")
    assert d.loc["o1", "parent_id"] == "b1" and "not distinguishable" in d.loc["o1", "decision"]
    faster = s.copy()
    faster.loc[faster["variant_id"] == "o1", ["lat_p50_lo_ms", "lat_p50_hi_ms"]] = [2.0, 2.2]
    assert decisions.decide(faster).set_index("variant_id").loc["o1", "decision"] == "keep"
    pick = decisions.choose(s, 85.0)
    assert pick["chosen"]["variant_id"] == "b2" and pick["runner_up"]["variant_id"] == "o1"
    assert pick["runner_up_overlaps"] is None                              # b2 has no interval
    pick = decisions.choose(s[s["variant_id"] != "b2"], 85.0)
    assert pick["chosen"]["variant_id"] == "o1" and pick["runner_up_overlaps"] is True
    text = "\n".join(report_tables._chosen_section(s[s["variant_id"] != "b2"], decisions.decide(s), 85.0))
    assert "not distinguishable" in text and "p95 3.800 [3.600, 4.100] ms" in text


def test_recheck_calibration_line():
    from runner import agreement, report_trust
    s = _summary_rows()
    timed = {"status": "ok", "recheck_repeats": 3, "recheck_slices": 5}
    rechecks = pd.DataFrame([{"variant_id": "b1", "recheck_p50_ms": 3.40, **timed},     # inside
                             {"variant_id": "o1", "recheck_p50_ms": 3.60, **timed},     # outside
                             {"variant_id": "b2", "recheck_p50_ms": 1.44, **timed}])    # no interval
    table = agreement.agreement(s, rechecks)
    assert table.set_index("variant_id")["inside"].tolist() == [True, False, None]
    text = "\n".join(report_trust.recheck_section(table, True))
    assert "inside the in-sweep 95% interval for 1 of 2 re-checked rows (50%" in text
    assert "3.3000 [3.2000, 3.4500]" in text and "| **no** |" in text
    no_interval = agreement.agreement(s, rechecks[rechecks["variant_id"] == "b2"])
    assert "Calibration" not in "\n".join(report_trust.recheck_section(no_interval, True))


def test_plots_draw_interval_bars(tmp_path):
    from runner.plots import plot_pareto
    from runner.plots import acc_vs_latency, ci_errors
    s = _summary_rows()
    err = ci_errors(s, "lat_p95_ms")
    assert err.shape == (2, 3) and err[:, 0] == pytest.approx([0.2, 0.3]) and (err[:, 2] == 0).all()
    assert ci_errors(s.drop(columns=["lat_p95_lo_ms"]), "lat_p95_ms") is None
    fig = acc_vs_latency(s, None, 85.0, tmp_path / "a.png", cpu=True)
    assert (tmp_path / "a.png").exists() and fig.axes[0].collections
    fig = plot_pareto(s, "top1_pct", "lat_p95_ms", label_col="variant_id")
    assert any(len(c.get_segments()) == 3 for c in fig.axes[0].collections if hasattr(c, "get_segments"))


def test_latency_sections_render_intervals():
    """A target row shows its interval, says when the interval crosses the bar, and is met on the CUDA events
    only when the caller's (host-clock) p95 is over 1.5x the event one (issue 24)."""
    from runner import report_latency
    ok = pd.DataFrame([dict(variant_id="fast", top1_pct=86.0, lat_p50_ms=0.022, lat_p95_ms=0.024,
                            lat_p95_lo_ms=0.023, lat_p95_hi_ms=0.026, lat_p50_lo_ms=0.021, lat_p50_hi_ms=0.023,
                            host_p95_ms=0.040, kernels_per_forward=3.0, floor_p50_us=8.0, status="ok")])
    targets = "\n".join(report_latency.targets_lines(ok))
    assert ("**met** by `fast` (86.00%, p95 24.0 [23.0, 26.0] us; not certainly: its 95% interval reaches 26.0 us; "
            "host-clock p95 1.67x the event one, **over 1.5x**: met on events only)") in targets
    assert "fastest at >= 90% is" not in targets and "most accurate within 40 us is `fast` at 86.00%" in targets
    assert "| `fast` | 22.0 [21.0, 23.0] | 3 |" in "\n".join(report_latency.breakdown_section(ok))
    ok["host_p95_ms"] = 0.030  # 1.25x: met outright
    assert "host-clock p95 1.25x the event one)" in "\n".join(report_latency.targets_lines(ok))


def test_retiming_slow_rounds_restores_coverage():
    """Host slow phases (1.15-1.9x, spanning 1-3 rounds, hitting every variant) pull the interval off the quiet
    median; re-timing the rounds slow_rounds flags brings the coverage back to its 95%."""
    rng = np.random.default_rng(0)
    base, sd = np.array([3.0, 1.0, 0.05]), np.array([0.04, 0.01, 0.01])   # an eager and two graphed variants
    hits = {"all": [], "retimed": []}
    for _ in range(400):
        slow, i = np.ones(UNITS), 0
        while i < UNITS:
            k = int(rng.integers(1, 4)) if rng.random() < 0.1 else 0
            slow[i:i + k] = rng.uniform(1.15, 1.9)
            i += max(k, 1)
        p50s = base[:, None] * (1 + rng.normal(0, sd[:, None], (3, UNITS))) * slow
        redo = base[:, None] * (1 + rng.normal(0, sd[:, None], (3, UNITS)))
        retimed = np.where(iv.slow_rounds(p50s)[None, :], redo, p50s)
        for name, data in (("all", p50s), ("retimed", retimed)):
            hits[name] += [iv.unit_ci(data[v]).lo <= base[v] <= iv.unit_ci(data[v]).hi for v in range(3)]
    assert np.mean(hits["retimed"]) >= 0.93 and np.mean(hits["all"]) < np.mean(hits["retimed"]) - 0.02


def _two_process_sweep(rng, n_variants: int, effect, within_pct: float, graphed: bool):
    """A summary and its twins as a sweep writes them: each variant's true latency, shifted in each process by
    a draw of `effect(rng)` (log), measured with a within-process interval of +-within_pct; plus a third
    process's p50 per variant (what the re-check reads)."""
    rows, twins, third = [], [], []
    for k in range(n_variants):
        true = 0.1 * (1 + k)
        a, b, c = (true * math.exp(effect(rng)) * math.exp(rng.normal(0, within_pct / 196)) for _ in range(3))
        w = within_pct / 100
        rows.append({"variant_id": f"v{k}", "model": f"m{k % 5}", "status": "ok", "cuda_graph": graphed,
                     "compile": "none",
                     "lat_p50_ms": a, "lat_p50_lo_ms": a * (1 - w), "lat_p50_hi_ms": a * (1 + w),
                     "lat_p95_ms": a * 1.1, "lat_p95_lo_ms": a * 1.1 * (1 - w), "lat_p95_hi_ms": a * 1.1 * (1 + w)})
        twins.append({"variant_id": f"v{k}", "status": "ok", "recheck_p50_ms": b, "recheck_p50_lo_ms": b * (1 - w),
                      "recheck_p50_hi_ms": b * (1 + w), "recheck_host_p50_ms": None})
        third.append(c)
    return pd.DataFrame(rows), pd.DataFrame(twins), np.array(third)


@pytest.mark.parametrize("case", ["normal", "heavy", "bimodal"])
def test_two_process_intervals_hold_a_third_process(case):
    """The calibration the re-check makes, on synthetic sweeps with known process effects: a third process's
    p50 inside the two-process interval for >= 90% of variants, where the one-process interval holds far
    fewer (process effects 5x the within-process error, as graphed rows on an H200 showed)."""
    effects = {"normal": lambda r: r.normal(0, 0.01),
               "heavy": lambda r: 0.01 * r.standard_t(3),
               "bimodal": lambda r: r.choice([0.0, 0.08]) + r.normal(0, 0.003)}   # ShuffleNet's 8% jumps
    rng = np.random.default_rng(7)
    inside_two = inside_one = total = 0
    for _ in range(20):
        summary, twins, third = _two_process_sweep(rng, 25, effects[case], within_pct=0.2, graphed=True)
        out = iv.across_processes(summary, twins)
        assert (out["ci_processes"] == 2).all() and (out["lat_p95_hi_ms"] > out["lat_p95_ms"]).all()
        inside_two += int(((out["lat_p50_lo_ms"] <= third) & (third <= out["lat_p50_hi_ms"])).sum())
        inside_one += int(((summary["lat_p50_lo_ms"] <= third) & (third <= summary["lat_p50_hi_ms"])).sum())
        total += len(third)
    assert inside_two / total >= 0.90, (case, inside_two / total)
    assert inside_one / total < 0.6, (case, inside_one / total)


def test_two_process_interval_holds_both_processes_and_keeps_classes_apart():
    """A variant whose two processes read 9% apart gets an interval that holds both, however steady the rest of
    its kind (other models); eager variants' spread does not widen graphed ones; a model's variants share its
    spread; no twin: the one-process interval, said so."""
    rows = [{"variant_id": f"g{k}", "model": f"g{k}", "status": "ok", "cuda_graph": True, "compile": "none",
             "lat_p50_ms": 1.0,
             "lat_p50_lo_ms": 0.998, "lat_p50_hi_ms": 1.002} for k in range(6)]
    rows += [{"variant_id": f"e{k}", "model": "e", "status": "ok", "cuda_graph": False, "compile": "none",
              "lat_p50_ms": 3.0,
              "lat_p50_lo_ms": 2.7, "lat_p50_hi_ms": 3.3} for k in range(6)]
    rows.append({"variant_id": "alone", "model": "a", "status": "ok", "cuda_graph": True, "compile": "none",
                 "lat_p50_ms": 1.0,
                 "lat_p50_lo_ms": 0.99, "lat_p50_hi_ms": 1.01})
    twin = {f"g{k}": 1.0 + 0.001 * (k - 2) for k in range(6)} | {f"e{k}": 3.0 * (1.3 if k % 2 else 0.75)
                                                              for k in range(6)}
    twin["g5"] = 0.91  # the ShuffleNet case
    twins = pd.DataFrame([{"variant_id": v, "status": "ok", "recheck_p50_ms": p, "recheck_p50_lo_ms": p * 0.998,
                           "recheck_p50_hi_ms": p * 1.002, "recheck_host_p50_ms": None} for v, p in twin.items()])
    out = iv.across_processes(pd.DataFrame(rows), twins).set_index("variant_id")
    assert out.loc["g5", "lat_p50_lo_ms"] < 0.91 and out.loc["g5", "lat_p50_hi_ms"] > 1.0
    assert out.loc["g0", "lat_p50_halfwidth_pct"] < 2.0 < out.loc["e0", "lat_p50_halfwidth_pct"]
    assert out.loc["e0", "between_pct"] == out.loc["e1", "between_pct"]  # one model: its variants' mean
    assert out.loc["alone", "ci_processes"] == 1 and out.loc["alone", "lat_p50_lo_ms"] == 0.99
    assert iv.across_processes(pd.DataFrame(rows), None)["ci_processes"].eq(1).all()
