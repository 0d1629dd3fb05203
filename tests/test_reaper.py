"""Nothing of ours outlives the sweep (issue 12): a SIGKILLed driver's local Ray cluster is stopped by the
reaper, and the sweep lock tells a reused pid from its owner. (A joined cluster is never touched:
test_multinode checks that the driver that joined starts no reaper and leaves the cluster running.)

The SIGKILL case runs the real CLI on a real local Ray cluster on CPU. Without the reaper, Ray's
DashboardAgent and RuntimeEnvAgent stayed up (listening) for about a minute after the driver's SIGKILL.
"""
from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from runner import guard, reaper

ROOT = Path(__file__).resolve().parent.parent

SWEEP = """
sweep: reap
bench: {warmup: 2, iters: 150, repeats: 3, eval_batch_size: 64, processes: 1}  # no twins (test_sweep_e2e has them)
models:
  tiny:
    arch: airbench_cifar
    arch_args: {width_mult: 0.25}
    recipe: {epochs: 1, batch_size: 64, lr: 0.05, train_subset: 256, test_subset: 64}
grid: [{models: [tiny], precision: [fp32]}]
"""


# ---- /proc helpers of the test (independent of the reaper's own) -------------------------------------------

def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, start ticks) of `pid`, None when gone."""
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return f[0], int(f[1]), int(f[19])


def _running(pid: int, ticks: int) -> bool:
    """The same process (same start time) is still there and not a zombie (a zombie runs and holds nothing;
    the init process of a container may never reap it)."""
    st = _stat(pid)
    return st is not None and st[0] != "Z" and st[2] == ticks


def _descendants(root: int) -> dict[int, int]:
    """pid -> start ticks of every live process below `root`."""
    stats = {int(d): st for d in os.listdir("/proc") if d.isdigit() and (st := _stat(int(d)))}
    found: dict[int, int] = {}
    frontier = {root}
    while frontier:
        frontier = {p for p, (state, ppid, _) in stats.items() if ppid in frontier and state != "Z"}
        found.update({p: stats[p][2] for p in frontier})
    return found


def _naming(text: str) -> dict[int, int]:
    """pid -> start ticks of live processes whose command line holds `text`."""
    out = {}
    for d in os.listdir("/proc"):
        try:
            cmd = Path(f"/proc/{d}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if d.isdigit() and text in cmd and (st := _stat(int(d))) and st[0] != "Z":
            out[int(d)] = st[2]
    return out


def _listeners(port: int) -> set[int]:
    """pids with a listening TCP socket on `port` (any address, IPv4 or IPv6)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            f = row.split()
            if f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(f"socket:[{f[9]}]")
    pids = set()
    for d in filter(str.isdigit, os.listdir("/proc")):
        try:
            if any(os.readlink(f"/proc/{d}/fd/{fd}") in inodes for fd in os.listdir(f"/proc/{d}/fd")):
                pids.add(int(d))
        except OSError:
            continue
    return pids


def _wait_until(check, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.25)
    return True


# ---- SIGKILL of the driver ------------------------------------------------------------------------------

def _start_sweep(root: Path) -> subprocess.Popen:
    (root / "reap.yaml").write_text(SWEEP)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RUNNER_DASHBOARD": "1"}  # its port
    env.pop("RAY_ADDRESS", None)  # a local cluster of its own, the case the reaper is for
    return subprocess.Popen([sys.executable, "-m", "runner", "sweep", "--config", str(root / "reap.yaml"),
                             "--data", "synthetic", "--out", str(root / "runs")], cwd=root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _read_until(proc: subprocess.Popen, start: str, timeout: float = 120) -> list[str]:
    """The process's lines up to and including the first that starts with `start`, or all it printed before
    `timeout`: a thread reads, so a sweep that goes silent cannot hold the test past its deadline."""
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(l) for l in proc.stdout] + [lines.put(None)], daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            break
        if line is None:
            break
        seen.append(line)
        if line.startswith(start):
            break
    return seen


