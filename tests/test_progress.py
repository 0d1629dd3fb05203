"""Progress a person reads (runner/engine/control.py, issue 25): the plan's total known at the start and never
changed, time left from the measured pace, a line while nothing lands, and a log without escape codes."""
from __future__ import annotations

import io
import os
import re
import time

import pandas as pd
import pytest

from runner import decisions
from runner.engine.control import HEARTBEAT_S, Progress, plain_output, wait_one
from runner.sweep import plan
from variants import load_sweep

SWEEP = """
sweep: unit
data: {source: synthetic}
bench: {recheck: 2}
models:
  a: {arch: airbench_cifar, recipe: {epochs: 1, batch_size: 8}}
  b: {arch: airbench_cifar, recipe: {epochs: 1, batch_size: 8}}
grid:
  - models: [a, b]
    memory_format: [contiguous, channels_last]
    bn_fold: [off, on]
named:
  B1: {model: a, precision: fp32}
"""


@pytest.fixture
def spec(tmp_path):
    (tmp_path / "unit.yaml").write_text(SWEEP)
    return load_sweep(tmp_path / "unit.yaml")


def _totals(lines: list[str]) -> set[int]:
    return {int(m.group(1)) for line in lines for m in [re.search(r"^\[?\s*\d+/(\d+)", line.strip())] if m}


def test_the_total_is_the_whole_plan_from_the_first_line_to_the_last(spec):
    queue, pending = list(spec.models), list(spec.variants)
    planned = plan(spec, queue, pending, pairs=[("p", "c")] * 3)
    n = len(spec.variants)
    assert planned == {"train": 2, "bench": n + 3, "twin": n if spec.bench.processes > 1 else 0, "recheck": 4}
    # the re-check bound holds for the sampler the sweep uses (named + chosen + `recheck` more)
    summary = pd.DataFrame({"variant_id": [v.variant_id for v in spec.variants], "status": "ok",
                            "brief_id": [v.brief_id for v in spec.variants], "top1_pct": 90.0,
                            "lat_p95_ms": range(1, n + 1)})
    assert len(decisions.recheck_sample(summary, spec.bench.recheck, 85.0)) <= planned["recheck"]

    lines: list[str] = []
    p = Progress(planned, log=lines.append)
    for m in queue:
        p.landed(f"train:{m.key}", "ok")
    for v in pending:
        p.landed(f"bench:{v.variant_id}", "ok")
    p.landed("pair:c", "ok")
    p.skip("bench", 2, "a side of the pair was skipped")  # known only once the bench phase ran
    for v in pending[:planned["twin"] - 1]:
        p.landed(f"twin:{v.variant_id}", "ok")
    p.skip("recheck", 1, "not drawn")
    p.landed("recheck:x", "ok")
    p.finish("planned but not run")  # one twin and two re-checks never ran
    assert _totals(lines) == {sum(planned.values())}
    assert p.done == p.total and lines[-1].lstrip().startswith(f"{p.total}/{p.total}")
    assert sum(line.startswith("[") for line in lines) == 2 + n + 1 + max(planned["twin"] - 1, 0) + 1


def test_time_left_is_each_phase_s_tasks_left_at_its_measured_pace(spec):
    lines: list[str] = []
    p = Progress({"train": 3, "bench": 4, "recheck": 2}, log=lines.append)
    p.still("train:a")  # nothing landed yet: no pace measured, no guess
    assert "left ?" in lines[-1] and p.left_s() is None
    p.begin("train")
    p.began["train"] -= 100.0  # the phase began 100 s ago
    p.landed("train:a", "ok")
    p.landed("train:b", "ok")  # 2 in 100 s: 50 s a task, for the training left and the phases after it
    assert re.search(r"left ~5m\d\ds", lines[-1]) and p.left_s() == pytest.approx(50 * (1 + 4 + 2), abs=1)
    p.landed("train:c", "ok")
    p.landed("bench:w", "error")  # an error row written before the bench phase ran: no pace from it
    assert p.left_s() == pytest.approx(100 / 3 * (3 + 2), abs=1)  # 3 trainings in 100 s
    p.began["bench"] = time.monotonic() - 10.0
    p.landed("bench:x", "ok")  # the bench phase's own pace now: 10 s a task
    assert p.left_s() == pytest.approx(10 * (2 + 2), abs=1)


