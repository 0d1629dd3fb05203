"""Driver guards: what keeps one sweep from hurting another run, the user's files or the machine.

    paths     every file the sweep writes stays inside its run folder (names are checked at load too)
    lock      one sweep per run folder at a time (runs/<sweep>/.sweep.lock: pid, its start ticks, host, time)
    address   `--address` to a cluster that is not there fails in seconds, not minutes of retries
    signals   Ctrl-C or SIGTERM stops the sweep; a second one cannot cut the clean-up short
    errors    the exception inside a Ray task, not Ray's wrapper, names what went wrong

Each guard raises GuardError with one line a user can act on; the CLI prints it and exits 2.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import tempfile
import threading
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

from runner import files
from runner.reaper import start_ticks

LOCK_NAME = ".sweep.lock"
PROBE_TIMEOUT_S = 5.0


class GuardError(RuntimeError):
    """A guard refused to go on; the message says why and what to do."""


# ---- paths ---------------------------------------------------------------------------------------------

def inside(run_dir: Path, path: Path) -> Path:
    """`path`, after checking it resolves to somewhere inside `run_dir` (symlinks and '..' included)."""
    root, target = Path(run_dir).resolve(), Path(path).resolve()
    if not target.is_relative_to(root):
        raise GuardError(f"refusing to write {path}: it resolves to {target}, outside the run folder {root}")
    return path


def run_folder(out: str | Path, name: str) -> Path:
    """`out/name`, the run folder of a sweep; `name` must stay one plain level below `out`."""
    from variants.checks import name_problem

    problem = name_problem(name)
    if problem:
        raise GuardError(f"sweep name: {problem}")
    return inside(Path(out), Path(out) / name)


def check_paths(spec: Any, run_dir: Path) -> None:
    """Belt and braces for the load-time name checks: every file the sweep will write from a model key or
    a variant id is a direct child of its sub-folder of `run_dir` (so the merge reads it back)."""
    planned = [("checkpoints", f"{m.key}.pt") for m in spec.models]
    planned += [("training", f"{m.key}.parquet") for m in spec.models]
    planned += [(sub, f"{v.variant_id}.parquet") for v in spec.variants for sub in ("results", "samples")]
    for sub, name in planned:
        path = inside(run_dir, run_dir / sub / name)
        if path.resolve().parent != (run_dir / sub).resolve():
            raise GuardError(f"refusing to write {path}: not directly inside {run_dir / sub}")


# ---- one sweep per run folder --------------------------------------------------------------------------

def _owner_gone(lock: dict) -> str | None:
    """Why the process a lock of this host names is no longer its owner, or None while it is. A pid alone
    is not enough: after a reboot or many processes the same pid runs something else, so the lock also
    keeps the owner's start time (/proc/<pid>/stat); a lock without one (older code) is judged by pid."""
    try:
        os.kill(lock["pid"], 0)
    except ProcessLookupError:
        return "is no longer running"
    except PermissionError:  # alive, owned by someone else
        pass
    recorded, now = lock.get("pid_start"), start_ticks(lock["pid"])
    if isinstance(recorded, int) and now is not None and now != recorded:
        return "is no longer running (that pid now belongs to a process started later)"
    return None


def _read_lock(path: Path) -> dict | None:
    try:
        info = files.read_json(path, limit=1 << 16)  # capped: a lock linked to /dev/zero is only unreadable
        return info if isinstance(info, dict) and isinstance(info.get("pid"), int) else None
    except (OSError, ValueError):
        return None


def _create_lock(path: Path, info: dict) -> bool:
    """Create `path` holding `info` in one step (write a temp file, hard-link it): a reader never sees an
    empty lock. False when the lock already exists."""
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{LOCK_NAME}.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(info, f)
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError as e:  # a full disk or a read-only run folder: the lock is what could not be written
        raise files.naming(e, path, path.parent / f"{LOCK_NAME}.") from e
    finally:
        if tmp is not None:
            os.unlink(tmp)


