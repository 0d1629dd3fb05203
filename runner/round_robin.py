"""A group's repeats timed round-robin: round r times repeat r of every callable, in the order given.

Why not a variant's repeats back to back: on a 2x H200 host with nothing else running (neighbour GPU idle,
no steal time, no involuntary context switches; reports/h200-neighbour/, probe.py), eager batch-1 timings
have slow phases, windows of ~1-12 s in which the p50 reads 1.3-1.8x its usual value (B1 2.5 ms -> 4.4 ms
for six ~2 s windows in a row). Timed back to back, one phase covered two or three repeats of a variant and
so its median (O1's repeats read 4.51, 3.32, 4.28 ms against a re-check of 3.49). Round-robin, every other
callable of the group is timed between two repeats of one, so a slow phase shorter than that gap hits at
most one of its repeats, and the median over repeats sets it aside. (A group of one callable gets no
spread: its repeats are back to back.)

Each repeat is a timing of its own: inside `hostlock.timing()` and a `GpuMonitor`, with its own warm-up.
"""
from __future__ import annotations

import dataclasses
import traceback
from typing import Any, Callable

import torch

from runner import bench as bench_mod
from runner import env, hostlock
from variants import BenchSpec


@dataclasses.dataclass
class Repeats:
    """What the rounds gave one callable: its repeats in order, or the error that ended them."""
    samples: list = dataclasses.field(default_factory=list)     # bench.Samples, one per repeat
    monitors: list = dataclasses.field(default_factory=list)    # the GpuMonitor of each repeat
    host_wait_s: float = 0.0     # summed over repeats (runner/hostlock.py)
    timed_at: str | None = None  # when its last repeat (or the one that raised) ended
    error: str | None = None     # type, message and traceback of the repeat that raised

    def gpu(self) -> dict[str, Any]:
        """The NVML columns over all its repeats (runner/env.py)."""
        return env.gpu_summary(self.monitors)


def time_round_robin(callables: dict[str, tuple[Callable, torch.Tensor]], bench: BenchSpec, gpu_uuid: str | None,
                     stamp: Callable[[], str]) -> dict[str, Repeats]:
    """`bench.repeats` rounds over `callables` (key -> (fn, x)), in their order; `stamp` is the task rows'
    clock (runner/tasks.py). A callable whose repeat raises keeps the error and drops out of later rounds;
    the others go on."""
    out = {key: Repeats() for key in callables}
    for _ in range(bench.repeats):
        for key, (fn, x) in callables.items():
            if out[key].error is None:
                _time_repeat(out[key], fn, x, bench, gpu_uuid, stamp)
    return out


def _time_repeat(r: Repeats, fn, x, bench: BenchSpec, gpu_uuid: str | None, stamp) -> None:
    try:
        with hostlock.timing() as waited:  # the host to itself: see runner/hostlock.py
            with env.GpuMonitor(gpu_uuid) as gpu:
                r.samples += bench_mod.measure(fn, x, warmup=bench.warmup, iters=bench.iters, repeats=1)
    except Exception as e:
        r.error = f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=6)}"
    else:
        r.monitors.append(gpu)
        r.host_wait_s += waited.s
    r.timed_at = stamp()
