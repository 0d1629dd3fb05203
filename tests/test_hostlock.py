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


def _spy_on_cpu(monkeypatch, record, *targets: tuple[object, str, str]) -> None:
    """Run tasks on the CPU, and wrap each (module, function, name) so that every call first does
    record(name)."""
    import torch

    from runner import tasks

    for obj, attr, name in targets:
        def wrapped(*a, _fn=getattr(obj, attr), _name=name, **k):
            record(_name)
            return _fn(*a, **k)
        monkeypatch.setattr(obj, attr, wrapped)
    monkeypatch.setattr(tasks, "task_device", lambda: torch.device("cpu"))


def test_a_bench_task_times_only_with_the_host_to_itself(monkeypatch):
    """bench_job and recheck_job on the CPU with the lock's two holds recorded: every timing call (the
    benchmark, the pair) runs inside `timing()`, every preparation and check inside `busy()`, never both."""
    import contextlib

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

    monkeypatch.setattr(hostlock, "timing", hold("timing"))
    monkeypatch.setattr(hostlock, "busy", hold("busy"))
    _spy_on_cpu(monkeypatch, lambda name: seen.append((name, tuple(held))),
                (bench_mod, "measure", "measure"), (pairs, "interleaved", "pair"),
                (optimize, "prepare", "prepare"), (tasks, "_checks", "checks"))

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
    from runner import bench as bench_mod, breakdown, pairs, tasks
    from variants import BenchSpec, Variant

    order: list[str] = []
    monkeypatch.setenv(hostlock.LOCK_DIR_ENV, str(tmp_path))
    _spy_on_cpu(monkeypatch, order.append, (bench_mod, "measure", "time"), (pairs, "interleaved", "time"),
                (breakdown, "kernel_breakdown", "diagnose"), (tasks, "_checks", "diagnose"))
    spec, ckpt, data = _tiny_trained()
    a, b, c = (Variant("tiny", precision="fp32"), Variant("tiny", precision="fp32", memory_format="channels_last"),
               Variant("tiny", precision="fp32", bn_fold=True))
    bench = BenchSpec(warmup=1, iters=5, repeats=2, eval_batch_size=64, pair_rounds=2, slices=2)
    out = tasks.bench_job([a, b, c], [(a, b), (a, c)], spec, ckpt, data, bench, "s",
                          {v.variant_id: v.variant_id for v in (a, b, c)})
    assert all(rows[0]["status"] == "ok" for rows, _ in out["bench"].values()) and len(out["pairs"]) == 2
    # 3 variants x 2 repeats x 2 slices (one timing each, round-robin) + 2 pairs; 3 x (breakdown, checks)
    assert order.count("time") == 14 and order.count("diagnose") == 6
    assert order == ["time"] * 14 + ["diagnose"] * 6, order


# ---- the hold a GPU task keeps to its process's end (its CUDA context's teardown) ----------------------

def _hold_to_exit(lock_dir: str, q, linger_s: float, max_s: float) -> None:
    os.environ[hostlock.LOCK_DIR_ENV] = lock_dir
    hostlock.hold_until_exit(max_s=max_s)
    q.put("held")
    time.sleep(linger_s)  # the task has returned; the process is still ending


def _timing_after_exit_hold(lock_dir: str, q) -> None:
    os.environ[hostlock.LOCK_DIR_ENV] = lock_dir
    hostlock.hold_until_exit()
    with hostlock.timing():
        q.put(hostlock.exit_hold_held())


def _wait_for_timing_after(holder_kwargs: dict, lock_dir) -> tuple[float, object]:
    """Starts a process that takes the exit hold, then times how long a timing here waits for the host."""
    q = CTX.Queue()
    holder = CTX.Process(target=_hold_to_exit, args=(str(lock_dir), q), kwargs=holder_kwargs)
    holder.start()
    assert q.get(timeout=20) == "held"
    os.environ[hostlock.LOCK_DIR_ENV] = str(lock_dir)
    try:
        t0 = time.monotonic()
        with hostlock.timing():
            waited = time.monotonic() - t0
            # The kernel drops the lock as the process closes its files on exit, a moment before the
            # process is gone: give it that moment (a hold dropped early shows as a short wait instead).
            holder.join(min(2.0, holder_kwargs.get("max_s", 2.0)))
            alive = holder.is_alive()
    finally:
        os.environ.pop(hostlock.LOCK_DIR_ENV, None)
        holder.kill()
        holder.join(10)
    return waited, alive


