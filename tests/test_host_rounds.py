"""runner/host_rounds.py: a round in which every variant of a task read slow is the host's, not a variant's."""
from __future__ import annotations

import json

import pandas as pd

from runner import host_rounds


def _rows(task: str, p50s: dict[str, list[float]]) -> list[dict]:
    """Result rows of one task (node, pid) timed one slice per repeat: variant -> its p50 per repeat (= per
    round)."""
    rows = []
    for vid, values in p50s.items():
        cv = 100 * pd.Series(values).std(ddof=0) / pd.Series(values).mean()
        rows += [{"variant_id": vid, "repeat": r, "lat_p50_ms": v, "status": "ok", "ray_node_id": "node-a",
                  "pid": task, "timing_order": "round-robin", "timing_slices": 1, "slice_p50s_ms": json.dumps([v]),
                  "lat_cv_pct": cv}
                 for r, v in enumerate(values)]
    return rows


def _frame() -> pd.DataFrame:
    return pd.DataFrame(
        # task 1: round 1 reads ~1.4x for every variant (the host), and `solo` is slow once on its own
        _rows(1, {"a": [2.0, 2.8, 2.0], "b": [1.0, 1.41, 1.0], "c": [0.5, 0.69, 0.51]})
        + _rows(2, {"d": [3.0, 3.0, 4.5], "e": [1.0, 1.0, 1.01], "f": [2.0, 2.02, 2.0]})
        + _rows(3, {"alone": [1.0, 1.6, 1.0]}))  # a task of one variant: its rounds say nothing of the host


def test_a_round_slow_for_every_variant_is_a_slow_host_round():
    table = host_rounds.rounds(_frame())
    assert set(table["pid"]) == {1, 2}  # the one-variant task is left out
    slow = table[table["slow"]]
    assert list(zip(slow["pid"], slow["round"])) == [(1, 1)]
    assert abs(slow["factor"].iloc[0] - 1.4) < 0.02
    assert (table.loc[~table["slow"], "factor"] < 1.05).all()  # d's own slow repeat moves its round's median little


def test_unstable_rows_are_told_apart_by_where_their_slow_repeats_ran():
    frame = _frame()
    through = host_rounds.unstable_through_host(frame, host_rounds.rounds(frame), cv_bound_pct=3.0)
    assert through == ["a", "b", "c"]  # d is unstable on its own; `alone` has no round to compare with


def test_the_report_paragraph_counts_rounds_and_names_the_rows():
    text = " ".join(host_rounds.section_lines(_frame(), 3.0))
    assert "1 of 6 rounds were slow (factors 1.40-1.40)" in text
    assert "3 of the 5 unstable row(s) are unstable only through them: `a`, `b`, `c`" in text


def test_tasks_of_one_variant_give_no_paragraph():
    alone = pd.DataFrame(_rows(1, {"a": [2.0, 2.8, 2.0]}) + _rows(2, {"b": [1.0, 1.41, 1.0]}))
    assert host_rounds.rounds(alone).empty and host_rounds.section_lines(alone, 3.0) == []


def _sliced(task: int, slices: dict[str, list[list[float]]], cv: dict[str, float]) -> list[dict]:
    """Rows of one task timed in slices: variant -> per repeat, its p50 per slice (in time order)."""
    return [{"variant_id": vid, "repeat": r, "lat_p50_ms": float(pd.Series(s).median()), "status": "ok",
             "ray_node_id": "node-a", "pid": task, "timing_order": "round-robin", "timing_slices": len(s),
             "slice_p50s_ms": json.dumps(s), "lat_cv_pct": cv.get(vid, 0.5)}
            for vid, reps in slices.items() for r, s in enumerate(reps)]


def test_a_round_is_one_slice_of_one_repeat_in_the_task_s_time_order():
    # 2 repeats x 3 slices: rounds run (slice 0: r0 r1), (slice 1: r0 r1), (slice 2: r0 r1) = rounds 0..5.
    # The host is slow in round 2 (slice 1 of repeat 0) for every variant; `b` is also slow alone in its
    # repeat 1 (rounds 3 and 5), which no other variant saw.
    frame = pd.DataFrame(_sliced(7, {
        "a": [[2.0, 3.0, 2.0], [2.0, 2.0, 2.02]],
        "b": [[1.0, 1.5, 1.0], [1.0, 1.6, 1.6]],
        "c": [[0.5, 0.76, 0.5], [0.5, 0.5, 0.5]]}, cv={"a": 4.0, "b": 6.0}))
    table = host_rounds.rounds(frame)
    assert list(table["round"]) == [0, 1, 2, 3, 4, 5] and (table["variants"] == 3).all()
    assert list(table.loc[table["slow"], "round"]) == [2] and abs(table["factor"][2] - 1.5) < 0.02
    # a: without its round-2 slice both repeats read 2.0 -> through the host; b keeps its own slow slices
    assert host_rounds.unstable_through_host(frame, table, cv_bound_pct=3.0) == ["a"]
    text = " ".join(host_rounds.section_lines(frame, 3.0))
    assert "1 of 6 rounds were slow (factors 1.50-1.50)" in text and "unstable only through them: `a`" in text
