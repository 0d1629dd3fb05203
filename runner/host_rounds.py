"""Timing rounds in which the whole host ran slow, told apart from variants that are unstable on their own.

A bench task times its variants round-robin, each repeat in slices spread over the task
(runner/engine/worker.py): a *round* is one slice of one repeat of every variant of the task, timed one after
another within a second or two. A variant that is unstable by itself shows it in its own slices; a slow phase
of the host (docs/investigations/h200-neighbour/, reports/h200-1gpu-default/: stretches of 0.1-12 s in which
launch-bound code reads up to 1.9x with nothing else running) shows in every variant of a round at once. So,
for each round of a task that timed at least two variants: its *factor* is the median over those variants of
(the variant's p50 in that slice / its median slice p50). A round at or over SLOW_ROUND is a slow host round;
an unstable row (CV of p50 over the sweep's bound) is unstable through the host when its repeats, each taken
without its slices in slow rounds, are within the bound.
"""
from __future__ import annotations

import json

import pandas as pd

from runner.results import cv_pct

SLOW_ROUND = 1.15  # the slow windows seen on the lent H200s read 1.3-1.9x; the normal spread stays under 1.1x


def _ok(results: pd.DataFrame) -> pd.DataFrame:
    """The ok rows (every one timed round-robin: runner/engine/worker.py), `ray_node_id` "" where none."""
    ok = results[results["status"] == "ok"].copy()
    ok["ray_node_id"] = ok["ray_node_id"].fillna("")
    return ok


def _slices(results: pd.DataFrame) -> pd.DataFrame:
    """One line per (variant, repeat, slice) of the round-robin rows: node, pid, variant_id, repeat, slice,
    round (the slice-major time order of the task: slice x repeats + repeat), p50 and ratio (to the
    variant's median slice p50)."""
    cols = ["ray_node_id", "pid", "variant_id", "repeat", "slice", "round", "p50", "ratio"]
    rr = _ok(results)
    if rr.empty:
        return pd.DataFrame(columns=cols)
    rr["p50"] = [json.loads(x) for x in rr["slice_p50s_ms"]]
    rr = rr.explode("p50")
    rr["p50"] = rr["p50"].astype(float)
    rr["slice"] = rr.groupby(["ray_node_id", "pid", "variant_id", "repeat"]).cumcount()
    repeats = rr.groupby(["ray_node_id", "pid"])["repeat"].transform("max") + 1
    rr["round"] = rr["slice"] * repeats + rr["repeat"]
    rr["ratio"] = rr["p50"] / rr.groupby("variant_id")["p50"].transform("median")
    return rr[cols].reset_index(drop=True)


def rounds(results: pd.DataFrame) -> pd.DataFrame:
    """One line per round of a task (node, process) that timed two or more variants round-robin: node, pid,
    round, variants, factor, slow."""
    cols = ["ray_node_id", "pid", "round", "variants", "factor", "slow"]
    sl = _slices(results)
    if sl.empty:
        return pd.DataFrame(columns=cols)
    out = (sl.groupby(["ray_node_id", "pid", "round"])
           .agg(variants=("variant_id", "nunique"), factor=("ratio", "median")).reset_index())
    out = out[out["variants"] >= 2].reset_index(drop=True)
    out["slow"] = out["factor"] >= SLOW_ROUND
    return out[cols]


def unstable_through_host(results: pd.DataFrame, table: pd.DataFrame, cv_bound_pct: float) -> list[str]:
    """Variants over the CV bound whose repeats, each without its slices in slow rounds of `table` (what
    rounds() returned), have a CV of p50 within the bound."""
    slow = table[table["slow"]]
    slow_keys = set(zip(slow["ray_node_id"], slow["pid"], slow["round"]))
    rr = _ok(results)
    unstable = set(rr.loc[rr["lat_cv_pct"] > cv_bound_pct, "variant_id"])
    out = []
    for vid, g in _slices(results).groupby("variant_id", sort=True):
        if vid not in unstable or not slow_keys:
            continue
        kept = g[[k not in slow_keys for k in zip(g["ray_node_id"], g["pid"], g["round"])]]
        if len(kept) == len(g):
            continue  # no slice of it ran in a slow round: unstable on its own
        per_repeat = kept.groupby("repeat")["p50"].median()
        if len(per_repeat) and cv_pct(per_repeat.to_numpy()) <= cv_bound_pct:
            out.append(vid)
    return out


def section_lines(results: pd.DataFrame, cv_bound_pct: float) -> list[str]:
    """The report's paragraph on the host's slow rounds ([] when no task timed two variants or more)."""
    table = rounds(results)
    if table.empty:
        return []
    slow = table[table["slow"]]
    n_unstable = int(results.loc[results["status"] == "ok"].groupby("variant_id")["lat_cv_pct"].first()
                     .gt(cv_bound_pct).sum())
    through = unstable_through_host(results, table, cv_bound_pct)
    return [f"**The host's rounds.** Each bench task timed its variants round-robin, each repeat in slices "
            f"spread over the task; a round (one slice of one repeat of every variant of a task) in which the "
            f"median variant read {SLOW_ROUND:.2f}x or more of its own median is a slow phase of the host, "
            f"not of a variant (runner/host_rounds.py). {len(slow)} of {len(table)} rounds were slow"
            + (f" (factors {slow['factor'].min():.2f}-{slow['factor'].max():.2f})" if len(slow) else "")
            + f"; {len(through)} of the {n_unstable} unstable row(s) are unstable only through them"
            + (": " + ", ".join(f"`{v}`" for v in through) if through else "") + ".", ""]
