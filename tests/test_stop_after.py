"""`sweep --stop-after`: a sweep stopped in its re-check phase finishes the re-checks when resumed (the rule
below). The whole command - stopped at its deadline, then finished by the same command - runs in
tests/test_faults.py, on the run folder its fault cases share (one Ray sweep less in the suite).
"""
from __future__ import annotations

from runner.engine import resume
from runner.results import RECHECK_SCHEMA, RESULT_SCHEMA, write_rows


def test_unchecked_names_rows_with_no_recheck_after_them(tmp_path):
    def result(vid, at):
        write_rows([{"variant_id": vid, "repeat": 0, "status": "ok", "finished_at": at}],
                   tmp_path / "results" / f"{vid}.parquet", RESULT_SCHEMA)

    def recheck(vid, at, status="ok"):
        write_rows([{"variant_id": vid, "status": status, "finished_at": at}],
                   tmp_path / "rechecks" / f"{vid}.parquet", RECHECK_SCHEMA)

    for vid in "abcd":
        result(vid, "2026-11-30T10:00:00.000+00:00")
    recheck("a", "2026-11-30T10:05:00.000+00:00")        # checked after it landed
    recheck("c", "2026-11-30T09:55:00.000+00:00")        # re-measured since its re-check
    recheck("d", "2026-11-30T10:05:00+00:00", "error")   # its re-check failed
    assert resume.unchecked(list("abcd"), tmp_path) == ["b", "c", "d"]
    assert resume.unchecked(["a"], tmp_path / "nothing-yet") == ["a"]

