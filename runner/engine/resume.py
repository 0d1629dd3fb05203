"""What an invocation still has to do: the variants not measured by this code on this kind of device, the
pairs to time, the twins and re-checks left.

A pair is decided when its child is measured in this invocation (from the rounds that timed it); a re-check
(or a twin, the second process of runner/intervals.py) is due when a row has none that ended after it landed:
a sweep stopped in its re-check phase, a resumed one whose sample grew, or a row measured again since.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pandas as pd

from runner import decisions, pairs, results
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


def pending(spec, run_dir: Path, hashes: dict[str, str], cluster: dict[str, Any],
            log: Callable[[str], None]) -> list:
    """The variants without a finished row of this code on this kind of device, the resume said in a line."""
    done = finished_rows(run_dir, cluster)
    pending = [v for v in spec.variants if done.get(v.variant_id) != hashes[v.variant_id]]
    if len(pending) < len(spec.variants):
        log(f"resuming: {len(spec.variants) - len(pending)} variant(s) already measured by this code on "
            f"this kind of device in {run_dir}, {len(pending)} to run (--fresh measures everything again)")
    return pending


def witnesses_due(spec, run_dir: Path) -> dict[str, list[str]]:
    """The ok rows that still need a twin (a second process, `bench.processes` > 1) or a re-check, by folder."""
    summary = results.summarize(results.read_folder(run_dir / "results", RESULT_SCHEMA))
    if summary.empty:
        return {}
    ours = {v.variant_id for v in spec.variants}
    due = {}
    if spec.bench.processes > 1:
        due["twins"] = [i for i in summary.loc[summary["status"] == "ok", "variant_id"] if i in ours]
    if spec.bench.recheck >= 0:
        due["rechecks"] = [i for i in decisions.recheck_sample(summary, spec.bench.recheck, spec.accuracy_bar_pct)
                           if i in ours]
    return {k: left for k, ids in due.items() if (left := unchecked(ids, run_dir, k))}


def witnesses_runnable(spec, run_dir: Path) -> bool:
    """Any twin or re-check due whose model has a checkpoint to time it from (with nothing to train, the
    only way a witness can run)."""
    due = {i for ids in witnesses_due(spec, run_dir).values() for i in ids}
    return any((run_dir / "checkpoints" / f"{spec.model(v.model).key}.pt").exists()
               for v in spec.variants if v.variant_id in due)


def finished_rows(run_dir: Path, cluster: dict[str, Any]) -> dict[str, str]:
    """variant_id -> spec_hash of rows on disk that need no re-run: ok or skipped, and measured on the
    kind of device this cluster has (a CPU row does not stand for a GPU, nor an H100's for an H200)."""
    df = results.read_folder(run_dir / "results", RESULT_SCHEMA)
    df = df[df["status"].isin(["ok", "skipped"])]
    kinds = cluster.get("gpu_kinds") or []
    if cluster.get("gpus"):
        same = df["device"].eq("cuda") & df["gpu_name"].fillna("").map(
            lambda name: not kinds or any(k.lower() in name.lower() for k in kinds))
    else:
        same = df["device"].ne("cuda")
    df = df[same | df["status"].eq("skipped")]
    return dict(zip(df["variant_id"], df["spec_hash"]))
