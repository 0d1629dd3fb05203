"""What an invocation still has to do besides its pending variants: the pairs to time, the re-checks left.

A pair is timed when either side is measured in this invocation, or its pair file is missing; a re-check is
due when a row has none that ended after it landed (a sweep stopped in its re-check phase, a resumed one
whose sample grew, or a row measured again since).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from runner import pairs, results
from runner.results import PAIR_SCHEMA, RECHECK_SCHEMA, RESULT_SCHEMA


def pairs_to_time(spec, run_dir: Path, pending: list) -> list[tuple]:
    if spec.bench.pair_rounds <= 0:
        return []
    new = {v.variant_id for v in pending}
    done = set(results.read_folder(run_dir / "pairs", PAIR_SCHEMA)["variant_id"])
    return [(parent, child) for parent, child, _axis in pairs.plan(spec.variants)
            if child.variant_id not in done or {parent.variant_id, child.variant_id} & new]


def unchecked(ids: list[str], run_dir: Path) -> list[str]:
    """The ids without a re-check that ended after their rows landed."""
    rows = results.read_folder(run_dir / "results", RESULT_SCHEMA)
    checks = results.read_folder(run_dir / "rechecks", RECHECK_SCHEMA)

    def last(frame: pd.DataFrame) -> pd.Series:
        when = pd.to_datetime(frame["finished_at"], utc=True, format="ISO8601", errors="coerce")
        return when.groupby(frame["variant_id"]).max()

    measured, checked = last(rows), last(checks[checks["status"] == "ok"])
    return [i for i in ids if i not in checked.index or checked[i] < measured.get(i, checked[i])]
