"""Timing rounds in which the whole host ran slow, told apart from variants that are unstable on their own.

A bench task times its variants round-robin (runner/round_robin.py): round r holds repeat r of every
variant of the task, one after another, within seconds. A variant that is unstable by itself shows it in its
own repeats; a slow phase of the host (reports/h200-neighbour/: seconds in which launch-bound code reads up
to 1.9x with nothing else running) shows in every variant of a round at once. So, for each round of a task
that timed at least two variants: its *factor* is the median over those variants of (the variant's p50 in
that repeat / its median p50 over repeats). A round at or over SLOW_ROUND is a slow host round; an unstable
row (CV of p50 over the sweep's bound) whose every repeat above its median ran in one is unstable through
the host.

Rows timed before round-robin (no `timing_order`) had their repeats back to back: a round of them is not one
moment of the host, and they are left out.
"""
from __future__ import annotations

import pandas as pd

SLOW_ROUND = 1.15  # the slow windows seen on the lent H200s read 1.3-1.9x; the normal spread stays under 1.1x


def _round_robin_ok(results: pd.DataFrame) -> pd.DataFrame:
    """The ok rows timed round-robin, with `ray_node_id` filled ("" where a row has none)."""
    if results.empty or "timing_order" not in results:
        return results.iloc[0:0]
    rr = results[(results["timing_order"] == "round-robin") & (results["status"] == "ok")].copy()
    rr["ray_node_id"] = rr["ray_node_id"].fillna("") if "ray_node_id" in rr else ""
    return rr


def rounds(results: pd.DataFrame) -> pd.DataFrame:
    """One line per round of a task (node, process) that timed two or more variants round-robin: node, pid,
    round, variants, factor, slow."""
    cols = ["ray_node_id", "pid", "round", "variants", "factor", "slow"]
    rr = _round_robin_ok(results)
    if rr.empty:
        return pd.DataFrame(columns=cols)
    median = rr.groupby("variant_id")["lat_p50_ms"].transform("median")
    rr["ratio"] = rr["lat_p50_ms"] / median
    out = (rr.groupby(["ray_node_id", "pid", "repeat"])
           .agg(variants=("variant_id", "nunique"), factor=("ratio", "median")).reset_index()
           .rename(columns={"repeat": "round"}))
    out = out[out["variants"] >= 2].reset_index(drop=True)
    out["slow"] = out["factor"] >= SLOW_ROUND
    return out[cols]


def unstable_through_host(results: pd.DataFrame, table: pd.DataFrame, cv_bound_pct: float) -> list[str]:
    """Variants over the CV bound whose every repeat above their median p50 ran in a slow round of `table`
    (what rounds() returned)."""
    slow = table[table["slow"]]
    slow_keys = set(zip(slow["ray_node_id"], slow["pid"], slow["round"]))
    out = []
    for vid, g in _round_robin_ok(results).groupby("variant_id", sort=True):
        if not (g["lat_cv_pct"] > cv_bound_pct).any():
            continue
        high = g[g["lat_p50_ms"] > g["lat_p50_ms"].median()]
        if len(high) and all(k in slow_keys for k in zip(high["ray_node_id"], high["pid"], high["repeat"])):
            out.append(vid)
    return out


def section_lines(results: pd.DataFrame, cv_bound_pct: float) -> list[str]:
    """The report's paragraph on the host's slow rounds ([] when no row was timed round-robin in a group)."""
    table = rounds(results)
    if table.empty:
        return []
    slow = table[table["slow"]]
    n_unstable = int(results.loc[results["status"] == "ok"].groupby("variant_id")["lat_cv_pct"].first()
                     .gt(cv_bound_pct).sum()) if "lat_cv_pct" in results else 0
    through = unstable_through_host(results, table, cv_bound_pct)
    lines = [f"**The host's rounds.** Each bench task timed its variants round-robin; a round in which the "
             f"median variant read {SLOW_ROUND:.2f}x or more of its own median p50 is a slow phase of the host, "
             f"not of a variant (runner/host_rounds.py). {len(slow)} of {len(table)} rounds were slow"
             + (f" (factors {slow['factor'].min():.2f}-{slow['factor'].max():.2f})" if len(slow) else "")
             + f"; {len(through)} of the {n_unstable} unstable row(s) are unstable only through them"
             + (": " + ", ".join(f"`{v}`" for v in through) if through else "") + ".", ""]
    return lines