@contextmanager
def sweep_lock(run_dir: Path, log: Callable[[str], None] = print) -> Iterator[dict]:
    """Hold `run_dir/.sweep.lock` while the body runs. A lock of a live process (or of another host,
    whose processes we cannot see) refuses with its pid, host and start time; a lock left by a dead
    process on this host, or naming a pid that another process has since taken, is taken over, and the
    log says so."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_NAME
    me = {"pid": os.getpid(), "pid_start": start_ticks(os.getpid()), "host": socket.gethostname(),
          "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    for _ in range(3):  # a lock removed as stale may be re-taken by a third process in between
        if _create_lock(path, me):
            break
        other = _read_lock(path)
        if other is None:
            log(f"lock {path} is unreadable (a damaged file); taking it over")
        elif other.get("host") == me["host"] and (gone := _owner_gone(other)):
            log(f"taking over a stale lock: pid {other['pid']} (started {other.get('started_at')}) {gone}")
        else:
            raise GuardError(
                f"another sweep is running in {run_dir}: pid {other['pid']} on host {other.get('host')}, "
                f"started {other.get('started_at')}. Wait for it or stop it, or choose another --out; if that "
                f"process is gone (it ran on another host), delete {path}.")
        path.unlink(missing_ok=True)
    else:
        raise GuardError(f"could not take the lock {path}: other sweeps keep taking it")
    try:
        yield me
    finally:
        if (_read_lock(path) or {}).get("pid") == me["pid"]:
            path.unlink(missing_ok=True)


# ---- --address -----------------------------------------------------------------------------------------

def host_port(address: str) -> tuple[str, int]:
    """(host, port) of host:port or ray://host:port; ValueError, saying what is expected, for anything else."""
    host, _, port = address.split("://", 1)[-1].rstrip("/").rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:  # a port out of range: OverflowError
        raise ValueError("expected host:port (port 1-65535), 'auto', or ray://host:port")
    return host, int(port)