def test_a_line_comes_while_nothing_lands_saying_what_runs():
    lines: list[str] = []
    p = Progress({"train": 1}, log=lines.append)
    assert p.quiet_s() == pytest.approx(HEARTBEAT_S, abs=1)
    p.last_line -= HEARTBEAT_S  # the last line was a heartbeat ago: one is due now
    assert p.quiet_s() == 0.5
    p.still("train:a")
    assert lines[-1].startswith("   0/1 ") and "running train:a" in lines[-1]
    assert p.quiet_s() == pytest.approx(HEARTBEAT_S, abs=1)


@pytest.mark.slow
def test_wait_one_says_what_runs_until_a_task_lands():
    """Real Ray: a task held until the first `running` line has been written, then released."""
    import ray

    @ray.remote(max_concurrency=2, num_cpus=0)
    class Gate:
        def __init__(self):
            import threading
            self.event = threading.Event()

        def wait(self):
            return self.event.wait(60)

        def open(self):
            self.event.set()

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address="local", include_dashboard=False, num_cpus=1, logging_level="ERROR")
    try:
        gate = Gate.remote()
        ref = gate.wait.remote()
        lines: list[str] = []
        p = Progress({"train": 1}, log=lines.append)
        p.last_line -= HEARTBEAT_S  # due at once, so the test waits half a second, not twenty

        def running():
            gate.open.remote()
            return "gate:0 wait"

        assert wait_one([ref], p, running) == ref and ray.get(ref) is True
        assert [line for line in lines if "running gate:0 wait" in line]
    finally:
        if started_here:
            ray.shutdown()


def test_the_log_has_no_escape_codes_when_stdout_is_not_a_terminal(monkeypatch):
    from ray._private import worker

    for var in ("RAY_COLOR_PREFIX", "RAY_DEDUP_LOGS"):
        monkeypatch.delenv(var, raising=False)
    line = {"pid": 4242, "task_name": "train:mobilenet", "lines": ["epoch 1"], "ip": "h", "localhost": "h",
            "is_err": False}
    coloured = io.StringIO()
    worker.print_worker_logs(line, coloured)
    assert "\x1b[" in coloured.getvalue()  # Ray's default, what landed in redirected logs
    assert plain_output(io.StringIO()) is False  # not a terminal
    assert os.environ["RAY_COLOR_PREFIX"] == "0" and os.environ["RAY_DEDUP_LOGS"] == "0"
    plain = io.StringIO()
    worker.print_worker_logs(line, plain)
    assert plain.getvalue() == "(train:mobilenet pid=4242) epoch 1\n"
    lines: list[str] = []
    p = Progress({"train": 2}, log=lines.append, bar=False)
    p.landed("train:a", "ok", "top1 10.00%")
    p.still("train:b")
    assert lines and not any("\x1b" in line or "#" in line for line in lines)


def test_a_terminal_gets_a_bar_and_keeps_ray_s_colours(monkeypatch):
    monkeypatch.delenv("RAY_COLOR_PREFIX", raising=False)
    master, slave = os.openpty()
    with os.fdopen(slave, "w") as tty:
        assert plain_output(tty) is True and "RAY_COLOR_PREFIX" not in os.environ
    os.close(master)
    lines: list[str] = []
    p = Progress({"train": 4}, log=lines.append, bar=True)
    p.landed("train:a", "ok")
    assert "#####..............." in lines[-1] and "\x1b" not in lines[-1]
