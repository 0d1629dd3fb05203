"""Scaling past two GPUs, checked on CPU: what the sweep's own `resources` asks of Ray, and what that means
on nodes of 1 to 64 GPUs.

Ray places a task on a node when every resource it asks for is free there; so the number of a sweep's tasks
that run at once on a node follows from the task's resource dict and the node's totals (`_at_once`). The
properties below are the ones the sweep relies on: one benchmark actor per GPU and every GPU busy, never two on
one GPU; on a CPU-only node an actor alone. Ray's own scheduling of those requests is exercised on a real
cluster by tests/test_sweep_e2e.py and tests/test_multinode.py; what no CPU test can show (wall-clock
speed-up on 4 and 8 real H200s) is listed in the issue's closing note.
"""
from __future__ import annotations

import math

import pytest

from runner.sweep import resources

_RAY_NAMES = {"num_gpus": "GPU", "num_cpus": "CPU"}


def _at_once(task: dict, node: dict[str, float]) -> int:
    """How many copies of a task with these options fit on an idle node with these totals."""
    return min(math.floor(node[_RAY_NAMES[k]] / v) for k, v in task.items() if v > 0)


@pytest.mark.parametrize("gpus", [1, 2, 4, 8, 64])
@pytest.mark.parametrize("cpu_factor", [1, 2, 16])
@pytest.mark.parametrize("per_gpu", [1, 3])
def test_one_actor_per_gpu_and_trainings_packed_as_asked(gpus, cpu_factor, per_gpu):
    node = {"GPU": gpus, "CPU": gpus * cpu_factor * per_gpu}
    train, actor = resources(gpus, node["CPU"], per_gpu)
    assert actor["num_gpus"] == 1                  # a whole GPU: Ray never places two actors on one device
    assert _at_once(actor, node) == gpus           # every GPU gets its actor
    assert _at_once(actor, {**node, "GPU": gpus - 1}) == gpus - 1  # one GPU fewer: an actor waits, never shares
    assert _at_once(train, node) == gpus * per_gpu  # trainings fill every GPU, `per_gpu` each


@pytest.mark.parametrize("cpus", [1, 2, 16, 128])
def test_cpu_only_actor_takes_its_whole_node(cpus):
    node = {"GPU": 0, "CPU": cpus}
    train, actor = resources(0, cpus, 3)
    assert "num_gpus" not in train and "num_gpus" not in actor
    assert _at_once(actor, node) == 1           # nothing else of ours runs on the host beside its timings
    assert _at_once(train, node) == cpus        # trainings still fill the node (they are not timed)


def test_trainings_run_in_fresh_processes_and_the_actor_is_an_actor():
    """max_calls=1: a training's worker exits after it, so no process that trained ever times; the
    benchmark worker is a Ray actor class (one long-lived process per GPU)."""
    from runner.engine import bench_phase, training
    assert training.train_task._default_options["max_calls"] == 1
    assert hasattr(bench_phase.Actor, "remote") and hasattr(bench_phase.Actor, "options")