def probe_address(address: str | None, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """Fail in seconds when the Ray cluster at `address` (or RAY_ADDRESS, which ray.init would use) does
    not answer: ray.init itself retries a dead address for minutes. Returns the host:port probed."""
    named = "--address" if address else "RAY_ADDRESS"
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address in (None, "local"):
        return None  # a local cluster is started, nothing to reach
    if address == "auto":
        from ray._private import services
        try:
            address = services.canonicalize_bootstrap_address(address)
        except (ConnectionError, ValueError) as e:
            raise GuardError(f"--address auto: no running Ray cluster found on this machine ({e}). Start one "
                             f"with `ray start --head`, or leave --address out to start a local one.") from None
    try:
        host, port = host_port(address)
    except ValueError as e:
        raise GuardError(f"{named} {address!r}: {e}") from None
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as e:
        reason = "timed out" if isinstance(e, socket.timeout) else (e.strerror or str(e))
        raise GuardError(
            f"no Ray cluster answers at {host}:{port} ({reason}, after at most {timeout_s:.0f} s). Check the "
            f"address (`ray start --head` prints it), that the head node is up and the port is reachable, "
            f"or leave --address out to start a local cluster.") from None
    return f"{host}:{port}"


def local_ray_args(address: str | None) -> dict[str, Any]:
    """Extra ray.init arguments for a local cluster: the dashboard on loopback only (Ray's default today,
    stated here so a changed default cannot expose it; Ray 2.60 has no switch for its gRPC ports), and the
    workers at the driver's priority. Ray starts its workers at nice 15: Linux then gives one of them ~3% of
    a core against a program at 0, so on a shared host the sweep's trainings and timings waited for everyone
    else's work (the 2-core quick start took 25.6 minutes beside a test run, 11.6 idle). Ray's own job API
    starts workers at 0 too. A joined cluster keeps the settings it was started with."""
    if address or os.environ.get("RAY_ADDRESS"):
        return {}
    return {"dashboard_host": "127.0.0.1", "_system_config": {"worker_niceness": 0}}


# ---- signals -------------------------------------------------------------------------------------------

def _stderr(line: str) -> None:
    """Print from a signal handler: os.write cannot re-enter a print the handler interrupted."""
    os.write(2, (line + "\n").encode(errors="replace"))


_signals: dict[str, Any] = {"installed": False, "first": None, "cleanup": False, "log": _stderr}


@contextmanager
def handle_signals(log: Callable[[str], None] = _stderr) -> Iterator[None]:
    """While the body runs, the first Ctrl-C or SIGTERM raises KeyboardInterrupt (the sweep's `finally`
    then stops Ray and merges what landed); any later one only says the clean-up is under way, so it
    cannot cut it short. The previous handlers come back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signals reach the main thread only
        return
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    _signals.update(installed=True, first=None, cleanup=False, log=log)
    for s in before:
        signal.signal(s, _on_signal)
    try:
        yield
    finally:
        _signals["installed"] = False
        for s, handler in before.items():
            signal.signal(s, handler)


def reclaim_signals() -> None:
    """Re-install our handlers after ray.init, which sets its own SIGTERM handler (sys.exit(15))."""
    if _signals["installed"]:
        signal.signal(signal.SIGINT, _on_signal)
        signal.signal(signal.SIGTERM, _on_signal)


def cleaning_up() -> None:
    """The sweep's clean-up (stop Ray, merge, write the report) has begun: from now on a signal only says so.
    Raised there, it cut the merge short: a Ctrl-C as the last result landed left the report unbuilt and a
    traceback from Ray's own shutdown."""
    _signals["cleanup"] = True


def _on_signal(signum: int, frame) -> None:
    name = signal.Signals(signum).name
    if _signals["first"] is None and not _signals["cleanup"]:
        _signals["first"] = signum
        _signals["log"](f"{name}: stopping the sweep (shutting Ray down, merging the results that landed)")
        raise KeyboardInterrupt(name)
    _signals["log"](f"{name}: already shutting down; please wait for Ray to stop and the results to merge")


def interrupted_exit_code() -> int:
    """128 + the first signal received (130 for Ctrl-C, 143 for SIGTERM), as a shell reports it."""
    return 128 + (_signals["first"] or signal.SIGINT)


# ---- task errors ---------------------------------------------------------------------------------------

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_ERROR_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\w*(:.*)?$")


def _one_line(text: str, limit: int = 500) -> str:
    return " ".join(_ANSI.sub("", text).split())[:limit]


def task_error_cause(exc: BaseException) -> str:
    """The real failure inside a Ray task error, as one line: the wrapped exception (following a chain of
    wrappers, e.g. a failed upstream task), else the last `SomeError: ...` line of the traceback text."""
    from ray.exceptions import RayTaskError

    e = exc
    for _ in range(10):  # RayTaskError(cause) -> cause; a cause is never a cycle, but stay bounded
        cause = getattr(e, "cause", None) if isinstance(e, RayTaskError) else None
        if cause is None or cause is e:
            break
        e = cause
    if not isinstance(e, RayTaskError):
        message = str(e)
        return _one_line(f"{type(e).__name__}: {message}" if message else type(e).__name__)
    text = _ANSI.sub("", getattr(e, "traceback_str", "") or str(e))
    errors = [line.strip() for line in text.splitlines() if _ERROR_LINE.match(line.strip())]
    return _one_line(errors[-1] if errors else text.strip().splitlines()[0] if text.strip() else repr(e))


def task_error_text(exc: BaseException, limit: int = 4000) -> str:
    """For an error row: the real cause on the first line (what console lines and the report show),
    then Ray's full text with the task's traceback."""
    return (task_error_cause(exc) + "\n" + _ANSI.sub("", f"{type(exc).__name__}: {exc}"))[:limit]
