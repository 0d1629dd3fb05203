"""Batch-1 latency: warm-up, then every iteration timed alone, repeated; statistics from raw samples.

Protocol (ARCHITECTURE.md, from the brief): input already on the device, model in eval mode under
`torch.inference_mode()`; `warmup` untimed calls; then `iters` calls, each timed with CUDA events
(GPU time) *and* with the host clock from launch to synchronize (what a caller waits); `repeats` times.
A large gap between the two timers means contention or a broken measurement, so both are kept.
On a CPU only the host clock exists, and the rows say `timer=host`.
"""
from __future__ import annotations

import gc
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from runner import breakdown
from runner.results import STATS, cv_pct  # noqa: F401  (cv_pct: one definition, re-exported)


@dataclass
class Samples:
    """Raw per-iteration times of one repeat, in milliseconds (`lat` is NaN-free on both timers)."""
    lat_ms: np.ndarray    # CUDA-event time on a GPU, host time on CPU
    host_ms: np.ndarray
    timer: str            # "cuda_event" | "host"


def stats(samples_ms: np.ndarray) -> dict[str, float]:
    """mean, p50, p90, p95, p99, std (population), min of a sample, in the sample's unit."""
    a = np.asarray(samples_ms, dtype=np.float64)
    if a.size == 0:
        raise ValueError("no samples")
    p50, p90, p95, p99 = np.percentile(a, [50, 90, 95, 99])
    return {"mean": float(a.mean()), "p50": float(p50), "p90": float(p90), "p95": float(p95),
            "p99": float(p99), "std": float(a.std()), "min": float(a.min())}


@torch.inference_mode()
def time_repeat(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, *, warmup: int, iters: int) -> Samples:
    """One repeat: `warmup` untimed calls, then `iters` individually timed calls."""
    cuda = x.device.type == "cuda"
    if breakdown.profiled():
        raise RuntimeError("refusing to time in a process that has run torch.profiler: every later launch in it "
                           "is slower (docs/investigations/h200-inflation/); time first, profile after")
    for _ in range(warmup):
        fn(x)
    # The collector off while timing (as timeit does): an eager call allocates Python objects, and a collection
    # that lands inside a timed call is the collector's time, not the model's. (No gc.collect() first: in a
    # process holding torch it takes tens of ms, once per slice.)
    gc_was_on = gc.isenabled()
    gc.disable()
    try:
        return _timed_calls(fn, x, iters, cuda)
    finally:
        if gc_was_on:
            gc.enable()


def _timed_calls(fn: Callable, x: torch.Tensor, iters: int, cuda: bool) -> Samples:
    if cuda:
        torch.cuda.synchronize(x.device)
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    host = np.empty(iters)
    for i in range(iters):
        t0 = time.perf_counter()
        if cuda:
            starts[i].record()
            fn(x)
            ends[i].record()
            ends[i].synchronize()
        else:
            fn(x)
        host[i] = (time.perf_counter() - t0) * 1e3
    if cuda:
        lat = np.array([s.elapsed_time(e) for s, e in zip(starts, ends)])
        return Samples(lat, host, "cuda_event")
    return Samples(host.copy(), host, "host")


def measure(fn: Callable, x: torch.Tensor, *, warmup: int, iters: int, repeats: int) -> list[Samples]:
    """`repeats` independent repeats (each with its own warm-up, so a repeat does not inherit a warm cache)."""
    return [time_repeat(fn, x, warmup=warmup, iters=iters) for _ in range(repeats)]


def repeat_rows(samples: list[Samples], cv_flag_pct: float) -> list[dict[str, float]]:
    """One dict of lat_* / host_* columns per repeat, plus the CV of p50 across repeats and its flag."""
    rows = []
    for r, s in enumerate(samples):
        row = {"repeat": r, "timer": s.timer}
        row.update({f"lat_{k}_ms": v for k, v in stats(s.lat_ms).items()})
        row.update({f"host_{k}_ms": v for k, v in stats(s.host_ms).items()})
        rows.append(row)
    cv = cv_pct([r["lat_p50_ms"] for r in rows])
    for row in rows:
        row["lat_cv_pct"] = cv
        row["unstable"] = cv > cv_flag_pct
    assert set(k[4:-3] for k in rows[0] if k.startswith("lat_") and k != "lat_cv_pct") == set(STATS)
    return rows
