"""A sweep's run folder between invocations: what it records (sweep.json, resolved_config.json), how an
invocation closes it, and how `--fresh` sets the earlier run aside. The folder never contradicts itself:

    close       every invocation, also on Ctrl-C or a crash: merge what landed, record the invocation, and
                rebuild the report from exactly those rows (no older report stays beside newer rows)
    no-op       a re-run that found nothing to do keeps the timing of the invocations that worked
    set_aside   --fresh: the earlier outputs move to previous/<time>/ through a staging folder renamed in
                one step; a move cut short is finished by the next invocation
"""
from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from runner import env, files, guard, results
from runner.engine.steps import now

STAGING = ".partial-"  # previous/.partial-<time>: a --fresh move under way (or cut short)


def resolved(spec, data) -> dict[str, Any]:
    """The sweep file as run: its data section names the data this invocation loaded (--data or the file's),
    which export, train and a resume reload when no --data is given (runner/data.recorded)."""
    out = spec.to_dict()
    if data.origin:
        out["data"] = {"source": data.origin, "root": data.root}
    return out


def write_meta(spec, data, run_dir: Path, cluster: dict, started: str, shortened_note: str, code: str,
               interrupted: bool = False, worked: bool = True) -> None:
    """sweep.json for this invocation; earlier invocations' times go to `previous_runs`. An invocation that
    ran no step and was not interrupted (everything was done) only adds itself to `noop_runs`: the report's
    wall time and timeline stay those of the invocations that measured something."""
    prev = run_dir / "sweep.json"
    try:
        old = files.read_json(prev) if prev.exists() else None
    except (OSError, ValueError):  # a damaged sweep.json loses only the earlier invocations' times
        old = None
    if isinstance(old, dict) and not worked and not interrupted:
        old["noop_runs"] = old.get("noop_runs", []) + [{"started_at": started, "finished_at": now()}]
        old["interrupted"] = False  # every row is in: a sweep stopped after its last landing is complete now
        files.write_json(old, prev)
        return
    cfg = resolved(spec, data)
    meta = {"name": spec.name, "source_file": spec.source_file, "shortened": bool(shortened_note),
            "interrupted": interrupted, "shortened_note": shortened_note, "data_source": data.source,
            "data": {**cfg["data"], "sweep_file": spec.data.source}, "started_at": started,
            "finished_at": now(), "cluster": cluster, "config": cfg, "accuracy_bar_pct": spec.accuracy_bar_pct,
            "git_commit": env.git_commit(), "code_digest": code}
    if isinstance(old, dict):  # a resumed sweep keeps the times of its earlier invocations
        meta["previous_runs"] = old.get("previous_runs", []) + [
            {k: old.get(k) for k in ("started_at", "finished_at", "wall_s", "interrupted")}]
        meta["noop_runs"] = old.get("noop_runs", [])
    meta["wall_s"] = (datetime.fromisoformat(meta["finished_at"]) - datetime.fromisoformat(started)).total_seconds()
    files.write_json(meta, prev)


def close(run_dir: Path, completed: bool, log: Callable[[str], None], **meta) -> Path | None:
    """End an invocation: merge, write sweep.json (`meta`: write_meta's arguments), rebuild the report.
    Interrupted, a report that cannot be built is removed rather than left describing other rows."""
    from runner.report import build_report

    results.merge(run_dir)
    write_meta(run_dir=run_dir, interrupted=not completed, **meta)
    try:
        return build_report(run_dir)
    except Exception as e:
        if completed:
            raise
        (run_dir / "report.md").unlink(missing_ok=True)
        log(f"report not rebuilt ({type(e).__name__}: {e}); `python -m runner report {run_dir}` tries again")
        return None


def cut_short(run_dir: Path) -> bool:
    """An earlier --fresh was interrupted while it moved the old outputs (the next invocation finishes it)."""
    return any((run_dir / "previous").glob(f"{STAGING}*"))


def set_aside(run_dir: Path, log: Callable[[str], None]) -> None:
    """--fresh: every earlier output (all but previous/ and the lock) moves to previous/<time>/, never deleted.
    Entries go into a staging folder, the report and figures first (what names a chosen model never outlives
    its rows), then the staging folder is renamed in one step. Cut short, the folder holds old outputs only;
    the next invocation moves the rest (all it finds there is the old run's: nothing new starts before)."""
    prev = run_dir / "previous"
    staging = next(prev.glob(f"{STAGING}*"), None) or \
        prev / f"{STAGING}{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S')}"
    entries = sorted((p for p in run_dir.iterdir() if p.name not in ("previous", guard.LOCK_NAME)),
                     key=lambda p: (p.name != "report.md", p.suffix != ".png", p.name))
    if not entries and not staging.exists():
        return
    staging.mkdir(parents=True, exist_ok=True)
    for p in entries:
        os.replace(p, staging / p.name)
    dest = prev / staging.name.removeprefix(STAGING)
    os.replace(staging, dest)
    log(f"--fresh: the earlier run's outputs moved to {dest}")