@pytest.mark.slow  # a real local Ray cluster
def test_sigkilled_driver_leaves_no_ray_process_running_or_listening(tmp_path):
    proc = _start_sweep(tmp_path)
    try:
        lines = _read_until(proc, "Ray cluster:")  # Ray is up, the reaper started
        text = "".join(lines)
        assert lines and lines[-1].startswith("Ray cluster: 1 node(s)"), text  # a cluster of its own
        port = int(re.search(r"Ray dashboard: http://[\d.]+:(\d+)", text).group(1))
        tree = _descendants(proc.pid)  # GCS, raylet, agents, dashboard, workers, the reaper
        sessions = {m for p in tree for m in re.findall(r"/[^\s\x00=]*/session_[0-9_-]+",
                                                         Path(f"/proc/{p}/cmdline").read_text(errors="replace"))}
        assert len(sessions) == 1, sessions
        session = sessions.pop()
        assert _naming(session), "no process names the Ray session's folder before the kill"
        assert _listeners(port) & set(tree), f"nothing of the sweep listens on the dashboard port {port}"
        proc.kill()
        proc.wait(timeout=10)
        gone = _wait_until(lambda: not _naming(session) and not any(_running(p, t) for p, t in tree.items()), 15)
        left = {p: Path(f"/proc/{p}/cmdline").read_bytes()[:60] for p, t in tree.items() if _running(p, t)}
        assert gone, f"still running 15 s after the driver's SIGKILL: {left}"
        assert not _listeners(port) & (set(tree) | set(_naming(session)))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_reaper_stops_the_session_when_its_driver_dies(tmp_path):
    """Without Ray: a 'driver' starts the reaper and two sleepers that keep a log file open, as a renamed
    ray::DashboardAgent does: one in the session's folder, one in a folder whose name only starts the
    same. SIGKILL the driver: the reaper stops the first, and leaves the bystander alone."""
    session = tmp_path / "session_2026-01-01_00-00-00_000000_1"
    bystander = tmp_path / "session_2026-01-01_00-00-00_000000_12"
    for d in (session, bystander):
        (d / "logs").mkdir(parents=True)
    driver_code = (  # paths through the environment: a command line naming the session would be ours too
        "import os, subprocess, sys, time\n"
        "agent = \"import sys, time; f = open(sys.argv[1], 'a'); time.sleep(120)\"\n"
        "for d in ('SESSION', 'BYSTANDER'):\n"
        "    subprocess.Popen([sys.executable, '-c', agent, os.environ[d] + '/logs/agent.out'])\n"
        "subprocess.Popen([sys.executable, '-I', os.environ['REAPER'], str(os.getpid()), os.environ['SESSION'],\n"
        "                  sys.executable], start_new_session=True)\n"
        "print('up', flush=True); time.sleep(120)\n")
    env = {**os.environ, "SESSION": str(session), "BYSTANDER": str(bystander), "REAPER": reaper.__file__}
    driver = subprocess.Popen([sys.executable, "-c", driver_code], stdout=subprocess.PIPE, text=True, env=env)
    kids: dict[int, int] = {}
    try:
        assert driver.stdout.readline().strip() == "up"
        assert _wait_until(lambda: len(_descendants(driver.pid)) == 3, 10)
        kids = _descendants(driver.pid)
        agent_of = {p: next((d for d in (session, bystander) if f"{d}/logs/agent.out" in
                             Path(f"/proc/{p}/cmdline").read_text(errors="replace")), None) for p in kids}
        ours = {p: t for p, t in kids.items() if agent_of[p] == session}
        theirs = {p: t for p, t in kids.items() if agent_of[p] == bystander}
        assert len(ours) == len(theirs) == 1
        driver.kill()
        driver.wait()
        assert _wait_until(lambda: not any(_running(p, t) for p, t in ours.items()), 10)
        assert all(_running(p, t) for p, t in theirs.items())  # the bystander is left alone
        assert "driver pid" in (session / "logs" / reaper.LOG_NAME).read_text()
    finally:
        driver.kill()
        driver.wait()
        for p, t in kids.items():  # what this test started, by pid and start time
            if _running(p, t):
                os.kill(p, signal.SIGKILL)


# ---- the lock and pid reuse -------------------------------------------------------------------------------

def _lock(run_dir: Path, pid: int, pid_start: int | None) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / guard.LOCK_NAME).write_text(json.dumps(
        {"pid": pid, "pid_start": pid_start, "host": socket.gethostname(), "started_at": "2026-01-01T00:00:00+00:00"}))


def test_lock_of_a_reused_pid_is_stale(tmp_path):
    """The pid is alive, but it started at another time than the lock's owner: another process took it."""
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _lock(tmp_path, other.pid, reaper.start_ticks(other.pid) - 1)
        lines: list[str] = []
        with guard.sweep_lock(tmp_path, log=lines.append) as me:
            held = json.loads((tmp_path / guard.LOCK_NAME).read_text())
        assert any(f"stale lock: pid {other.pid}" in line and "started later" in line for line in lines), lines
        assert held["pid"] == os.getpid() and held["pid_start"] == reaper.start_ticks(os.getpid()) == me["pid_start"]
    finally:
        other.kill()
        other.wait()


def test_lock_of_a_live_owner_with_its_start_time_is_held(tmp_path):
    _lock(tmp_path, os.getpid(), reaper.start_ticks(os.getpid()))
    with pytest.raises(guard.GuardError, match=f"another sweep is running .*pid {os.getpid()}"):
        with guard.sweep_lock(tmp_path):
            pass
    assert json.loads((tmp_path / guard.LOCK_NAME).read_text())["pid"] == os.getpid()  # left as it was
