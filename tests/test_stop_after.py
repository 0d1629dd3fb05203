"""`sweep --stop-after`: a sweep told to stop submits nothing past its deadline, lands what is in flight, and
resumes where it stopped; a sweep stopped in its re-check phase finishes the re-checks when resumed.

The sweep runs through the real command line on a local CPU cluster.
"""
from __future__ import annotations

import json

import pandas as pd
import pytest
import ray

from runner.engine import resume
from runner.cli import STOPPED_EXIT, main
from runner.results import RECHECK_SCHEMA, RESULT_SCHEMA, write_rows

pytestmark = pytest.mark.slow


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


SWEEP = """
sweep: stop
data: {source: synthetic}
bench: {warmup: 2, iters: 10, repeats: 2, eval_batch_size: 64, recheck: all, processes: 1}  # no twins
models:
  tiny:
    arch: airbench_cifar
    arch_args: {width_mult: 0.125}
    recipe: {epochs: 1, batch_size: 64, lr: 0.05, train_subset: 128, test_subset: 64}
grid:
  - models: [tiny]
    memory_format: [contiguous, channels_last]
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
    assert set(rows["variant_id"]) == {"tiny-fp32-nchw-eager", "tiny-fp32-cl-eager"}
    assert (rows["status"] == "ok").all() and not rows.duplicated(["variant_id", "repeat"]).any()
    sweep = json.loads((run_dir / "sweep.json").read_text())
    assert sweep["interrupted"] is False and [r["interrupted"] for r in sweep["previous_runs"]] == [True]
