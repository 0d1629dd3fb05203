"""Keep / drop statistics of the report: each variant against its parent (last optimisation undone),
unpaired (medians and ranges of p50 over repeats), `choose`, the rule that names the chosen model, and the
re-check's sample (`recheck_sample`)."""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from runner import agreement
from runner.pairs import MAX_ACC_DROP_PTS
from runner.report_format import _missing, _ok
from variants import OPTIMISATION_ORDER

# Optimisation axes from last-applied to first, with the value that means "not applied".
AXES = tuple(reversed(OPTIMISATION_ORDER))
UNJUDGED = "no parent measured"   # a variant whose parent row is missing: no keep / drop decision


def _axis_value(row: pd.Series, axis: str, base: Any) -> Any:
    v = row.get(axis)
    return base if _missing(v) else (bool(v) if isinstance(base, bool) else str(v))


def parent_key(row: pd.Series) -> tuple[tuple, str | None]:
    """(axes of the parent, name of the axis undone): the last-applied optimisation (the highest-order axis
    not at its base value, in OPTIMISATION_ORDER) reset to its base; (None, None) for a root."""
    axes = {a: _axis_value(row, a, b) for a, b in AXES}
    for axis, base in AXES:
        if axes[axis] != base:
            parent = dict(axes, **{axis: base})
            return (str(row["model"]), *[parent[a] for a, _ in AXES]), axis
    return None, None


def _p50_interval(r: pd.Series) -> tuple[float, float] | None:
    """The row's 95% p50 interval (per variant, so any repeat row's), None where it has none."""
    lo, hi = r.get("lat_p50_lo_ms"), r.get("lat_p50_hi_ms")
    return None if _missing(lo) or _missing(hi) else (float(lo), float(hi))


def _verdict(gain: float, noise: float, acc_drop: float, ci=None, parent_ci=None) -> str:
    """The decision; with both 95% p50 intervals (runner/intervals.py) they decide, not gain vs noise."""
    if not _missing(acc_drop) and acc_drop > MAX_ACC_DROP_PTS:
        return "drop (accuracy)"
    if ci is not None and parent_ci is not None:
        if agreement.overlaps(ci, parent_ci):
            return "drop (not distinguishable: 95% intervals overlap)"
        if ci[0] > parent_ci[1]:
            return "slower"
        return "undecided (no accuracy)" if _missing(acc_drop) else "keep"
    if _missing(noise) or _missing(gain):
        return "undecided (needs 2+ repeats)"
    if _missing(acc_drop):
        return "undecided (no accuracy)"
    if gain > noise:
        return "keep"
    if -gain > noise:  # measurably slower, not just noise
        return "slower"
    return "drop (no measurable gain)"


def decide(summary_or_results: pd.DataFrame) -> pd.DataFrame:
    """Keep / drop each ok variant against its parent (the same variant, last optimisation undone).

    gain_ms = median p50 of the parent - median p50 of the variant (over repeats); noise_ms = the larger of
    the two max-min ranges of p50 over repeats; keep when gain_ms > noise_ms and the accuracy drop is at most
    MAX_ACC_DROP_PTS points. Where both rows carry 95% p50 intervals (runner/intervals.py) the intervals
    decide instead (`_verdict`). Given a one-line-per-variant summary there is no spread to measure, so the
    decision says "undecided" rather than pretend the noise is 0.
    """
    cols = ["variant_id", "brief_id", "model", "parent_id", "axis", "change", "parent_p50_ms", "p50_ms",
            "gain_ms", "gain_pct", "noise_ms", "parent_top1_pct", "top1_pct", "acc_delta_pts", "decision",
            "p50_lo_ms", "p50_hi_ms", "parent_p50_lo_ms", "parent_p50_hi_ms"]
    frame = summary_or_results
    if frame.empty:
        return pd.DataFrame(columns=cols)
    firsts = _ok(frame).drop_duplicates("variant_id")
    by_key = {}
    for _, r in firsts.iterrows():  # first variant wins if two share every axis
        by_key.setdefault((str(r["model"]), *[_axis_value(r, a, b) for a, b in AXES]), r)
    # variant_id -> per-repeat p50; a summary (one line per variant) gives one value per variant
    timed = _ok(frame).dropna(subset=["lat_p50_ms"])
    values = {vid: list(g["lat_p50_ms"]) for vid, g in timed.groupby("variant_id", sort=False)}
    rows = []
    for _, r in firsts.iterrows():
        key, axis = parent_key(r)
        v = values.get(r["variant_id"], [])
        lo, hi = _p50_interval(r) or (None, None)
        row = dict.fromkeys(cols) | dict(variant_id=r["variant_id"], brief_id=r.get("brief_id"), model=r["model"],
                                         axis=axis, top1_pct=r.get("top1_pct"), p50_lo_ms=lo, p50_hi_ms=hi,
                                         p50_ms=pd.Series(v).median() if v else None)
        parent = by_key.get(key) if key else None
        if key is None:
            row["decision"] = "baseline (no parent)"
        elif parent is None:
            row["change"] = f"{axis}: {_axis_value(r, axis, dict(AXES)[axis])}"
            row["decision"] = UNJUDGED
        else:
            row.update(_compare(r, parent, axis, v, values.get(parent["variant_id"], [])))
        rows.append(row)
    return pd.DataFrame(rows, columns=cols)


