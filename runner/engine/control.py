"""How a sweep invocation reports and stops: progress lines, the `--stop-after` deadline, and Stopped.

    [  2/24]     19s  left ~3m27s  ok      train:tiny  top1 10.16%  1.4s 180 img/s
      14/24    2m02s  left ~1m48s  running twin:0 time tiny_kd-fp32-nchw-eager

A landed task starts its line with `[done/total]`; a line at least every HEARTBEAT_S says what runs while
nothing lands. Plain text: a log file gets no escape codes (a terminal also gets a text bar).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
from collections import Counter
from typing import Callable, TextIO

HEARTBEAT_S = 20.0  # a line at least this often while tasks run (a reader should never wait 30 s)
PHASES = ("train", "bench", "twin", "recheck")  # in the order they run; a pair counts with the bench phase
BAR = 20


def duration(s: float) -> str:
    s = int(round(s))
    return f"{s}s" if s < 60 else f"{s // 60}m{s % 60:02d}s" if s < 3600 else f"{s // 3600}h{s % 3600 // 60:02d}m"


@dataclasses.dataclass
class Progress:
    """`plan`: tasks per phase, known at the start and never changed: a planned task that turns out not to
    be needed is counted done with a note. Time left: each phase's tasks left x its measured seconds per task
    (wall time since the phase began / tasks landed in it; tasks run in parallel, so this is the phase's
    pace); a phase not yet measured is costed at the last measured phase's pace."""
    plan: dict[str, int]
    log: Callable[[str], None]
    bar: bool = False
    t0: float = dataclasses.field(default_factory=time.monotonic)
    landings: Counter = dataclasses.field(default_factory=Counter)
    paced: Counter = dataclasses.field(default_factory=Counter)  # landed after their phase began: its pace
    skipped: Counter = dataclasses.field(default_factory=Counter)
    began: dict[str, float] = dataclasses.field(default_factory=dict)
    last_line: float = dataclasses.field(default_factory=time.monotonic)

    @property
    def total(self) -> int:
        return sum(self.plan.values())

    @property
    def done(self) -> int:
        return sum(self.landings.values()) + sum(self.skipped.values())

    def begin(self, phase: str) -> None:
        """The phase's first task is submitted now: its pace is measured from here."""
        self.began.setdefault(phase, time.monotonic())

    def landed(self, what: str, status: str, detail: str = "") -> None:
        phase = {"pair": "bench"}.get(what.split(":")[0], what.split(":")[0])
        self.landings[phase] += 1
        self.paced[phase] += phase in self.began  # an error row written before the phase ran says no pace
        self._line(f"{status:<7} {what}" + (f"  {detail}" if detail else ""))

    def skip(self, phase: str, n: int, why: str) -> None:
        """n planned tasks of `phase` are not needed after all: counted done, the total stays."""
        if n > 0:
            self.skipped[phase] += n
            self._line(f"{'-':<7} {n} planned {phase} task(s) not needed: {why}", head=False)

    def finish(self, why: str) -> None:
        """The end of the plan: what did not run (an actor died, a model did not train) is counted done."""
        for phase in PHASES:
            self.skip(phase, self.plan.get(phase, 0) - self.landings[phase] - self.skipped[phase], why)

    def still(self, running: str) -> None:
        self._line(f"{'running':<7} {running}", head=False)

    def quiet_s(self) -> float:
        """Seconds until a line is due: wait at most this long for a landing before saying what runs."""
        return max(0.5, HEARTBEAT_S - (time.monotonic() - self.last_line))

    def left_s(self) -> float | None:
        now, pace, left = time.monotonic(), None, 0.0
        for phase in PHASES:
            if self.paced[phase]:
                pace = (now - self.began[phase]) / self.paced[phase]
            n = self.plan.get(phase, 0) - self.landings[phase] - self.skipped[phase]
            if n > 0:
                if pace is None:
                    return None
                left += n * pace
        return left

    def _line(self, text: str, head: bool = True) -> None:
        self.last_line = time.monotonic()
        count = f"{self.done:>3}/{self.total}"
        left = self.left_s()
        eta = "left ?" if left is None else f"left ~{duration(left)}"
        bar = ""
        if self.bar:
            full = BAR * self.done // max(self.total, 1)
            bar = "#" * full + "." * (BAR - full) + " "
        self.log(f"{f'[{count}]' if head else f' {count} '} {bar}{duration(self.last_line - self.t0):>7}  "
                 f"{eta:<12} {text}")


def plain_output(stream: TextIO | None = None) -> bool:
    """Keep escape codes out of a sweep's log when `stream` (stdout) is not a terminal: Ray's coloured
    `(train:x pid=...)` prefixes (RAY_COLOR_PREFIX=0, read as each line prints) and its coloured "[repeated
    Nx]" notes (RAY_DEDUP_LOGS=0, read when ray is first imported: runner/__main__ calls this before that).
    Ray's notice that token authentication is on is left out too (the sweep's own dashboard line says how
    to get in). Returns whether `stream` is a terminal (then a progress bar is drawn)."""
    tty = (stream or sys.stdout).isatty()
    if not tty:
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    return tty


def wait_one(refs: list, progress: Progress, running: Callable[[], str]):
    """The first of `refs` to land (ray.wait), with a `running` line whenever HEARTBEAT_S pass without one."""
    import ray

    while True:
        ready, _ = ray.wait(refs, num_returns=1, timeout=progress.quiet_s())
        if ready:
            return ready[0]
        progress.still(running())


@dataclasses.dataclass(frozen=True)
class Deadline:
    """`sweep --stop-after`: past `at` (time.monotonic()), no training and no actor stage starts; what is in
    flight lands. For GPU leases with a time limit: nothing finished is lost and the same command resumes."""
    at: float | None = None

    @classmethod
    def after(cls, seconds: float | None) -> "Deadline":
        return cls(None if seconds is None else time.monotonic() + seconds)

    def passed(self) -> bool:
        return self.at is not None and time.monotonic() >= self.at


STOPPED_EXIT = 75  # EX_TEMPFAIL: the sweep stopped at its deadline, not finished; the same command goes on


class Stopped(Exception):
    """The sweep reached its --stop-after deadline with `left` units of work not started."""

    def __init__(self, phase: str, left: int):
        super().__init__(f"stopped at the --stop-after deadline in the {phase} phase, {left} task(s) not started")
        self.phase, self.left = phase, left
