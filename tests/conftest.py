"""Shared by the whole suite: process-wide state restored after every test, and one small sweep per session.

- `runner.breakdown` remembers that this process ran torch.profiler, and `runner.bench` then refuses to time
  (every later launch reads slow: docs/investigations/h200-inflation/). On a GPU machine the breakdown tests
  profile for real, so without the reset every later timing test in the session would fail there (issue 22).
- PYTHONPATH: the checkout first, then whatever the environment had (below).
- The suite starts a dozen local Ray clusters; RUNNER_DASHBOARD=0 leaves the dashboard out of each (its start
  costs a core for seconds on a 2-core machine). test_reaper, which checks the dashboard's port, turns it on.
- `tiny_sweep`: one real sweep (local Ray, synthetic data, 1 epoch) that the end-to-end and export tests
  read; a test that changes the folder works on a copy (`copy_of`).
"""
from __future__ import annotations

import os
import shutil

import pytest

os.environ.setdefault("RUNNER_DASHBOARD", "0")
# Child processes (`python -m runner ...`) import the project from this checkout and keep what the environment
# already had on the path: on the lent GPU machine Ray itself comes through PYTHONPATH (the kit in /tmp/site),
# so a test that replaced it started sweeps that could not import ray (issue 22).
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_ROOT, os.environ.get("PYTHONPATH", "")) if p)

TINY_SWEEP = """
sweep: e2e
data: {source: synthetic}
bench: {warmup: 3, iters: 10, repeats: 3, eval_batch_size: 64}   # CPU calls, not launch overhead, set its time
train: {per_gpu: 3}             # on a GPU machine tiny and broken train side by side (a CPU: one per CPU)
models:
  tiny:
    arch: airbench_cifar
    arch_args: {width_mult: 0.25}
    recipe: {epochs: 1, batch_size: 64, lr: 0.05, train_subset: 256, test_subset: 64}
  tiny_kd:
    arch: airbench_cifar
    arch_args: {width_mult: 0.25}
    teacher: tiny
    recipe: {epochs: 1, batch_size: 64, lr: 0.05, train_subset: 256, test_subset: 64}
  broken:                       # more images per batch than the data has: training fails inside its task
    arch: shufflenet_v2_x0_5_cifar
    recipe: {epochs: 1, batch_size: 4096, test_subset: 128}
grid:                           # fp32 only: bf16 convolutions take 150-170 ms a call on a 2-core CPU
  - models: [tiny]
    memory_format: [contiguous, channels_last]
  - models: [tiny]
    bn_fold: [on]
  - models: [tiny]
    cuda_graph: [on]            # on a CPU: a skipped row with its reason
named:
  B2: {model: tiny, precision: fp32, label: "tiny fp32"}
  D1: {model: tiny_kd, precision: fp32, label: "distilled"}
  B1: {model: broken, precision: fp32}
"""


@pytest.fixture(autouse=True)
def _forget_profiling():
    yield
    from runner import breakdown

    breakdown._profiled = False


@pytest.fixture(scope="session")
def tiny_sweep(tmp_path_factory):
    """(spec, data, run folder, report path, the sweep's log lines) of TINY_SWEEP, run once per session."""
    from runner.data import load
    from runner.sweep import run_sweep
    from variants import load_sweep

    root = tmp_path_factory.mktemp("sweep")
    (root / "e2e.yaml").write_text(TINY_SWEEP)
    spec, data = load_sweep(root / "e2e.yaml"), load("synthetic")  # what `export` loads for it too
    lines: list[str] = []
    report = run_sweep(spec, data, root / "runs" / "e2e", log=lines.append)
    return spec, data, root / "runs" / "e2e", report, lines


@pytest.fixture
def copy_of(tmp_path):
    """copy_of(folder): a copy of a run folder in this test's tmp_path, for a test that writes into it."""
    def copy(folder):
        return shutil.copytree(folder, tmp_path / folder.name)
    return copy
