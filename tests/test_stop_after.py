"""`sweep --stop-after`: a sweep told to stop submits nothing past its deadline, lands what is in flight, and
resumes where it stopped; a sweep stopped in its re-check phase finishes the re-checks when resumed.

The phase runner is driven with real Ray tasks on a local CPU cluster; the sweep through the real command line.
"""
from __future__ import annotations

import json
import time

import pandas as pd
import pytest
import ray

from runner import phases
from runner.cli import STOPPED_EXIT, main
from runner.results import RECHECK_SCHEMA, RESULT_SCHEMA, write_rows

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", configure_logging=False)
    yield
    ray.shutdown()


@ray.remote(num_cpus=1)
def _sleep_then(i: int, seconds: float) -> int:
    time.sleep(seconds)
    return i


def _jobs(events: list, specs: list[tuple[bool, float]], seconds: float) -> list[tuple]:
    """(compiles?, cost, submit, land) for `specs` of (compiles?, cost); events records submits and landings."""
    def job(i, comp, cost):
        def submit():
            events.append(("submit", i))
            return _sleep_then.remote(i, seconds)
        return comp, cost, submit, lambda ref: events.append(("land", ray.get(ref)))
    return [job(i, comp, cost) for i, (comp, cost) in enumerate(specs)]


def test_without_a_deadline_every_job_is_submitted_before_the_first_lands(local_ray):
    events: list = []
    phases.run_phase("bench", _jobs(events, [(False, 3.0), (False, 2.0), (False, 1.0)], 0.2), lambda s: None)
    assert events[:3] == [("submit", 0), ("submit", 1), ("submit", 2)]  # longest first, all at once
    assert sorted(e for e in events if e[0] == "land") == [("land", 0), ("land", 1), ("land", 2)]


def test_at_the_deadline_nothing_more_is_submitted_and_what_runs_lands(local_ray):
    events: list = []
    jobs = _jobs(events, [(False, 1.0), (False, 3.0), (False, 2.0), (False, 0.5)], 0.6)
    with pytest.raises(phases.Stopped) as stop:
        phases.run_phase("bench", jobs, lambda s: None, phases.Deadline.after(0.3), slots=1)
    # One slot: the longest job was submitted before the deadline and landed; the other three never started.
    assert events == [("submit", 1), ("land", 1)]
    assert (stop.value.phase, stop.value.left) == ("bench", 3)
    assert "bench phase, 3 task(s) not started" in str(stop.value)


def test_past_the_deadline_a_phase_starts_nothing_and_prints_no_heading(local_ray):
    events: list = []
    lines: list[str] = []
    deadline = phases.Deadline.after(0.001)
    time.sleep(0.01)
    with pytest.raises(phases.Stopped) as stop:
        phases.run_phase("re-check", _jobs(events, [(False, 1.0), (False, 2.0)], 0.1), lines.append, deadline, 2)
    assert events == [] and lines == [] and stop.value.left == 2


def test_a_stop_among_the_compiling_jobs_counts_the_others_as_not_started(local_ray):
    events: list = []
    jobs = _jobs(events, [(True, 2.0), (True, 1.0), (False, 5.0), (False, 4.0)], 0.5)
    with pytest.raises(phases.Stopped) as stop:
        phases.run_phase("re-check", jobs, lambda s: None, phases.Deadline.after(0.2), slots=1)
    assert events == [("submit", 0), ("land", 0)]
    assert stop.value.left == 3


def test_under_a_far_deadline_the_slots_stay_full_and_every_job_lands(local_ray):
    events: list = []
    jobs = _jobs(events, [(False, float(c)) for c in range(5, 0, -1)], 0.2)
    phases.run_phase("bench", jobs, lambda s: None, phases.Deadline.after(600), slots=2)
    # Two in flight, no more: each later submit follows a finished task, and comes before the driver lands
    # that task (landing may wait for another GPU's timing; the freed GPU should not).
    assert [kind[0] for kind, _ in events] == list("sssl" "sl" "sl" "ll")
    assert [i for kind, i in events if kind == "submit"] == [0, 1, 2, 3, 4]  # longest first
    assert sorted(i for kind, i in events if kind == "land") == [0, 1, 2, 3, 4]


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
    assert phases.unchecked(list("abcd"), tmp_path) == ["b", "c", "d"]
    assert phases.unchecked(["a"], tmp_path / "nothing-yet") == ["a"]


SWEEP = """
sweep: stop
data: {source: synthetic}
bench: {warmup: 2, iters: 10, repeats: 2, eval_batch_size: 64, recheck: all}
models:
  tiny:
    arch: airbench_cifar
    arch_args: {width_mult: 0.125}
    recipe: {epochs: 1, batch_size: 64, lr: 0.05, train_subset: 128, test_subset: 64}
grid:
  - models: [tiny]
    precision: [fp32, bf16]
"""


def test_a_stopped_sweep_says_so_and_the_same_command_finishes_it(tmp_path, capsys):
    if ray.is_initialized():
        ray.shutdown()  # the sweep starts its own local cluster
    cfg = tmp_path / "stop.yaml"
    cfg.write_text(SWEEP)
    args = ["sweep", "--config", str(cfg), "--out", str(tmp_path / "runs")]
    run_dir = tmp_path / "runs" / "stop"

    # Ray's start alone outlasts this deadline: nothing is submitted, and the stop says what to do.
    assert main(args + ["--stop-after", "0.01"]) == STOPPED_EXIT
    text = capsys.readouterr().out
    assert "stopped at the --stop-after deadline in the train phase, 1 task(s) not started" in text
    assert "Run the same command again" in text
    assert json.loads((run_dir / "sweep.json").read_text())["interrupted"] is True

    assert main(args) == 0
    rows = pd.read_parquet(run_dir / "results.parquet")
    assert set(rows["variant_id"]) == {"tiny-fp32-nchw-eager", "tiny-bf16-nchw-eager"}
    assert (rows["status"] == "ok").all() and not rows.duplicated(["variant_id", "repeat"]).any()
    sweep = json.loads((run_dir / "sweep.json").read_text())
    assert sweep["interrupted"] is False and [r["interrupted"] for r in sweep["previous_runs"]] == [True]

    # As if the sweep had stopped in its re-check phase: nothing is left to measure, yet the re-checks run.
    for part in (run_dir / "rechecks").glob("*.parquet"):
        part.unlink()
    capsys.readouterr()
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "0 to run" in text and text.count("ok      recheck:") == 2
    assert set(pd.read_parquet(run_dir / "rechecks.parquet")["variant_id"]) == set(rows["variant_id"])
