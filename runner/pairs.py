"""Keep / drop decisions from paired measurement: parent and child timed in the same rounds of one process.

A variant's *parent* is the same model with its last-applied optimisation undone (the order in which
optimisations stack is `variants.OPTIMISATION_ORDER`). `plan(variants)` lists the (parent, child) pairs
a sweep can decide; the benchmark actor times both in the same round-robin rounds (runner/engine/worker.py),
and `verdict` turns the per-round p50s into a decision. Why paired: timing parent and child in different
tasks, on different GPUs, minutes apart, lets drift decide (a 17% CV of p50 was seen for eager rows inside a
sweep); round by round in one process, drift hits both sides alike and the differences' spread is the noise.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from variants import OPTIMISATION_ORDER, Variant

MAX_ACC_DROP_PTS = 0.5   # an optimisation may cost at most this much top-1 accuracy to be kept
SIGN_TEST_ALPHA = 0.05   # a gain counts when a two-sided sign test over the rounds rejects "no difference"


def parent_of(v: Variant) -> tuple[Variant | None, str | None]:
    """(parent variant, the axis undone); (None, None) for a variant with every axis at its base."""
    for axis, base in reversed(OPTIMISATION_ORDER):
        if getattr(v, axis) != base:
            return dataclasses.replace(v, **{axis: base}, brief_id="", label=""), axis
    return None, None


def plan(variants: tuple[Variant, ...] | list[Variant]) -> list[tuple[Variant, Variant, str]]:
    """(parent, child, axis) for every variant whose parent is also in the plan (ids compared)."""
    by_id = {v.variant_id: v for v in variants}
    out = []
    for v in variants:
        p, axis = parent_of(v)
        if p is not None and p.variant_id in by_id:
            out.append((by_id[p.variant_id], v, axis))
    return out


def sign_test_p(wins: int, losses: int) -> float:
    """Two-sided exact sign test: P(a split at least this uneven | no difference); ties are dropped."""
    n = wins + losses
    if n == 0:
        return 1.0
    k = min(wins, losses)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def verdict(parent_p50s: list[float], child_p50s: list[float], acc_delta_pts: float | None) -> dict[str, Any]:
    """gain = parent - child per round (ms); keep when the sign test says the child is faster and the
    accuracy drop is within MAX_ACC_DROP_PTS. The noise reported is the differences' interquartile range."""
    d = np.asarray(parent_p50s, dtype=float) - np.asarray(child_p50s, dtype=float)
    out: dict[str, Any] = {"pair_rounds": int(d.size)}
    if d.size == 0:
        return {**out, "decision": "undecided (no paired rounds)"}
    q1, med, q3 = np.percentile(d, [25, 50, 75])
    p = sign_test_p(int((d > 0).sum()), int((d < 0).sum()))
    out.update(gain_ms=float(med), gain_pct=float(med / np.median(parent_p50s) * 100),
               noise_ms=float(q3 - q1), diff_min_ms=float(d.min()), diff_max_ms=float(d.max()),
               sign_p=p, parent_p50_ms=float(np.median(parent_p50s)), p50_ms=float(np.median(child_p50s)))
    if acc_delta_pts is not None and not math.isnan(acc_delta_pts) and -acc_delta_pts > MAX_ACC_DROP_PTS:
        out["decision"] = "drop (accuracy)"
    elif p < SIGN_TEST_ALPHA and med > 0:
        out["decision"] = "keep" if acc_delta_pts is not None else "undecided (no accuracy)"
    elif p < SIGN_TEST_ALPHA and med < 0:
        out["decision"] = "slower"
    else:
        out["decision"] = "drop (no measurable gain)"
    return out
