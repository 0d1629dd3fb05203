"""Why does a bench task time B1 ~1.5x slower than a re-check task, even with the host to itself?

    python3 reports/h200-inflation/probe.py --out DIR        (one GPU; starts its own local Ray cluster)

Seen on 2x H200 with the host lock in place (reports/h200x2-default/, commit 42d5e65): B1 in-sweep
p50 3.50 ms, its re-check 2.30 ms, `crosscheck` alone 1.97 ms; every eager row 1.1-2.1x its re-check,
graphed rows 1.02-1.29x. The host lock rules out the other GPU's work, so this probe looks *inside* the
process: the brief's B1 (MobileNetV3-Small, fp32, NCHW, eager), O1 (the same in fp16) and the fp16 CUDA
graph, with random weights (latency does not depend on them), each timed with the project's own
`runner.bench.measure` (100 warm-up + 500 timed calls) after every step a bench task takes before and
between its timings:

    fresh -> launch_floor -> NVML monitor on -> monitor off -> profiler (kernel_breakdown)
          -> accuracy pass (eval batch 1000) -> batch-1 agreement pass -> again

once in this process (no Ray) and once inside a Ray task; then the real `tasks.bench_job` and
`tasks.recheck_job` on the same three variants with synthetic data. One JSON line per measurement.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

ARCH = "mobilenet_v3_small_cifar"


def variants():
    from variants import Variant
    return {"B1 fp32 eager": Variant("mobilenet", "fp32", "contiguous", "none", False, False),
            "O1 fp16 eager": Variant("mobilenet", "fp16", "contiguous", "none", False, False),
            "fp16 graph": Variant("mobilenet", "fp16", "contiguous", "none", True, False)}


def synthetic(n_test: int = 10000):
    import numpy as np
    from runner.data import Cifar
    g = np.random.default_rng(0)
    return Cifar(g.integers(0, 255, (256, 3, 32, 32), dtype=np.uint8), g.integers(0, 10, 256),
                 g.integers(0, 255, (n_test, 3, 32, 32), dtype=np.uint8), g.integers(0, 10, n_test), "synthetic")


def checkpoint():
    import torch
    from runner.train import build_model
    torch.manual_seed(0)
    m = build_model(ARCH)
    return {"key": "mobilenet", "arch": ARCH, "arch_args": {}, "state_dict": m.state_dict(), "top1_pct": 10.0,
            "data_source": "synthetic"}


def trace(where: str) -> list[dict]:
    """The bench task's steps, one at a time, with the three variants timed after each."""
    import numpy as np
    import torch
    from runner import bench, breakdown, env, evaluate, optimize
    from runner.tasks import measurement_flags, task_device
    from runner.train import model_from_checkpoint

    device = task_device() if where == "ray" else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    iters = int(os.environ.get("PROBE_ITERS", 500))  # a CPU dry run uses fewer
    out = []
    with measurement_flags():
        model = model_from_checkpoint(checkpoint(), device)
        usable = {k: v for k, v in variants().items() if not optimize.unsupported_reason(v, device)}  # CPU: B1
        prepared = {k: optimize.prepare(model, v, device) for k, v in usable.items()}
        fns = {k: p.callable_for(1)[:2] for k, p in prepared.items()}

        def measure(step: str) -> None:
            for k, (fn, x) in fns.items():
                s = bench.measure(fn, x, warmup=iters // 5, iters=iters, repeats=1)[0]
                row = {"where": where, "step": step, "variant": k, "p50_ms": float(np.median(s.lat_ms)),
                       "host_p50_ms": float(np.median(s.host_ms)), "pid": os.getpid(),
                       "threads": torch.get_num_threads(), "cpus": len(os.sched_getaffinity(0))}
                print("PROBE " + json.dumps(row), flush=True)
                out.append(row)

        measure("fresh")
        breakdown.launch_floor(device)
        measure("after launch_floor")
        with env.GpuMonitor(env.device_info(device)["gpu_uuid"]):
            measure("NVML monitor on")
        measure("monitor off")
        fn, x = fns["B1 fp32 eager"]
        breakdown.kernel_breakdown(fn, x)
        breakdown._profiled = False  # this probe times exactly what runner.bench now refuses to time
        measure("after profiler")
        data = synthetic()
        p = prepared["B1 fp32 eager"]
        eval_fn, _, _ = p.callable_for(1000)
        evaluate.predict(eval_fn, data.test_x, device, 1000, p.cast_input)
        measure("after accuracy pass")
        evaluate.predict_one_by_one(fn, x, data.test_x[:500], device, p.cast_input)
        measure("after batch-1 pass")
        time.sleep(2)
        measure("again")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    rows = trace("plain")

    import ray
    import torch
    from runner import tasks
    from variants import BenchSpec, TrainSpec
    ray.init(num_gpus=1, include_dashboard=False, logging_level="WARNING",
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}})
    remote = lambda f: ray.remote(num_gpus=1, max_calls=1)(f)  # noqa: E731  as the sweep makes them
    rows += ray.get(remote(trace).remote("ray"))
    group = [v for v in variants().values() if v.precision == "fp32" or torch.cuda.is_available()]
    names = {v.variant_id: k for k, v in variants().items()}
    iters = int(os.environ.get("PROBE_ITERS", 500))
    spec, bench = TrainSpec("mobilenet", ARCH), BenchSpec(warmup=iters // 5, iters=iters, repeats=3, recheck=-1)
    ckpt, data = checkpoint(), synthetic()
    res = ray.get(remote(tasks.bench_job).remote(group, [], spec, ckpt, data, bench, "probe",
                                                 {v.variant_id: "x" for v in group}))
    for vid, (vrows, _) in res["bench"].items():
        row = {"where": "ray", "step": "bench_job", "variant": names[vid],
               "p50_ms": [r.get("lat_p50_ms") for r in vrows], "status": vrows[0]["status"],
               "error": (vrows[0].get("error") or "")[:300]}
        print("PROBE " + json.dumps(row), flush=True)
        rows.append(row)
    for r in ray.get(remote(tasks.recheck_job).remote(group, ckpt, bench)):
        row = {"where": "ray", "step": "recheck_job", "variant": names[r["variant_id"]],
               "p50_ms": r.get("recheck_p50_ms"), "status": r["status"], "error": r.get("error")}
        print("PROBE " + json.dumps(row), flush=True)
        rows.append(row)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "probe.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
