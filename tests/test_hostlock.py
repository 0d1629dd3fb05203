"""runner/hostlock.py with real processes and real flock: timing excludes all other host work, shared work
overlaps, a waiting timing goes before later shared work, and a killed holder never blocks the host."""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time

import pytest

from runner import hostlock

CTX = mp.get_context("fork")


def _hold(kind: str, seconds: float, lock_dir: str, out, start_after: float = 0.0) -> None:
    os.environ[hostlock.LOCK_DIR_ENV] = lock_dir
    time.sleep(start_after)
    asked = time.monotonic()
    with (hostlock.timing() if kind == "timing" else hostlock.busy()):
        got = time.monotonic()
        time.sleep(seconds)
        out.put((kind, start_after, asked, got, time.monotonic()))


def _run(lock_dir, *specs) -> list[tuple]:
    """specs: (kind, seconds, start_after); returns (kind, start_after, asked, got, released) per holder."""
    q = CTX.Queue()
    procs = [CTX.Process(target=_hold, args=(k, s, str(lock_dir), q, a)) for k, s, a in specs]
    for p in procs:
        p.start()
    rows = [q.get(timeout=30) for _ in procs]
    for p in procs:
        p.join(10)
    return sorted(rows, key=lambda r: r[1])


def _overlap(a, b) -> bool:
    return a[3] < b[4] and b[3] < a[4]


def test_shared_work_overlaps(tmp_path):
    a, b = _run(tmp_path, ("busy", 0.6, 0.0), ("busy", 0.6, 0.1))
    assert _overlap(a, b)


def test_a_timing_waits_for_shared_work_and_blocks_it(tmp_path):
    busy, timing, late = _run(tmp_path, ("busy", 0.6, 0.0), ("timing", 0.4, 0.15), ("busy", 0.2, 0.3))
    assert not _overlap(busy, timing) and timing[3] >= busy[4] - 0.01
    assert not _overlap(timing, late)
    # writer preference: the shared section asked for after the timing started waiting runs after it
    assert late[3] >= timing[4] - 0.01


def test_two_timings_never_overlap(tmp_path):
    a, b = _run(tmp_path, ("timing", 0.4, 0.0), ("timing", 0.4, 0.1))
    assert not _overlap(a, b)


def test_a_killed_holder_releases_the_host(tmp_path):
    os.environ[hostlock.LOCK_DIR_ENV] = str(tmp_path)
    try:
        q = CTX.Queue()
        holder = CTX.Process(target=_hold, args=("timing", 60.0, str(tmp_path), q))
        holder.start()
        time.sleep(0.5)  # the holder has the lock now
        os.kill(holder.pid, signal.SIGKILL)
        holder.join(10)
        t0 = time.monotonic()
        with hostlock.timing():
            waited = time.monotonic() - t0
        assert waited < 2.0
    finally:
        os.environ.pop(hostlock.LOCK_DIR_ENV, None)


def test_the_lock_files_live_in_the_chosen_folder(tmp_path, monkeypatch):
    monkeypatch.setenv(hostlock.LOCK_DIR_ENV, str(tmp_path))
    with hostlock.busy():
        pass
    assert (tmp_path / "cifar-runner-host.lock").exists() and (tmp_path / "cifar-runner-turnstile.lock").exists()


@pytest.mark.parametrize("kind", ["timing", "busy"])
def test_nested_use_in_one_process_does_not_deadlock_across_kinds(tmp_path, monkeypatch, kind):
    """A task takes busy, releases, then timing, in sequence: each block releases what it took."""
    monkeypatch.setenv(hostlock.LOCK_DIR_ENV, str(tmp_path))
    for _ in range(3):
        with (hostlock.timing() if kind == "timing" else hostlock.busy()):
            pass
    with hostlock.timing():
        pass


# ---- the bench task's use of it: what runs under which hold -------------------------------------------

def _tiny_trained():
    """(TrainSpec, checkpoint, data) of a quarter-width airbench trained one epoch on 128 synthetic images."""
    import torch

    from runner.data import synthetic
    from runner.train import train
    from variants import Recipe, TrainSpec

    torch.set_num_threads(1)
    data = synthetic(n_train=128, n_test=64)
    spec = TrainSpec(key="tiny", arch="airbench_cifar", arch_args=(("width_mult", 0.25),), seed=0,
                     recipe=Recipe(epochs=1, batch_size=64, lr=0.05, train_subset=128, test_subset=64))
    return spec, train(spec, data, torch.device("cpu"), log=lambda s: None), data


