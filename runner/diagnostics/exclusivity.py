"""Show that the bench notices a second process on its GPU (the 'one latency job per device' invariant).

    python -m runner exclusivity [--seconds 20] [--warmup 50] [--iters 300] [--out runs/exclusivity.json]

On cuda:0, with a graphed fp16 channels_last ResNet-18 (untrained; weights do not change latency):
  alone   NVML state (`runner.env.nvml_state`) + a short bench: expect gpu_exclusive True
  loaded  a second Python process runs a large fp16 matmul loop on the same GPU for --seconds;
          once it prints "ready" (its CUDA context exists) the same check and bench run again:
          expect gpu_exclusive False with its pid listed, and a host-vs-event gap (the event timer
          only sees our kernels' GPU time; the host clock also sees the time-slicing with the other context)
  after   the load is killed and the check runs once more (exclusive again)
Prints a table and "EXCLUSIVITY: detected" or "EXCLUSIVITY: NOT detected". Needs a CUDA GPU: on a
machine without one it says so and exits 0.
"""
from __future__ import annotations

import os
import selectors
import subprocess
import sys
import tempfile
import time

import torch

from models import get_model
from runner import bench, env
from runner.diagnostics import nvml
from runner.diagnostics.table import Column, print_table
from runner.files import write_json
from runner.optimize import prepare
from variants import BenchSpec, Variant

VARIANT = Variant("resnet18_cifar", precision="fp16", memory_format="channels_last", cuda_graph=True)
READY_TIMEOUT_S = 180.0  # CUDA init + first cuBLAS call of the load can take a while on a cold machine
# The load: argv[1] = seconds, argv[2] = device index. It synchronizes every few matmuls so the GPU
# queue stays short and a kill takes effect at once.
LOAD_CODE = """
import sys, time, torch
seconds, index = float(sys.argv[1]), int(sys.argv[2])
d = torch.device("cuda", index)
a = torch.randn(8192, 8192, device=d, dtype=torch.float16)
b = torch.randn_like(a)
c = a @ b
torch.cuda.synchronize(d)
print("ready", flush=True)
end = time.monotonic() + seconds
while time.monotonic() < end:
    for _ in range(4):
        c = a @ b
    torch.cuda.synchronize(d)
"""


def measure_phase(phase: str, fn, x, uuid: str | None, *, warmup: int, iters: int) -> dict:
    """NVML state before and after one bench repeat, and its event / host p50 (the sweep's checks)."""
    before = env.nvml_state(uuid)
    raw = nvml.compute_pids(uuid)  # every pid, ours included: shows a PID-namespace mismatch
    s = bench.time_repeat(fn, x, warmup=warmup, iters=iters)
    after = env.nvml_state(uuid)
    lat, host = bench.stats(s.lat_ms)["p50"], bench.stats(s.host_ms)["p50"]
    excl = [v for v in (before["gpu_exclusive"], after["gpu_exclusive"]) if v is not None]
    return {"phase": phase, "gpu_exclusive": (all(excl) if excl else None),
            "gpu_exclusive_before": before["gpu_exclusive"], "gpu_exclusive_after": after["gpu_exclusive"],
            "gpu_other_pids": before["gpu_other_pids"] or after["gpu_other_pids"], "nvml_all_pids": raw,
            "sm_clock_mhz": before["sm_clock_mhz"], "temp_c": before["temp_c"], "timer": s.timer,
            "lat_p50_ms": lat, "host_p50_ms": host, "host_minus_event_ms": host - lat,
            "host_over_event": host / lat if lat > 0 else None, "lat_p99_ms": bench.stats(s.lat_ms)["p99"],
            "host_p99_ms": bench.stats(s.host_ms)["p99"]}


def start_load(seconds: float, index: int) -> tuple[subprocess.Popen, object]:
    """The second process; its stderr goes to a temp file so a chatty or failing child cannot block on a pipe."""
    err = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen([sys.executable, "-c", LOAD_CODE, str(seconds), str(index)],
                            stdout=subprocess.PIPE, stderr=err, text=True)
    return proc, err


def wait_ready(proc: subprocess.Popen, timeout_s: float) -> bool:
    """Read the child's stdout until "ready", it exits, or the timeout passes (never blocks forever)."""
    deadline = time.monotonic() + timeout_s
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
                break
            line = proc.stdout.readline()
            if line.strip() == "ready":
                return True
            if line == "":  # EOF: the child died
                return False
    return False


