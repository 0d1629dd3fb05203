"""Runs once in every Ray worker process of a sweep, before its first task (Ray's `worker_process_setup_hook`).

A worker's start is host work too: importing torch, its CUDA libraries and this project takes a core for
seconds. Outside any hold it overlapped the other GPU's timings; on 2x H200 (reports/h200x2-default/, at
42d5e65) the first variant of a bench task that started beside another task's start read 1.2-2.1x its
re-check. Here the imports happen inside a shared hold (runner/hostlock.py), so a starting worker waits
for a timing instead of slowing it. What stays outside: the interpreter's and Ray's own start, before the hook.
"""
from __future__ import annotations

import sys

HOOK = "runner.worker_setup.setup"  # the runtime_env value (runner/sweep.py sets it)


def setup() -> None:
    try:
        from runner import hostlock

        with hostlock.busy():
            import torch  # noqa: F401
            import runner.tasks  # noqa: F401
    except Exception as e:  # a hook that raises kills the worker: a slower timing beats a dead sweep
        print(f"{HOOK}: {type(e).__name__}: {e}", file=sys.stderr)
