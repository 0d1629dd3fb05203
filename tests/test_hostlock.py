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