def test_a_bench_task_times_only_with_the_host_to_itself(monkeypatch):
    """bench_job and recheck_job on the CPU with the lock's two holds recorded: every timing call (the
    benchmark, the pair) runs inside `timing()`, every preparation and check inside `busy()`, never both."""
    import contextlib

    import torch

    from runner import bench as bench_mod, optimize, pairs, tasks
    from variants import BenchSpec, Variant

    held: list[str] = []
    seen: list[tuple[str, tuple]] = []

    def hold(kind):
        @contextlib.contextmanager
        def cm():
            assert not held, f"{kind} taken inside {held}"  # the two holds never nest
            held.append(kind)
            try:
                yield hostlock.Wait()
            finally:
                held.pop()
        return cm

    def under(name, fn):
        def wrapped(*a, **k):
            seen.append((name, tuple(held)))
            return fn(*a, **k)
        return wrapped

    monkeypatch.setattr(hostlock, "timing", hold("timing"))
    monkeypatch.setattr(hostlock, "busy", hold("busy"))
    monkeypatch.setattr(bench_mod, "measure", under("measure", bench_mod.measure))
    monkeypatch.setattr(pairs, "interleaved", under("pair", pairs.interleaved))
    monkeypatch.setattr(optimize, "prepare", under("prepare", optimize.prepare))
    monkeypatch.setattr(tasks, "_checks", under("checks", tasks._checks))
    monkeypatch.setattr(tasks, "task_device", lambda: torch.device("cpu"))

    spec, ckpt, data = _tiny_trained()
    parent = Variant("tiny", precision="fp32")
    child = Variant("tiny", precision="fp32", memory_format="channels_last")
    bench = BenchSpec(warmup=1, iters=5, repeats=2, eval_batch_size=64, pair_rounds=2)
    out = tasks.bench_job([parent, child], [(parent, child)], spec, ckpt, data, bench, "s",
                          {parent.variant_id: "h1", child.variant_id: "h2"})
    assert all(rows[0]["status"] == "ok" for rows, _ in out["bench"].values())
    assert len(out["pairs"]) == 1 and out["pairs"][0]["status"] == "ok"
    rows = tasks.recheck_job([parent, child], ckpt, bench)
    assert [r["variant_id"] for r in rows] == [child.variant_id, parent.variant_id]  # reverse order
    kinds = {name for name, _ in seen}
    assert kinds == {"measure", "pair", "prepare", "checks"}
    for name, holds in seen:
        assert holds == (("timing",) if name in ("measure", "pair") else ("busy",)), (name, holds)
    assert all(rows[0]["host_wait_s"] >= 0 for rows, _ in out["bench"].values())


def test_a_starting_ray_worker_imports_inside_a_shared_hold(tmp_path, monkeypatch):
    """Real Ray, with the sweep's worker setup hook: while this process holds a timing, no worker can finish
    starting (its torch import waits in the hook), so no task runs; released, the task runs."""
    import ray

    from runner import worker_setup

    monkeypatch.setenv(hostlock.LOCK_DIR_ENV, str(tmp_path))  # workers inherit it through the raylet
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with hostlock.timing():
        ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR",
                 runtime_env={"worker_process_setup_hook": worker_setup.HOOK,
                              "env_vars": {"PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]),
                                           hostlock.LOCK_DIR_ENV: str(tmp_path)}})
        try:
            def modules():  # defined here, so Ray ships it by value and the worker imports nothing for it
                import sys
                return sorted(m for m in ("torch", "runner.tasks") if m in sys.modules)

            ref = ray.remote(num_cpus=1)(modules).remote()
            ready, _ = ray.wait([ref], timeout=8)
        except BaseException:
            ray.shutdown()
            raise
    try:
        assert not ready, "a worker started and ran a task while the host was held for a timing"
        assert ray.get(ref, timeout=120) == ["runner.tasks", "torch"]  # the hook ran, after the release
    finally:
        ray.shutdown()


def test_a_bench_task_times_everything_before_it_profiles_or_checks(tmp_path, monkeypatch):
    """No timing in a bench task follows a kernel breakdown (its profiler slows every later launch of the
    process, reports/h200-inflation/) or an accuracy check: variants first, then pairs, then diagnostics."""
    import torch

    from runner import bench as bench_mod, breakdown, pairs, tasks
    from variants import BenchSpec, Variant

    order: list[str] = []

    def spy(name, fn):
        def wrapped(*a, **k):
            order.append(name)
            return fn(*a, **k)
        return wrapped

    monkeypatch.setenv(hostlock.LOCK_DIR_ENV, str(tmp_path))
    monkeypatch.setattr(bench_mod, "measure", spy("time", bench_mod.measure))
    monkeypatch.setattr(pairs, "interleaved", spy("time", pairs.interleaved))
    monkeypatch.setattr(breakdown, "kernel_breakdown", spy("diagnose", breakdown.kernel_breakdown))
    monkeypatch.setattr(tasks, "_checks", spy("diagnose", tasks._checks))
    monkeypatch.setattr(tasks, "task_device", lambda: torch.device("cpu"))
    spec, ckpt, data = _tiny_trained()
    a, b, c = (Variant("tiny", precision="fp32"), Variant("tiny", precision="fp32", memory_format="channels_last"),
               Variant("tiny", precision="fp32", bn_fold=True))
    bench = BenchSpec(warmup=1, iters=5, repeats=2, eval_batch_size=64, pair_rounds=2)
    out = tasks.bench_job([a, b, c], [(a, b), (a, c)], spec, ckpt, data, bench, "s",
                          {v.variant_id: v.variant_id for v in (a, b, c)})
    assert all(rows[0]["status"] == "ok" for rows, _ in out["bench"].values()) and len(out["pairs"]) == 2
    assert order.count("time") == 5 and order.count("diagnose") == 6  # 3 variants + 2 pairs; 3 x (breakdown, checks)
    assert order == ["time"] * 5 + ["diagnose"] * 6, order
