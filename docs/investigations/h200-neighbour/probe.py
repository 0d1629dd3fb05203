"""What, done by a process on the *other* GPU, slows an eager timing on this one?

    python3 reports/h200-neighbour/probe.py --out DIR      (needs two GPUs; no Ray)

Seen on 2x H200 at 29ddd8c (reports/h200x2-default/): with the host lock, 41 of 48 rows agree with their
re-check, but 6 eager re-checks read 1.1-2.1x *slower* than the in-sweep timing of the same variant (O1:
3.68 ms in-sweep, 7.75 ms re-checked). Re-check tasks are short, so the other GPU's tasks start, switch
variants and exit often; and some of what they do there runs outside the host lock: the CUDA context's
creation (`task_device`), freeing the previous variant (`empty_cache`, graph destruction) and the context's
teardown at process exit. This probe times O1 (MobileNetV3-Small fp16 eager, the most launch-bound row)
and B1 (fp32) on GPU 0 with the project's own `runner.bench.measure`, while a neighbour process on GPU 1
does one thing at a time, in a loop:

    idle             nothing (the baseline; measured before and after the others)
    python-start     start `python -c "import torch"` processes, one after another (CPU only, no CUDA)
    cuda-start-exit  start processes that create a CUDA context, allocate 2 GB and exit
    malloc-free      cudaMalloc / cudaFree of 1 GB (torch.empty + empty_cache)
    graph-capture    capture and destroy a small CUDA graph
    gpu-compute      fp16 matmuls (GPU busy, host idle)
    h2d-copy         pinned host -> device copies of 120 MB (the test set's size)
    ray-cluster      an idle Ray cluster of two nodes, started as reports/h200x2-default/device.sh does
    spin-sibling     a Python busy loop pinned to the SMT sibling of the CPU the timing is pinned to
    spin-other-core  the same busy loop on another physical core
    cuda-start-exit-held   cuda-start-exit, each process as a sweep task does it since the fix: its context
                     created inside `hostlock.busy()`, and `hostlock.hold_until_exit()` as its last step
    idle-pinned      nothing on GPU 1, and the timing process pinned to one CPU (is the jitter its own?)

Every window is timed inside `hostlock.timing()`, as the sweep times.

(The two spin activities and idle-pinned pin the timing process to one CPU for their windows; the others
leave it free.)

One JSON line per timed window: activity, variant, p50 and host p50 of 300 calls, the CPU the timing
thread was on at the window's end and the involuntary context switches it took during the window, the VM's steal time in that window,
and three yardsticks taken after it (`canaries`).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

ACTIVITIES = ["idle", "python-start", "cuda-start-exit", "malloc-free", "graph-capture", "gpu-compute",
              "h2d-copy", "ray-cluster", "spin-sibling", "spin-other-core", "idle"]
TIMING_CPU = 4  # the CPU the timing process is pinned to for the spin activities


def cpu_for(activity: str) -> int | None:
    """The CPU a spin neighbour is pinned to: TIMING_CPU's SMT sibling, or a CPU of another core."""
    base = Path(f"/sys/devices/system/cpu/cpu{TIMING_CPU}/topology/thread_siblings_list")
    text = base.read_text().strip() if base.exists() else str(TIMING_CPU)
    siblings = set()
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        siblings |= set(range(int(lo), int(hi or lo) + 1))
    others = siblings - {TIMING_CPU}
    if activity == "spin-sibling":
        return min(others) if others else None  # no SMT: nothing to test
    return max(os.sched_getaffinity(0) - siblings)


