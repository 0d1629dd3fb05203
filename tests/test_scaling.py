"""Scaling past two GPUs, checked on CPU: what the sweep's own `task_resources` asks of Ray, and what that
means on nodes of 1 to 64 GPUs.

Ray places a task on a node when every resource it asks for is free there; so the number of a sweep's tasks
that run at once on a node follows from the task's resource dict and the node's totals (`_at_once`). The
properties below are the ones the sweep relies on: one benchmark per GPU and every GPU busy, never two on
one GPU; on a CPU-only node a benchmark alone. Ray's own scheduling of those requests is exercised on a real
cluster by tests/test_sweep_e2e.py and tests/test_multinode.py; what no CPU test can show (wall-clock
speed-up on 4 and 8 real H200s) is listed in the issue's closing note.
"""
from __future__ import annotations

import math

import pytest

from runner import sweep
from runner.sweep import task_resources

_RAY_NAMES = {"num_gpus": "GPU", "num_cpus": "CPU"}


def _at_once(task: dict, node: dict[str, float]) -> int:
    """How many copies of a task with these options fit on an idle node with these totals."""
    return min(math.floor(node[_RAY_NAMES[k]] / v) for k, v in task.items() if v > 0)


@pytest.mark.parametrize("gpus", [1, 2, 4, 8, 64])
@pytest.mark.parametrize("cpu_factor", [1, 2, 16])
def test_one_task_per_gpu_and_every_gpu_busy(gpus, cpu_factor):
    node = {"GPU": gpus, "CPU": gpus * cpu_factor}
    train, bench = task_resources(gpus, cpus_per_node=node["CPU"])
    for task in (train, bench):
        assert task["num_gpus"] == 1            # a whole GPU: Ray never gives two tasks one device
        assert _at_once(task, node) == gpus     # the CPU request never limits a node with a CPU per GPU
    # one GPU fewer than the tasks: the extra one waits instead of sharing
    assert _at_once(bench, {**node, "GPU": gpus - 1}) == gpus - 1


@pytest.mark.parametrize("cpus", [1, 2, 16, 128])
def test_cpu_only_benchmark_runs_alone_on_its_node(cpus):
    node = {"GPU": 0, "CPU": cpus}
    train, bench = task_resources(0, cpus_per_node=cpus)
    assert "num_gpus" not in train and "num_gpus" not in bench
    assert _at_once(bench, node) == 1           # nothing else is timed on the host at the same time
    assert _at_once(train, node) == cpus        # trainings still fill the node (they are not timed)


def test_every_task_runs_in_a_fresh_worker_process():
    """max_calls=1: Ray starts a new worker per task, so no compile cache, CUDA context or allocator state
    leaks from one timed variant into the next (README: "runs in a fresh worker process")."""
    for task in (sweep.train_task, sweep.bench_task, sweep.recheck_task):
        assert task._default_options["max_calls"] == 1
