"""Nothing of a local Ray cluster outlives the sweep driver that started it, however the driver ends.

Ray ties its GCS and raylet to the driver (the kernel kills them when it dies), but not what the raylet
starts: after a SIGKILL of the driver, ray::DashboardAgent and ray::RuntimeEnvAgent stayed up, listening
on several ports (some on 0.0.0.0), for about a minute (measured with Ray 2.60 on CPU).

So when the driver starts a local cluster, it also starts this file as a small process of its own
session (pure Python, no Ray import; a Ctrl-C to the driver's terminal does not reach it). It polls its
parent; once the driver is gone it stops every process of that Ray session, then exits. On a normal end
the driver asks it to do the same at once (after ray.shutdown, so it usually finds nothing). A joined
cluster (--address, RAY_ADDRESS, or one `ray start` left running) is never watched: it is not ours.

    python -I runner/reaper.py DRIVER_PID SESSION_DIR EXE_OR_DIR...     (started by watch_local_cluster)

A process belongs to the session when its command line or one of its open files names the session's
folder and its executable is Ray's or the driver's Python (a user's `tail -f` of a Ray log is left
alone), and so does everything below such a process.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterable

POLL_S = 0.5    # how soon after the driver's death the clean-up starts
GRACE_S = 3.0   # SIGTERM first (agents close their ports), SIGKILL what is left after this
LOG_NAME = "runner_reaper.log"


# ---- /proc ---------------------------------------------------------------------------------------------

def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (which may hold spaces and ')'): state first."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def start_ticks(pid: int) -> int | None:
    """When `pid` started (clock ticks since boot, stat field 22): with the pid, names one process for good,
    since a pid is reused and a start time is not. None when it is gone or a zombie (it runs nothing)."""
    fields = _stat(pid)
    return int(fields[19]) if fields and fields[0] != "Z" else None


def _pids() -> list[int]:
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def _exe(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""


def _names(pid: int) -> Iterable[str]:
    """The command line, then the paths of the open files of `pid` (a renamed ray::Agent keeps its logs open)."""
    try:
        yield Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                yield os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
    except OSError:
        return


def session_processes(session_dir: str, owners: list[str], skip: int | None = None) -> dict[int, int]:
    """pid -> start ticks of the live processes of the Ray session in `session_dir` (see the module text):
    `owners` are the executables or folders a Ray process runs from."""
    names = re.compile(re.escape(session_dir.rstrip("/")) + r"(?=/|\s|$)")  # not session_..._12 for ..._1
    owners = [os.path.realpath(o) for o in owners]
    children: dict[int, list[int]] = {}
    found: dict[int, int] = {}
    for pid in _pids():
        fields = _stat(pid)
        if not fields or fields[0] == "Z" or pid in (os.getpid(), skip):
            continue
        children.setdefault(int(fields[1]), []).append(pid)
        exe = os.path.realpath(_exe(pid)) if _exe(pid) else ""
        if exe and any(exe == o or exe.startswith(o.rstrip("/") + "/") for o in owners) \
                and any(names.search(n) for n in _names(pid)):
            found[pid] = int(fields[19])
    frontier = list(found)
    while frontier:  # everything below a session process (workers, their compile workers) is ours too
        frontier = [c for p in frontier for c in children.get(p, []) if c not in found]
        found.update({c: t for c in frontier if (t := start_ticks(c)) is not None})
    return found


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def terminate(procs: dict[int, int], grace_s: float = GRACE_S) -> list[str]:
    """SIGTERM each process, SIGKILL the ones still there after `grace_s`. A pid whose start time changed
    is another process by now and is left alone. Returns 'pid:name' of those signalled."""
    def alive() -> list[int]:
        return [p for p, t in procs.items() if start_ticks(p) == t]

    def send(pids: list[int], sig: int) -> None:
        for pid in pids:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    first = alive()
    names = [f"{p}:{_comm(p)}" for p in first]
    send(first, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    killed = alive()
    send(killed, signal.SIGKILL)
    return names + [f"(SIGKILL {p})" for p in killed]


# ---- the reaper process --------------------------------------------------------------------------------

def _log(session_dir: str, line: str) -> None:
    """Append to the session's logs (opened per line: an open file there would make us one of its processes)."""
    try:
        with open(Path(session_dir) / "logs" / LOG_NAME, "a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")
    except OSError:
        pass


def watch(driver: int, session_dir: str, owners: list[str]) -> int:
    """Wait for the driver to go (our parent changes: no pid-reuse race) or for SIGTERM from it, then
    stop what is left of the session."""
    asked = []
    signal.signal(signal.SIGTERM, lambda *_: asked.append(True))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while os.getppid() == driver and not asked:
        time.sleep(POLL_S)
    why = "asked by the driver" if asked else f"driver pid {driver} is gone"
    t0 = time.monotonic()
    procs = session_processes(session_dir, owners, skip=driver)
    if procs:  # the reason goes on record before anything is stopped: whoever sees them gone finds it
        _log(session_dir, f"{why}: stopping {len(procs)} process(es)")
    stopped = terminate(procs)
    if stopped:
        _log(session_dir, f"stopped {' '.join(stopped)} in {time.monotonic() - t0:.1f} s")
    return 0


# ---- driver side ---------------------------------------------------------------------------------------

_running: dict[str, subprocess.Popen] = {}


def watch_local_cluster() -> subprocess.Popen | None:
    """After ray.init: when this driver started the Ray processes itself (a local cluster, not one it
    joined), start the reaper for that session. Returns its process, or None for a joined cluster."""
    import ray
    from ray._private import worker

    stop()  # one reaper per driver: a sweep run again in the same process replaces the earlier one
    node = getattr(worker, "_global_node", None)
    if node is None or not getattr(node, "all_processes", None):  # connected only: not ours to stop
        return None
    if not os.path.isdir("/proc"):  # it finds processes through /proc (Linux); elsewhere Ray's own clean-up
        return None
    session_dir = node.get_session_dir_path()
    owners = [sys.executable, os.path.dirname(ray.__file__)]
    # -I: the script's folder (runner/, whose module names could shadow the stdlib) stays off sys.path
    proc = subprocess.Popen([sys.executable, "-I", os.path.abspath(__file__), str(os.getpid()), session_dir, *owners],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # own session: survives a terminal's Ctrl-C and SIGHUP
    _running["reaper"] = proc
    return proc


def stop(timeout_s: float = GRACE_S + 5) -> None:
    """Normal end, after ray.shutdown: the reaper stops what is left of the session now, then exits."""
    proc = _running.pop("reaper", None)
    if proc is None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


if __name__ == "__main__":
    sys.exit(watch(int(sys.argv[1]), sys.argv[2], sys.argv[3:]))