def current_cpu() -> int:
    """The CPU this (main) thread last ran on: field 39 of its /proc stat line."""
    stat = Path(f"/proc/self/task/{os.getpid()}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[36])


def involuntary_switches() -> int:
    """How often the scheduler has taken the CPU from this thread so far."""
    for line in Path(f"/proc/self/task/{os.getpid()}/status").read_text().splitlines():
        if line.startswith("nonvoluntary_ctxt_switches"):
            return int(line.split()[1])
    return -1


def steal_jiffies() -> int:
    """Time the hypervisor ran something else on this VM's CPUs (all CPUs, /proc/stat's steal field)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()
    return int(fields[8]) if len(fields) > 8 else -1


def canaries(device) -> dict:
    """Two fixed yardsticks taken right after a window, to tell whose speed changed in a slow one: the
    CPU's (a pure-Python loop) or the launch path's (tiny kernels, host clock around each launch)."""
    import torch
    t0 = time.perf_counter()
    n = 0
    for i in range(200_000):
        n += i
    cpu_loop_ms = (time.perf_counter() - t0) * 1e3
    x = torch.zeros(1, device=device)
    torch.cuda.synchronize()
    launches = []
    for _ in range(500):
        t = time.perf_counter()
        x.add_(1)
        launches.append(time.perf_counter() - t)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(200):
        x.add_(1)
        torch.cuda.synchronize()
    roundtrip_us = (time.perf_counter() - t) / 200 * 1e6
    launches.sort()
    return {"cpu_loop_ms": cpu_loop_ms, "launch_us": launches[len(launches) // 2] * 1e6,
            "launch_sync_us": roundtrip_us}


def neighbour(activity: str, seconds: float) -> None:
    """Runs on GPU 1 (CUDA_VISIBLE_DEVICES=1): says `ready` once set up, then loops `activity`."""
    import signal
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # so `finally` stops what it started
    if activity.startswith("spin"):
        cpu = cpu_for(activity)
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
        print(f"ready cpu {cpu}", flush=True)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            pass
        return
    if activity == "ray-cluster":
        ray = [sys.executable, "-m", "ray.scripts.scripts"]
        try:
            subprocess.run(ray + ["start", "--head", "--port=6390", "--num-gpus=1", "--num-cpus=16",
                                  "--dashboard-host=127.0.0.1", "--disable-usage-stats"], check=True,
                           capture_output=True)
            subprocess.run(ray + ["start", "--address=127.0.0.1:6390", "--num-gpus=0", "--num-cpus=16",
                                  "--disable-usage-stats"], check=True, capture_output=True)
            time.sleep(5)  # the agents are up
            print("ready", flush=True)
            time.sleep(seconds)
        finally:
            subprocess.run(ray + ["stop", "--force"], capture_output=True)
        return
    import torch
    spawn = {"python-start": "import torch",
             "cuda-start-exit": "import torch; x = torch.empty(2 << 30, dtype=torch.uint8, device='cuda'); "
                                "torch.cuda.synchronize()",
             "cuda-start-exit-held": "import torch; from runner import hostlock\n"
                                     "with hostlock.busy():\n"
                                     "    torch.cuda.set_device(0); torch.empty(1, device='cuda:0')\n"
                                     "    x = torch.empty(2 << 30, dtype=torch.uint8, device='cuda'); torch.cuda.synchronize()\n"
                                     "hostlock.hold_until_exit()"}
    dev = torch.device("cuda", 0)
    a = torch.randn(4096, 4096, device=dev, dtype=torch.float16)
    a @ a  # cuBLAS's handle exists before any capture
    host = torch.empty(120 << 20, dtype=torch.uint8).pin_memory()
    print("ready", flush=True)
    end, n = time.monotonic() + seconds, 0
    while time.monotonic() < end:
        if activity in spawn:
            subprocess.run([sys.executable, "-c", spawn[activity]], check=True,
                           env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])})
        elif activity == "malloc-free":
            x = torch.empty(1 << 30, dtype=torch.uint8, device=dev)
            del x
            torch.cuda.empty_cache()
        elif activity == "graph-capture":
            g = torch.cuda.CUDAGraph()
            s = torch.cuda.Stream()
            with torch.cuda.stream(s), torch.cuda.graph(g):
                b = a @ a
            g.replay()
            torch.cuda.synchronize()
            del g, b
        elif activity == "gpu-compute":
            for _ in range(20):
                a @ a
            torch.cuda.synchronize()
        elif activity == "h2d-copy":
            host.to(dev, non_blocking=True)
            torch.cuda.synchronize()
        else:
            time.sleep(0.05)
        n += 1
    print(f"done {n}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--neighbour")
    ap.add_argument("--seconds", type=float, default=0)
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--activities", default=",".join(ACTIVITIES))
    args = ap.parse_args()
    if args.neighbour:
        return neighbour(args.neighbour, args.seconds)

    os.environ["CUDA_VISIBLE_DEVICES"] = "0"
    import numpy as np
    import torch
    from runner import bench, hostlock, optimize
    from runner.tasks import measurement_flags
    from runner.train import build_model
    from variants import Variant

    device = torch.device("cuda", 0)
    torch.manual_seed(0)
    model = build_model("mobilenet_v3_small_cifar").to(device)
    fns = {}
    with measurement_flags():
        for name, prec in (("O1 fp16 eager", "fp16"), ("B1 fp32 eager", "fp32")):
            v = Variant("mobilenet", prec, "contiguous", "none", False, False)
            fns[name] = optimize.prepare(model, v, device).callable_for(1)[:2]
        rows = []
        for activity in args.activities.split(","):
            env = {**os.environ, "CUDA_VISIBLE_DEVICES": "1"}
            seconds = 2 * args.windows * args.iters * 0.004 + 3 + (30 if activity == "ray-cluster" else 0)
            nb = subprocess.Popen([sys.executable, __file__, "--out", args.out, "--neighbour", activity,
                                   "--seconds", str(seconds)], env=env, stdout=subprocess.PIPE, text=True)
            ready = nb.stdout.readline().strip()
            assert ready.startswith("ready"), ready
            pinned = activity.startswith("spin") or activity == "idle-pinned"
            if pinned:
                free = os.sched_getaffinity(0)
                os.sched_setaffinity(0, {TIMING_CPU})
            time.sleep(1.0)  # its loop has started
            for w in range(args.windows):
                for name, (fn, x) in fns.items():
                    switches, steal = involuntary_switches(), steal_jiffies()
                    with hostlock.timing():
                        s = bench.measure(fn, x, warmup=30, iters=args.iters, repeats=1)[0]
                    row = {"activity": activity, "window": w, "variant": name, "neighbour": ready,
                           "p50_ms": float(np.median(s.lat_ms)), "host_p50_ms": float(np.median(s.host_ms)),
                           "p95_ms": float(np.percentile(s.lat_ms, 95)), "cpu": current_cpu(),
                           "involuntary_switches": involuntary_switches() - switches,
                           "steal_jiffies": steal_jiffies() - steal, **canaries(device)}
                    print("PROBE " + json.dumps(row), flush=True)
                    rows.append(row)
            if pinned:
                os.sched_setaffinity(0, free)
            nb.terminate()
            print(f"neighbour {activity} ({ready}): {nb.stdout.read().strip()}", flush=True)
            nb.wait()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "probe.json").write_text(json.dumps(rows, indent=1))
    summary = {}
    for r in rows:
        summary.setdefault((r["activity"], r["variant"]), []).append(r["p50_ms"])
    for (a, v), p in summary.items():
        print(f"{a:16s} {v:14s} p50 ms per window: " + " ".join(f"{x:.3f}" for x in p))


if __name__ == "__main__":
    main()
