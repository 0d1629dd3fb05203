"""What an invocation still has to do besides its pending variants: the pairs to time, the re-checks left.

A pair is decided when its child is measured in this invocation (from the rounds that timed it); a re-check
(or a twin, the second process of runner/intervals.py) is due when a row has none that ended after it landed:
a sweep stopped in its re-check phase, a resumed one whose sample grew, or a row measured again since.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from runner import pairs, results
from runner.results import RECHECK_SCHEMA, RESULT_SCHEMA


def pairs_to_time(spec, run_dir: Path, pending: list) -> list[tuple]:
    """The (parent, child) pairs whose child is measured in this invocation (decided from its stage's rounds)."""
    if not spec.bench.pairs:
        return []
    new = {v.variant_id for v in pending}
    return [(parent, child) for parent, child, _axis in pairs.plan(spec.variants) if child.variant_id in new]


def unchecked(ids: list[str], run_dir: Path, folder: str = "rechecks") -> list[str]:
    """The ids without a witness row (a re-check, or a twin with folder="twins") that ended after their rows."""
    rows = results.read_folder(run_dir / "results", RESULT_SCHEMA)
    checks = results.read_folder(run_dir / folder, RECHECK_SCHEMA)

    def last(frame: pd.DataFrame) -> pd.Series:
        when = pd.to_datetime(frame["finished_at"], utc=True, format="ISO8601", errors="coerce")
        return when.groupby(frame["variant_id"]).max()

    measured, checked = last(rows), last(checks[checks["status"] == "ok"])
    return [i for i in ids if i not in checked.index or checked[i] < measured.get(i, checked[i])]
