"""Why are eager rows timed ~2x too slow inside a sweep? One bench, many neighbours, measured.

    python3 reports/h200-contention/contention.py --out DIR [--rounds 2]     (needs 2 GPUs)

The benchmark is the brief's B1 (MobileNetV3-Small CIFAR, fp32, NCHW, eager; random weights: latency does
not depend on them), timed with the project's own `runner.bench.measure` on GPU 0 in a fresh process,
while a neighbour runs on GPU 1 (or nothing does). Each condition is one row; conditions are interleaved
over rounds so drift does not decide. Neighbours:
  train         a ResNet-18 training loop (bf16 autocast, channels_last, data on the GPU), as a sweep's
  compile       torch.compile (inductor, caches off) of ResNet-18 / MobileNetV3 in a loop, default threads
  compile-1t    the same with TORCHINDUCTOR_COMPILE_THREADS=1 (no pool of compile workers)
  compile-pin   default threads, but the bench and the compile pinned to disjoint halves of the CPUs
  reused        no neighbour; the bench process first trains for 20 s (a Ray worker reused after training)
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
CONDITIONS = ("alone", "train", "compile", "compile-1t", "compile-pin", "reused")


def cpu_halves() -> tuple[list[int], list[int]]:
    cpus = sorted(os.sched_getaffinity(0))
    return cpus[: len(cpus) // 2], cpus[len(cpus) // 2:]


def role_bench(args) -> None:
    import torch
    from models import get_model
    from runner import bench

    dev = torch.device("cuda", 0)
    if args.pre_train_s:
        role_train_loop(args.pre_train_s)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    m = get_model("mobilenet_v3_small_cifar").eval().to(dev)
    x = torch.randn(1, 3, 32, 32, device=dev)
    with torch.inference_mode():
        s = bench.measure(m, x, warmup=200, iters=1000, repeats=3)
    import numpy as np
    out = {"event_p50_ms": [float(np.median(r.lat_ms)) for r in s],
           "host_p50_ms": [float(np.median(r.host_ms)) for r in s],
           "event_p95_ms": [float(np.percentile(r.lat_ms, 95)) for r in s],
           "cpus": len(os.sched_getaffinity(0)), "torch_threads": torch.get_num_threads()}
    print("RESULT " + json.dumps(out), flush=True)


def role_train_loop(seconds: float) -> None:
    import torch
    from models import get_model

    dev = torch.device("cuda", 0)
    m = get_model("resnet18_cifar").to(dev).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(512, 3, 32, 32, device=dev).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (512,), device=dev)
    t0 = time.time()
    while time.time() - t0 < seconds:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(m(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss.item()  # a sync per step, as the project's training loop logs


def role_compile_loop(seconds: float) -> None:
    import torch
    from models import get_model

    dev = torch.device("cuda", 0)
    x = torch.randn(1, 3, 32, 32, device=dev)
    t0, n = time.time(), 0
    while time.time() - t0 < seconds:
        for name in ("resnet18_cifar", "mobilenet_v3_small_cifar"):
            torch._dynamo.reset()
            m = get_model(name).eval().to(dev)
            with torch.inference_mode():
                torch.compile(m)(x)
            n += 1
    print(f"compiled {n} models", flush=True)


def spawn(role: str, gpu: int, cpus: list[int] | None = None, extra_env: dict | None = None, *args) -> subprocess.Popen:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": str(gpu), "PYTHONPATH": f"{ROOT}:{os.environ.get('PYTHONPATH', '')}",
           "TORCHINDUCTOR_FORCE_DISABLE_CACHES": "1", **(extra_env or {})}
    cmd = [sys.executable, __file__, "--role", role, *map(str, args)]
    if cpus:
        cmd = ["taskset", "-c", ",".join(map(str, cpus))] + cmd
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def run_condition(cond: str) -> dict:
    lo, hi = cpu_halves()
    neighbour = None
    if cond == "train":
        neighbour = spawn("train", 1, None, None, "--seconds", 60)
    elif cond in ("compile", "compile-1t", "compile-pin"):
        env = {"TORCHINDUCTOR_COMPILE_THREADS": "1"} if cond == "compile-1t" else None
        neighbour = spawn("compile", 1, hi if cond == "compile-pin" else None, env, "--seconds", 60)
    if neighbour:
        time.sleep(8)  # let the neighbour reach its steady state (imports, first compile under way)
    extra = ["--pre-train-s", 20] if cond == "reused" else []
    t0 = time.time()
    b = spawn("bench", 0, lo if cond == "compile-pin" else None, None, *extra)
    out, _ = b.communicate(timeout=300)
    if neighbour:
        neighbour.kill()
        neighbour.wait()
    line = [l for l in out.splitlines() if l.startswith("RESULT ")]
    if not line:
        return {"condition": cond, "error": out[-2000:]}
    return {"condition": cond, "wall_s": time.time() - t0, **json.loads(line[-1][7:])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--role", default="driver")
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--pre-train-s", type=float, default=0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--conditions", default=",".join(CONDITIONS))
    p.add_argument("--out", default="runs/contention")
    a = p.parse_args()
    if a.role == "bench":
        return role_bench(a)
    if a.role == "train":
        return role_train_loop(a.seconds)
    if a.role == "compile":
        return role_compile_loop(a.seconds)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for r in range(a.rounds):
        for cond in a.conditions.split(","):
            row = {"round": r, **run_condition(cond)}
            rows.append(row)
            med = sorted(row.get("event_p50_ms", [float("nan")]))[1] if "event_p50_ms" in row else float("nan")
            print(f"round {r} {cond:<12} event p50 {row.get('event_p50_ms')} host p50 {row.get('host_p50_ms')}"
                  + (f" ERROR {row['error'][-300:]}" if "error" in row else ""), flush=True)
            (out / "contention.json").write_text(json.dumps(rows, indent=1))
    print(f"\n{'condition':<12} {'event p50 ms (median of repeats, per round)':<50}")
    for cond in a.conditions.split(","):
        vals = [sorted(x["event_p50_ms"])[1] for x in rows if x["condition"] == cond and "event_p50_ms" in x]
        print(f"{cond:<12} {' '.join(f'{v:.3f}' for v in vals)}")


if __name__ == "__main__":
    main()
