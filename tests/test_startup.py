"""The timeline's start-up split: when each task's worker began, finished its imports and started its rows."""
from __future__ import annotations

from runner import startup, worker_setup
from runner.timeline import read_frames
from runner.results import PAIR_SCHEMA, RESULT_SCHEMA, write_rows
from runner.tasks import place


def _row(pid: int, began: str, ready: str, first: str, **kw) -> dict:
    day = "2026-12-01T00:00:"
    return {"variant_id": f"v{pid}-{first}", "status": "ok", "ray_node_id": "n", "pid": pid,
            "worker_started_at": day + began + "+00:00", "worker_ready_at": day + ready + "+00:00",
            "started_at": day + first + "+00:00", **kw}


def test_each_process_counts_once_from_its_first_row(tmp_path):
    # process 1: 2 s of imports, its first row 3 s later (a second row later still); process 2: 4 s and 1 s;
    # a row without the columns (older code, or outside a worker) is left out
    write_rows([_row(1, "00.000", "02.000", "05.000"), _row(1, "00.000", "02.000", "09.000"),
                _row(2, "10.000", "14.000", "15.000"), {"variant_id": "old", "status": "ok", "pid": 3}],
               tmp_path / "results.parquet", RESULT_SCHEMA)
    write_rows([_row(2, "10.000", "14.000", "14.500", parent_id="p")], tmp_path / "pairs.parquet", PAIR_SCHEMA)
    p = startup.processes(read_frames(tmp_path)).sort_values("imports_s")
    assert p["imports_s"].tolist() == [2.0, 4.0] and p["setup_s"].tolist() == [3.0, 0.5]
    text = "\n".join(startup.section(read_frames(tmp_path)))
    assert "2 task processes" in text and "median 3.0 s, longest 4.0 s, 6 s in all" in text
    assert "median 1.8 s, longest 3.0 s, 4 s in all" in text


def test_no_recorded_start_gives_no_paragraph(tmp_path):
    assert startup.section(read_frames(tmp_path)) == []
    write_rows([{"variant_id": "old", "status": "ok", "pid": 3}], tmp_path / "results.parquet", RESULT_SCHEMA)
    assert startup.section(read_frames(tmp_path)) == []


def test_a_worker_that_ran_the_hook_stamps_its_rows(monkeypatch):
    monkeypatch.setattr(worker_setup, "times", {})
    assert place()["worker_started_at"] is None  # outside a Ray worker with the hook
    worker_setup.setup()
    where = place()
    assert where["worker_started_at"] <= where["worker_ready_at"]
