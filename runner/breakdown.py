"""Why a variant is slow: the launch floor of a CUDA graph, and kernels / kernel time / gaps per forward.

    floor = launch_floor(device)                  # {"floor_p50_us": .., "floor_p95_us": .., "breakdown_note": None}
    parts = kernel_breakdown(fn, x, replays=20)   # {"kernels_per_forward": .., "kernel_us_per_forward": .., ...}

At batch 1 a small net's latency is mostly launch overhead and gaps between kernels, not arithmetic: these
numbers say how far a variant sits above the floor and whether fewer kernels or faster kernels would pay.
GPU-only at run time, importable anywhere; without a GPU (or when the profiler fails) every number is None
and `breakdown_note` says why. Nothing here raises into the caller: a benchmark row must never fail
because its diagnostics did.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable

import torch

# Set once torch.profiler has recorded CUDA in this process: from then on every kernel launch is slower
# (CUPTI staying subscribed, most likely) and a timing reads slow (+37% on eager B1, +11% on a CUDA graph,
# measured: docs/investigations/h200-inflation/).
# runner.bench refuses to time in such a process.
_profiled = False


def profiled() -> bool:
    """Has this process run the CUDA profiler? (Then its timings are no longer a variant's own.)"""
    return _profiled


BREAKDOWN_FIELDS = ("kernels_per_forward", "kernel_us_per_forward", "wall_us_per_forward", "gap_us_per_forward")
FLOOR_FIELDS = ("floor_p50_us", "floor_p95_us")


def _empty(fields: tuple[str, ...], note: str) -> dict[str, Any]:
    return {**{f: None for f in fields}, "breakdown_note": note}


def _percentile(values: list[float], q: float) -> float:
    return float(torch.tensor(values, dtype=torch.float64).quantile(q / 100))


def _time_calls_us(call: Callable[[], Any], n: int, device: torch.device) -> list[float]:
    """Each call timed alone with CUDA events (synchronised in between), in microseconds."""
    times = []
    for _ in range(n):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        call()
        end.record()
        torch.cuda.synchronize(device)
        times.append(start.elapsed_time(end) * 1000.0)
    return times


def launch_floor(device: torch.device | str = "cuda", replays: int = 200) -> dict[str, Any]:
    """p50 / p95 (us) of replaying a CUDA graph that holds one trivial kernel: no graph is faster."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return _empty(FLOOR_FIELDS, "no CUDA device: launch floor not measured")
    try:
        with torch.cuda.device(device):
            x = torch.zeros(1, device=device)
            stream = torch.cuda.Stream(device)
            stream.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(stream):
                x.add_(1)  # warm the kernel outside capture, as capture requires
            torch.cuda.current_stream(device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                x.add_(1)
            for _ in range(10):
                graph.replay()
            torch.cuda.synchronize(device)
            times = _time_calls_us(graph.replay, replays, device)
    except Exception as e:  # diagnostics only: report, never fail the row
        return _empty(FLOOR_FIELDS, f"launch floor failed: {type(e).__name__}: {e}")
    return {"floor_p50_us": _percentile(times, 50), "floor_p95_us": _percentile(times, 95), "breakdown_note": None}


def _is_kernel(event) -> bool:
    """A device-side kernel: not a CPU op or runtime call, and not a memcpy / memset or the GPU-side range
    that a record_function (torch.compile emits some) leaves on the device timeline."""
    from torch.autograd import DeviceType

    if event.device_type != DeviceType.CUDA:
        return False
    kind = getattr(event, "activity_type", None)  # kineto's category: "kernel", "gpu_memcpy", ...
    if kind is not None:
        return kind == "kernel"
    return not event.name.lower().startswith(("memcpy", "memset"))


def kernel_breakdown(fn: Callable[[torch.Tensor], Any], x: torch.Tensor, replays: int = 20,
                     wall_us: float | None = None) -> dict[str, Any]:
    """Kernels per forward, their summed device time and the rest of the wall time (launch + gaps), in us.

    `fn(x)` is one forward as the benchmark calls it (a graph replay, a compiled or an eager model). The wall
    time is `wall_us` when the caller timed it already (a benchmark's p50: pass it, because after any
    profile in this process a re-measure reads slow), else the median of `replays` calls timed alone with
    CUDA events before profiling; the kernels are counted by torch.profiler over `replays` further calls.
    Profiles: call it after the process's last timing (see `profiled`).
    """
    global _profiled
    if x.device.type != "cuda" or not torch.cuda.is_available():
        return _empty(BREAKDOWN_FIELDS, "no CUDA device: kernel breakdown not measured")
    device = x.device
    try:
        from torch.profiler import ProfilerActivity, profile

        with torch.inference_mode():
            fn(x)
            torch.cuda.synchronize(device)
            wall = wall_us if wall_us is not None else _percentile(_time_calls_us(lambda: fn(x), replays, device), 50)
            # A group task profiles one variant after another in one process; torch then warns that each
            # profile is its own cycle, which is what is wanted here.
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*Profiler clears events.*")
                _profiled = True
                with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                    for _ in range(replays):
                        fn(x)
                    torch.cuda.synchronize(device)
        kernels = [e for e in prof.events() if _is_kernel(e)]
        if not kernels:
            return _empty(BREAKDOWN_FIELDS, "the profiler recorded no CUDA kernel (CUPTI unavailable?)")
        # The event's own interval: device_time_total reads 0 for events kineto marks async.
        kernel_us = sum(e.time_range.elapsed_us() for e in kernels) / replays
    except Exception as e:  # diagnostics only: report, never fail the row
        return _empty(BREAKDOWN_FIELDS, f"kernel breakdown failed: {type(e).__name__}: {e}")
    return {"kernels_per_forward": len(kernels) / replays, "kernel_us_per_forward": kernel_us,
            "wall_us_per_forward": wall, "gap_us_per_forward": wall - kernel_us, "breakdown_note": None}
