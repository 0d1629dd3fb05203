"""Can a sweep's numbers be trusted? The re-check's agreement table, and the row flags.

Every sweep ends by timing some of its own rows again, in new actor processes (runner/engine/bench_phase.py):
the brief's named rows, the chosen variant and `bench.recheck` others drawn at random (seeded:
runner/decisions.recheck_sample). `agreement(summary, rechecks)` compares the in-sweep p50 with the
re-check's; a row outside tolerance is flagged wherever it appears. `host_gap` flags a row whose host-clock
time (what a caller waits) far exceeds its CUDA-event time: the sign of contention that event time alone hides.
"""
from __future__ import annotations

import pandas as pd

from runner.report_format import _missing

# In-sweep p50 / re-check p50 must stay within these (eager rows are dispatch-bound and noisier).
TOLERANCE = {"graph": 0.05, "eager": 0.10}
GRAPHING_COMPILE = ("reduce-overhead", "max-autotune")
# host p50 > HOST_GAP_FACTOR x event p50 + HOST_GAP_SLACK_MS: a caller waits far longer than the GPU works
# (the slack covers the ~10-20 us a synchronize costs, which dominates the ratio of a 40 us graph).
HOST_GAP_FACTOR = 1.5
HOST_GAP_SLACK_MS = 0.03


def host_gap(row) -> bool:
    h, e = row.get("host_p50_ms"), row.get("lat_p50_ms")
    return not _missing(h) and not _missing(e) and float(h) > HOST_GAP_FACTOR * float(e) + HOST_GAP_SLACK_MS


def rank_latency(row) -> float:
    """What the chosen model is ranked on: host-clock p95 (what a caller waits), event p95 without one."""
    h = row.get("host_p95_ms")
    return float(row.get("lat_p95_ms")) if _missing(h) else float(h)


def rank_interval(row) -> tuple[float, float] | None:
    """The 95% interval (runner/intervals.py) of what rank_latency ranks on, None where the row has none."""
    clock = "lat" if _missing(row.get("host_p95_ms")) else "host"
    lo, hi = row.get(f"{clock}_p95_lo_ms"), row.get(f"{clock}_p95_hi_ms")
    return None if _missing(lo) or _missing(hi) else (float(lo), float(hi))


def overlaps(a: tuple[float, float] | None, b: tuple[float, float] | None) -> bool | None:
    """Do two intervals share a point (then the two values are not distinguishable)? None if either is missing."""
    if a is None or b is None:
        return None
    return a[0] <= b[1] and b[0] <= a[1]


def agreement(summary: pd.DataFrame, rechecks: pd.DataFrame) -> pd.DataFrame:
    """One line per re-checked variant: in-sweep p50, re-check p50, their ratio, the tolerance, within?, the
    re-check's repeats and slices per repeat, the in-sweep 95% p50 interval and `inside` (the re-check p50 inside it: the intervals' calibration test; None without
    one), and the re-check's own interval."""
    cols = ["variant_id", "brief_id", "kind", "sweep_p50_ms", "recheck_p50_ms", "ratio", "tolerance", "within",
            "recheck_repeats", "recheck_slices", "sweep_p50_lo_ms", "sweep_p50_hi_ms", "inside",
            "recheck_p50_lo_ms", "recheck_p50_hi_ms"]
    if rechecks is None or rechecks.empty or summary.empty:
        return pd.DataFrame(columns=cols)
    ok = rechecks[rechecks["status"] == "ok"].drop_duplicates("variant_id", keep="last")
    rows = []
    for _, r in ok.iterrows():
        s = summary[summary["variant_id"] == r["variant_id"]]
        if s.empty:
            continue
        s = s.iloc[0]
        kind = "graph" if bool(s.get("cuda_graph")) or str(s.get("compile")) in GRAPHING_COMPILE else "eager"
        p50 = float(r["recheck_p50_ms"])
        ratio = float(s["lat_p50_ms"]) / p50
        lo, hi = s.get("lat_p50_lo_ms"), s.get("lat_p50_hi_ms")
        lo, hi = (None, None) if _missing(lo) or _missing(hi) else (float(lo), float(hi))
        rows.append({"variant_id": r["variant_id"], "brief_id": s.get("brief_id"), "kind": kind,
                     "sweep_p50_ms": float(s["lat_p50_ms"]), "recheck_p50_ms": p50,
                     "ratio": ratio, "tolerance": TOLERANCE[kind], "within": abs(ratio - 1) <= TOLERANCE[kind],
                     "recheck_repeats": r.get("recheck_repeats"), "recheck_slices": r.get("recheck_slices"),
                     "sweep_p50_lo_ms": lo, "sweep_p50_hi_ms": hi, "inside": None if lo is None else lo <= p50 <= hi,
                     "recheck_p50_lo_ms": r.get("recheck_p50_lo_ms"), "recheck_p50_hi_ms": r.get("recheck_p50_hi_ms")})
    return pd.DataFrame(rows, columns=cols)


def flags(row, disagreeing: set[str]) -> str:
    """Short flags for a row, shown next to its id in every table: what a reader must know first."""
    out = []
    if row.get("variant_id") in disagreeing:
        out.append("re-check disagrees")
    if host_gap(row):
        out.append("host >> event")
    if not _missing(row.get("unstable")) and bool(row["unstable"]):
        out.append("unstable")
    if not _missing(row.get("gpu_exclusive")) and not bool(row["gpu_exclusive"]):
        out.append("GPU not exclusive")
    ev = row.get("eval_error")
    if isinstance(ev, str) and ev:
        out.append("eval failed")
    return ", ".join(out)
