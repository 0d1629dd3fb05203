"""How a sweep invocation reports and stops: progress lines, the `--stop-after` deadline, and Stopped."""
from __future__ import annotations

import dataclasses
import time
from typing import Callable


@dataclasses.dataclass
class Progress:
    """`[done/total] seconds status what detail` lines; `total` is the whole plan, known at the start."""
    total: int
    log: Callable[[str], None]
    done: int = 0
    t0: float = dataclasses.field(default_factory=time.perf_counter)

    def landed(self, what: str, status: str, detail: str = "") -> None:
        self.done += 1
        self.total = max(self.total, self.done)
        self.log(f"[{self.done:>3}/{self.total}] {time.perf_counter() - self.t0:7.1f}s  {status:<7} {what}"
                 + (f"  {detail}" if detail else ""))


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


class Stopped(Exception):
    """The sweep reached its --stop-after deadline with `left` units of work not started."""

    def __init__(self, phase: str, left: int):
        super().__init__(f"stopped at the --stop-after deadline in the {phase} phase, {left} task(s) not started")
        self.phase, self.left = phase, left