def test_a_timing_waits_for_a_finished_task_s_process_to_end(tmp_path):
    waited, alive = _wait_for_timing_after({"linger_s": 1.0, "max_s": 30.0}, tmp_path)
    assert 0.7 < waited < 10 and not alive  # the kernel dropped the hold with the process, not before


def test_the_exit_hold_lets_go_after_its_limit(tmp_path):
    """A process that outlives its task (not the sweep's max_calls=1) blocks timings for max_s at most."""
    waited, alive = _wait_for_timing_after({"linger_s": 60.0, "max_s": 0.5}, tmp_path)
    assert waited < 10 and alive


def test_a_timing_in_the_holding_process_drops_its_exit_hold(tmp_path):
    q = CTX.Queue()
    p = CTX.Process(target=_timing_after_exit_hold, args=(str(tmp_path), q))
    p.start()
    p.join(20)
    assert p.exitcode == 0, "a timing after hold_until_exit in one process deadlocked"
    assert q.get(timeout=1) is False


def test_a_cpu_task_keeps_no_exit_hold(tmp_path, monkeypatch):
    import ray

    from runner import tasks

    monkeypatch.setenv(hostlock.LOCK_DIR_ENV, str(tmp_path))
    ray_before = ray.is_initialized()
    with tasks.on_gpu() as device:
        assert device.type == "cpu"
    assert not hostlock.exit_hold_held()
    assert ray.is_initialized() == ray_before  # asking Ray for GPUs outside Ray would start a local instance


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_a_gpu_task_creates_its_context_in_a_shared_hold_and_holds_to_its_end(tmp_path):
    """In a fresh process (a CUDA context cannot be un-made): the context exists when task_device's busy()
    ends, and on_gpu's end leaves the exit hold taken."""
    q = CTX.Queue()
    p = mp.get_context("spawn").Process(target=_gpu_task_probe, args=(str(tmp_path), q))
    p.start()
    p.join(120)
    assert p.exitcode == 0
    assert q.get(timeout=1) == {"context_made_in_busy": True, "held_after": True}


def _gpu_task_probe(lock_dir: str, q) -> None:
    import contextlib

    import ray
    import torch

    from runner import tasks

    os.environ[hostlock.LOCK_DIR_ENV] = lock_dir
    ray.is_initialized = lambda: True  # as inside a Ray task given one GPU
    ray.get_gpu_ids = lambda: [0]
    seen = {}
    real_busy = hostlock.busy

    @contextlib.contextmanager
    def busy():
        with real_busy():
            yield
            seen.setdefault("context_made_in_busy", torch.cuda.is_initialized())

    hostlock.busy = busy
    with tasks.on_gpu():
        pass
    seen["held_after"] = hostlock.exit_hold_held()
    q.put(seen)


def _process_gone(pid: int) -> bool:
    """Exited: no such process, or a zombie its parent has not reaped yet."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="reads process states from /proc")
def test_a_ray_task_s_exit_hold_lasts_until_its_worker_is_gone(tmp_path, monkeypatch):
    """Real Ray, max_calls=1 as the sweep's tasks: a task that ends with hold_until_exit keeps a timing
    waiting until its worker process has exited, and no longer (well under the 30-s fallback)."""
    import ray

    monkeypatch.setenv(hostlock.LOCK_DIR_ENV, str(tmp_path))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR",
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]),
                                       hostlock.LOCK_DIR_ENV: str(tmp_path)}})
    try:
        def task():  # shipped by value; imports the project in the worker
            import os

            from runner import hostlock
            hostlock.hold_until_exit()
            return os.getpid()

        remote = ray.remote(num_cpus=1, max_calls=1)(task)
        for _ in range(2):
            pid = ray.get(remote.remote(), timeout=120)
            t0 = time.monotonic()
            with hostlock.timing():
                waited = time.monotonic() - t0
                gone = _process_gone(pid)
            assert gone, "the timing started while the task's worker was still alive"
            assert waited < 10, waited
    finally:
        ray.shutdown()