def stop_load(proc: subprocess.Popen) -> int | None:
    """Terminate the child we started (by its own pid), escalating to kill if it ignores SIGTERM."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    return proc.returncode


def verdict(alone: dict, loaded: dict | None) -> str:
    if loaded is None:
        return "EXCLUSIVITY: NOT detected (the load process never became ready; see load_stderr)"
    if alone["gpu_exclusive"] is None or loaded["gpu_exclusive"] is None:
        return f"EXCLUSIVITY: NOT detected (NVML gave no answer: {alone['gpu_other_pids'] or 'pynvml missing?'})"
    if not alone["gpu_exclusive"]:
        return (f"EXCLUSIVITY: NOT detected (not exclusive even alone: other pids {alone['gpu_other_pids']}; "
                f"NVML lists {alone['nvml_all_pids']}, our pid {os.getpid()})")
    if loaded["gpu_exclusive"]:
        return "EXCLUSIVITY: NOT detected (the loaded GPU still looked exclusive)"
    return (f"EXCLUSIVITY: detected (other pids {loaded['gpu_other_pids']}; host/event p50 "
            f"{alone['host_over_event']:.2f}x alone -> {loaded['host_over_event']:.2f}x loaded)")


TABLE = (Column("phase", 8, "<"), Column("exclusive", 9), Column("other pids", 18, "<"), Column("event p50", 10),
         Column("host p50", 10), Column("host-event", 10), Column("host/event", 10))


def table_rows(rows: list[dict]) -> list[list[str]]:
    return [[r["phase"], str(r["gpu_exclusive"]), str(r["gpu_other_pids"] or "-")[:18], f"{r['lat_p50_ms']:.4f}ms",
             f"{r['host_p50_ms']:.4f}ms", f"{r['host_minus_event_ms']:.4f}ms",
             f"{r['host_over_event']:.2f}x" if r["host_over_event"] is not None else "-"] for r in rows]


def run(args) -> int:
    """`python -m runner exclusivity` (options: runner/cli.py)."""
    if not torch.cuda.is_available():
        print("exclusivity: needs a CUDA GPU and none is visible here; nothing measured")
        return 0
    device = torch.device("cuda", args.device_index)
    torch.cuda.set_device(device)
    torch.backends.cudnn.benchmark = BenchSpec().cudnn_autotune  # as a sweep's bench task does by default
    info = env.device_info(device)
    torch.manual_seed(0)
    fn, x, _ = prepare(get_model(VARIANT.model).eval(), VARIANT, device).callable_for(1)
    kw = dict(warmup=args.warmup, iters=args.iters)

    rows = [measure_phase("alone", fn, x, info["gpu_uuid"], **kw)]
    loaded, load_info = None, {}
    proc, err = start_load(args.seconds, args.device_index)
    try:
        ready = wait_ready(proc, READY_TIMEOUT_S)
        load_info["load_pid"] = proc.pid
        if ready:
            loaded = measure_phase("loaded", fn, x, info["gpu_uuid"], **kw)
            # If the load ended before the bench did, the loaded numbers are partly unloaded: say so.
            load_info["load_alive_after_bench"] = proc.poll() is None
            rows.append(loaded)
    finally:
        load_info["load_returncode"] = stop_load(proc)
        err.seek(0)
        load_info["load_stderr_tail"] = err.read()[-2000:]
        err.close()
    time.sleep(1.0)  # let the driver drop the dead context before NVML is asked again
    rows.append(measure_phase("after", fn, x, info["gpu_uuid"], **kw))

    print(f"exclusivity on {device} ({info['gpu_name']}, {info['gpu_uuid']}); our pid {os.getpid()}, "
          f"load pid {proc.pid}")
    print_table(TABLE, table_rows(rows))
    if loaded is not None and not load_info.get("load_alive_after_bench", True):
        print("warning: the load ended before the loaded bench finished; raise --seconds")
    if rows[0]["nvml_all_pids"] == []:
        print("note: NVML lists no compute process, not even ours: gpu_exclusive=True proves nothing here")
    if loaded is not None and loaded["nvml_all_pids"] is not None and proc.pid not in loaded["nvml_all_pids"]:
        print("note: NVML does not list the load's pid as we see it (PID namespace, e.g. a container)")
    line = verdict(rows[0], loaded)
    print(line)
    report = {"verdict": line, "detected": line.startswith("EXCLUSIVITY: detected"), "our_pid": os.getpid(),
              "variant_id": VARIANT.variant_id, "seconds": args.seconds, **kw, **load_info,
              **env.versions(), **info, "phases": rows, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    print(f"wrote {write_json(report, args.out)}")
    return 0