def _compare(r: pd.Series, parent: pd.Series, axis: str, v: list[float], pv: list[float]) -> dict:
    base = dict(AXES)[axis]
    pm, vm = (pd.Series(x).median() if x else None for x in (pv, v))
    gain = None if _missing(pm) or _missing(vm) else pm - vm
    # With one value on either side there is no spread, so no noise estimate.
    noise = max(max(v) - min(v), max(pv) - min(pv)) if len(v) > 1 and len(pv) > 1 else None
    pt, vt = parent.get("top1_pct"), r.get("top1_pct")
    drop = None if _missing(pt) or _missing(vt) else float(pt) - float(vt)
    ci, parent_ci = _p50_interval(r), _p50_interval(parent)
    lo, hi = parent_ci or (None, None)
    return {"parent_id": parent["variant_id"], "parent_top1_pct": pt, "parent_p50_ms": pm,
            "change": f"{axis}: {_axis_value(parent, axis, base)} -> {_axis_value(r, axis, base)}",
            "gain_ms": gain, "gain_pct": None if gain is None or not pm else gain / pm * 100, "noise_ms": noise,
            "acc_delta_pts": None if drop is None else -drop, "parent_p50_lo_ms": lo, "parent_p50_hi_ms": hi,
            "decision": _verdict(gain, noise, drop, ci, parent_ci)}


# ---------------------------------------------------------------- the chosen model

# Stated in the report and by `export`, so a reader knows why this model and not another.
RULE = ("accuracy bar first, then latency: the lowest host-clock p95 (CUDA-event p95 where no host time exists) "
        "among ok variants at or above the bar; when none reaches it, the most accurate, and among equally "
        "accurate ones the fastest")


def choose(summary: pd.DataFrame, bar_pct: float) -> dict[str, Any]:
    """The ok variant with top-1 >= bar_pct that a caller waits least for: the lowest host-clock p95
    (CUDA-event p95 where no host time exists), with what it beat. `runner_up_overlaps`: True when the
    runner-up's 95% interval of that p95 overlaps the chosen one's (not distinguishable), None unknown.
    `most_accurate` (the fallback when none passes): the highest top-1, the fastest of those tied on it."""
    ok = summary[(summary["status"] == "ok")].dropna(subset=["lat_p95_ms"])
    ok = ok.assign(_rank=ok.apply(agreement.rank_latency, axis=1)) if not ok.empty else ok.assign(_rank=[])
    # A tie on latency goes to the more accurate one; a tie on accuracy to the faster one.
    passing = ok[ok["top1_pct"] >= bar_pct].sort_values(["_rank", "top1_pct"], ascending=[True, False], kind="stable")
    out: dict[str, Any] = {"chosen": None, "runner_up": None, "faster_under_bar": None, "most_accurate": None,
                           "runner_up_overlaps": None}
    rated = ok.dropna(subset=["top1_pct"])
    if not rated.empty:
        out["most_accurate"] = rated.sort_values(["top1_pct", "_rank"], ascending=[False, True], kind="stable").iloc[0]
    if passing.empty:
        return out
    chosen = passing.iloc[0]
    out["chosen"] = chosen
    out["runner_up"] = passing.iloc[1] if len(passing) > 1 else None
    if out["runner_up"] is not None:
        out["runner_up_overlaps"] = agreement.overlaps(agreement.rank_interval(chosen),
                                                       agreement.rank_interval(out["runner_up"]))
    under = ok[(ok["top1_pct"] < bar_pct) & (ok["_rank"] < chosen["_rank"])]
    if not under.empty:
        out["faster_under_bar"] = under.sort_values("_rank", kind="stable").iloc[0]
    return out


def choose_id(summary: pd.DataFrame, bar_pct: float) -> str | None:
    """The id of the chosen model (`choose`: one rule, used by report, re-check, export)."""
    chosen = choose(summary, bar_pct)["chosen"]
    return None if chosen is None else chosen["variant_id"]


def recheck_sample(summary: pd.DataFrame, extra: int, bar_pct: float, seed: int = 0) -> list[str]:
    """What the re-check times again: named rows, the chosen one, then `extra` more ok rows at random (the
    same draw for the same rows)."""
    if extra < 0 or summary.empty:
        return []
    ok = summary[summary["status"] == "ok"]
    picked = [v for v in ok.loc[ok["brief_id"].fillna("").astype(str) != "", "variant_id"]]
    chosen = choose_id(summary, bar_pct)
    if chosen and chosen not in picked:
        picked.append(chosen)
    rest = sorted(set(ok["variant_id"]) - set(picked))
    rng = np.random.default_rng(seed)
    picked += [rest[i] for i in sorted(rng.permutation(len(rest))[:extra])]
    return picked
