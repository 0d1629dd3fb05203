"""runner/timeline.py on hand-made step logs, and the train phase's order (CPU).

The real sweep's step log is checked in tests/test_sweep_e2e.py (its steps come from a real Ray run).
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from runner import timeline
from runner.engine import training
from runner.engine.steps import StepLog
from variants import load_sweep

ROOT = Path(__file__).resolve().parent.parent
T0 = pd.Timestamp("2026-05-01T10:00:00", tz="UTC")


def _at(s: float) -> str:
    return (T0 + pd.Timedelta(seconds=s)).isoformat(timespec="milliseconds")


def _sweep(run_dir: Path, *invocations: tuple[float, float]) -> None:
    runs = [{"started_at": _at(s), "wall_s": w, "interrupted": False} for s, w in invocations]
    meta = {**runs[-1], "previous_runs": runs[:-1]}
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "sweep.json").write_text(json.dumps(meta))


def _log(run_dir: Path, steps: list[tuple]) -> None:
    log = StepLog(run_dir)
    for kind, name, start, end, gpu in steps:
        log.add({"kind": kind, "name": name, "start": _at(start), "end": _at(end), "gpu_uuid": gpu,
                 "hostname": "h", "node": "n1", "pid": 1}, submitted=_at(start - 0.5), landed=_at(end))


def test_busy_is_the_union_of_work_and_an_actor_start_is_not_work(tmp_path):
    _sweep(tmp_path, (0, 100))
    _log(tmp_path, [("train", "a", 5, 45, "GPU-a"), ("train", "b", 10, 30, "GPU-a"),   # overlapping: 40 s
                    ("start", "actor", 50, 55, "GPU-a"), ("time", "s1", 55, 75, "GPU-a")])
    steps, wall, n = timeline.load(tmp_path)
    stats = timeline.lane_stats(steps, wall)
    assert n == 1 and wall == 100 and list(stats["lane"]) == ["h GPU 0"]
    assert stats["busy_s"].iloc[0] == pytest.approx(60.0) and stats["busy_pct"].iloc[0] == pytest.approx(60.0)
    assert timeline.seconds_by_kind(steps) == pytest.approx({"train": 60.0, "start": 5.0, "time": 20.0})
    assert timeline.overhead_seconds(steps) == pytest.approx(4 * 0.5)  # submitted 0.5 s before each start


def test_invocations_are_laid_end_to_end_and_summed(tmp_path):
    """A stopped and resumed sweep: its wall is the sum of its invocations, the pause is not in it."""
    _sweep(tmp_path, (0, 50), (1000, 30))
    _log(tmp_path, [("train", "a", 10, 40, "GPU-a"), ("time", "s", 1010, 1020, "GPU-a")])
    steps, wall, n = timeline.load(tmp_path)
    assert n == 2 and wall == 80
    assert sorted(steps["x0"].round(3)) == [10.0, 60.0]  # 50 s of the first invocation + 10 s into the second
    lines = timeline.section(tmp_path, tmp_path)
    text = "\n".join(lines)
    assert "2 invocation(s), 80 s of wall time" in text and "| h GPU 0 | 2 | 40 | 50 |" in text
    assert (tmp_path / "timeline.png").exists()


def test_gpus_get_one_lane_each_and_cpu_steps_their_host_s(tmp_path):
    _sweep(tmp_path, (0, 10))
    _log(tmp_path, [("time", "x", 1, 2, "GPU-b"), ("time", "y", 1, 2, "GPU-a"), ("train", "z", 1, 3, None)])
    steps, _, _ = timeline.load(tmp_path)
    assert dict(zip(steps["gpu_uuid"].fillna("-"), steps["lane"])) == {"GPU-a": "h GPU 0", "GPU-b": "h GPU 1",
                                                                        "-": "h CPU"}


def test_no_steps_no_section(tmp_path):
    assert timeline.section(tmp_path / "empty", tmp_path) == []


# ---- the train phase's order --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def default_spec():
    return load_sweep(ROOT / "variants" / "default.yaml")


def test_trainings_longest_chain_first(default_spec):
    order = [m.key for m in training.train_order(list(default_spec.models))]
    cost = {m.key: training.train_cost(m) for m in default_spec.models}
    # resnet18 alone trains shorter than shufflenet, but with its student it is the longest chain.
    assert cost["resnet18"] < cost["shufflenet"] < cost["resnet18"] + cost["mobilenet_kd"]
    assert order[0] == "resnet18" and order[-1] == "airbench"


def test_a_student_starts_only_after_its_teacher(default_spec):
    queue = training.train_order(list(default_spec.models))
    assert training.next_training(queue, set()).key == "resnet18"
    waiting = [m for m in queue if m.key not in ("resnet18", "shufflenet")]
    assert training.next_training(waiting, {"shufflenet"}).key != "mobilenet_kd"  # teacher still training
    assert training.next_training([m for m in queue if m.key == "mobilenet_kd"], set()) is None
    assert training.next_training([m for m in queue if m.key == "mobilenet_kd"], {"resnet18"}).key == "mobilenet_kd"


def test_unknown_arch_gets_the_default_cost():
    assert training.arch_cost("my_new_net") == training.DEFAULT_COST
    assert training.arch_cost("shufflenet_v2_x0_5_cifar") == training.ARCH_COST["shufflenet_v2"]
