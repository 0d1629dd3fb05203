"""A group's repeats timed round-robin, in slices: every variant's repeat r is `bench.slices` short timings,
spread over the whole task, and no two of them back to back.

Why not a variant's repeats back to back: on a 2x H200 host with nothing else running (neighbour GPU idle,
no steal time, no involuntary context switches; reports/h200-neighbour/, probe.py), eager batch-1 timings
have slow phases, windows of ~1-12 s in which the p50 reads 1.3-1.8x its usual value (B1 2.5 ms -> 4.4 ms
for six ~2 s windows in a row). Timed back to back, one phase covered two or three repeats of a variant and
so its median (O1's repeats read 4.51, 3.32, 4.28 ms against a re-check of 3.49).

Why slices, not one round per repeat: on one H200 at 0b0a882 (reports/h200-1gpu-default/) no whole round
of 30 read slow, yet 10 eager rows had a CV of p50 over 3%. Their samples show shorter phases: cut into
50-call pieces, 36 of 600 eager pieces read 1.15-1.96x their variant's p50, in runs of one to six pieces
(~0.1-2 s), inside one repeat. A repeat timed in one piece takes such a phase whole; cut into slices that
are spread over the task, a phase lands in a slice or two of several repeats, and the repeats of a
variant sample the same stretch of the host. The order is slice-major: for slice s, for repeat r, every
variant in turn (so with one slice this is the plain round-robin: round r holds repeat r of each).

Each slice is a timing of its own: inside `hostlock.timing()` and a `GpuMonitor`, with its own warm-up
(the repeat's warm-up shared out over its slices). A repeat's samples are its slices' in order.
"""
from __future__ import annotations

import dataclasses
import traceback
from typing import Any, Callable

import numpy as np
import torch

from runner import bench as bench_mod
from runner import env, hostlock
from variants import BenchSpec


@dataclasses.dataclass
class Repeats:
    """What the rounds gave one callable: its repeats in order, or the error that ended them."""
    samples: list = dataclasses.field(default_factory=list)     # bench.Samples, one per repeat (its slices joined)
    monitors: list = dataclasses.field(default_factory=list)    # the GpuMonitor of each slice
    host_wait_s: float = 0.0     # summed over slices (runner/hostlock.py)
    timed_at: str | None = None  # when its last slice (or the one that raised) ended
    error: str | None = None     # type, message and traceback of the slice that raised

    def gpu(self) -> dict[str, Any]:
        """The NVML columns over all its repeats (runner/env.py)."""
        return env.gpu_summary(self.monitors)


def slice_sizes(iters: int, slices: int) -> list[int]:
    """Timed calls per slice: `iters` shared out as evenly as possible, the larger slices first."""
    return [iters // slices + (1 if i < iters % slices else 0) for i in range(slices)]


def slice_p50s(lat_ms: np.ndarray, slices: int) -> list[float]:
    """The p50 of each slice of one repeat's samples (its slices' samples in order, as time_round_robin
    joins them): what runner/host_rounds.py compares across the variants of a round."""
    bounds = np.cumsum([0] + slice_sizes(len(lat_ms), slices))
    return [float(np.median(lat_ms[a:b])) for a, b in zip(bounds[:-1], bounds[1:])]


def time_round_robin(callables: dict[str, tuple[Callable, torch.Tensor]], bench: BenchSpec, gpu_uuid: str | None,
                     stamp: Callable[[], str]) -> dict[str, Repeats]:
    """`bench.repeats` repeats of each of `callables` (key -> (fn, x)), each in `bench.slices` slices, slice-major
    (for each slice, for each repeat, every callable in the given order); `stamp` is the task rows' clock
    (runner/tasks.py). A callable whose slice raises keeps the error and drops out of later timings; the
    others go on."""
    out = {key: Repeats() for key in callables}
    parts: dict[str, list[list[bench_mod.Samples]]] = {key: [[] for _ in range(bench.repeats)] for key in callables}
    warmup = -(-bench.warmup // bench.slices)  # ceil: every slice warms up, none with zero calls unless asked
    for iters in slice_sizes(bench.iters, bench.slices):
        for r in range(bench.repeats):
            for key, (fn, x) in callables.items():
                if out[key].error is None:
                    _time_slice(out[key], parts[key][r], fn, x, warmup, iters, gpu_uuid, stamp)
    for key, rep in out.items():
        if rep.error is None:
            rep.samples = [_joined(p) for p in parts[key]]
    return out


def _joined(pieces: list) -> "bench_mod.Samples":
    return bench_mod.Samples(np.concatenate([p.lat_ms for p in pieces]), np.concatenate([p.host_ms for p in pieces]),
                             pieces[0].timer)


def _time_slice(r: Repeats, into: list, fn, x, warmup: int, iters: int, gpu_uuid: str | None, stamp) -> None:
    try:
        with hostlock.timing() as waited:  # the host to itself: see runner/hostlock.py
            with env.GpuMonitor(gpu_uuid) as gpu:
                into += bench_mod.measure(fn, x, warmup=warmup, iters=iters, repeats=1)
    except Exception as e:
        r.error = f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=6)}"
    else:
        r.monitors.append(gpu)
        r.host_wait_s += waited.s
    r.timed_at = stamp()
