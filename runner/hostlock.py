"""One timing at a time per machine: a reader-writer lock on files, shared by every task on the host.

Why, measured on 2x H200 (reports/h200x2-default/): with a bench task on each GPU of one host, a variant
timed while the task on the other GPU prepared, compiled, evaluated or checked its own variants read up to
2.7x slower (eager) and 7-40% slower (CUDA graphs, whose event time includes the host's launch delay) than
the same variant re-timed later by timing-only tasks, which agreed with an independent timer. A GPU to
itself is not enough: a measurement needs the host to itself.

So timing takes the lock *exclusively* (`timing()`), and everything else a task does on the host -
training, preparing, compiling, capturing, evaluating, checking - takes it *shared* (`busy()`): that work
still overlaps on every GPU, and a timing waits until it stops. So does the work around the tasks: a Ray
worker's imports (runner/worker_setup.py), a task's fetch of its checkpoint and data (tasks.fetch), and
the driver landing results (phases.run_phase). Writer preference (a turnstile every reader passes
through) keeps a timing from waiting forever behind a stream of short shared sections. Shared holds must
never nest: a timing waiting at the turnstile would wait for the outer hold forever.

`flock` and not a Ray actor: the kernel drops the lock of a process that dies (a killed task never
blocks the host), and the files are per machine, so two raylets on one host (two `ray start` nodes
sharing a machine) share them too. On a system without fcntl both are no-ops.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import time
from typing import Iterator

try:
    import fcntl
except ImportError:  # not POSIX: no host lock (the sweep's phases still keep training away from timing)
    fcntl = None

LOCK_DIR_ENV = "CIFAR_RUNNER_LOCK_DIR"   # where the lock files live; default: the system temp dir


def lock_path(name: str) -> str:
    return os.path.join(os.environ.get(LOCK_DIR_ENV) or tempfile.gettempdir(), f"cifar-runner-{name}.lock")


@contextlib.contextmanager
def _flock(name: str, exclusive: bool) -> Iterator[None]:
    if fcntl is None:
        yield
        return
    path = lock_path(name)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        with contextlib.suppress(OSError):
            os.fchmod(fd, 0o666)  # every user's sweeps on the machine share it (umask would narrow it)
    except PermissionError:  # another user's file without write access: flock works on a read-only fd
        fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # closing the descriptor drops the lock


class Wait:
    """How long a `timing()` block waited for the host (seconds), set once the lock is held."""
    s: float = 0.0


@contextlib.contextmanager
def timing() -> Iterator[Wait]:
    """Nothing else of ours works on this host while the block runs (waits for shared holders to leave).
    Yields a Wait: the rows record it (`host_wait_s`), so the cost of exclusivity shows in the report."""
    release_exit_hold()  # a process never waits on itself
    waited = Wait()
    t0 = time.perf_counter()
    with _flock("turnstile", True), _flock("host", True):
        waited.s = time.perf_counter() - t0
        yield waited


@contextlib.contextmanager
def busy() -> Iterator[None]:
    """Host work that may overlap other host work but never a timing."""
    with _flock("turnstile", True):
        pass  # a timing that waits holds the turnstile: new shared holders queue behind it
    with _flock("host", False):
        yield


# ---- a hold that ends with the process -------------------------------------------------------------------

EXIT_HOLD_MAX_S = 30.0  # a process that outlives its task this long lets timings go on anyway
_exit_hold: int | None = None
_exit_lock = threading.Lock()


def hold_until_exit(max_s: float = EXIT_HOLD_MAX_S) -> None:
    """A shared hold that the kernel drops when this process dies, for a GPU task's last step.

    Why, measured on 2x H200 (reports/h200-neighbour/): processes that create a CUDA context on one GPU
    and exit made an eager timing on the *other* GPU up to 2x slower (O1 3.1 -> 6.2 ms); a task's exit
    tears its context down after its last line of Python. Held to the end, that teardown never overlaps a
    timing. For processes that end after their task (the sweep's `max_calls=1`); in any other, a timer
    drops the hold after `max_s`, and a `timing()` in the same process drops it first.
    """
    global _exit_hold
    if fcntl is None:
        return
    with _flock("turnstile", True):
        pass  # as busy(): behind a timing that is waiting
    fd = os.open(lock_path("host"), os.O_RDONLY | os.O_CREAT, 0o666)
    fcntl.flock(fd, fcntl.LOCK_SH)
    with _exit_lock:
        if _exit_hold is not None:
            os.close(fd)  # held already
            return
        _exit_hold = fd
    timer = threading.Timer(max_s, release_exit_hold)
    timer.daemon = True
    timer.start()


def release_exit_hold() -> None:
    global _exit_hold
    with _exit_lock:
        if _exit_hold is not None:
            os.close(_exit_hold)
            _exit_hold = None


def exit_hold_held() -> bool:
    return _exit_hold is not None
