"""How fast can a small CIFAR net run at batch 1? Untrained nets, three inference paths, one GPU.

    python3 reports/h200-latency-probe/probe.py --out DIR [--budget-s 240]

Nets are conv(+bias) -> act -> [max-pool] blocks, the shape a BN-folded latency-first net has after
folding. Paths (fp16, channels_last): eager ops in one CUDA graph; torch.compile (inductor, default mode)
captured in one manual CUDA graph; and, where the budget allows, max-autotune-no-cudagraphs in a graph.
Also batch 2 (a flip-TTA pair) for the compiled path. CUDA-event time per replay, 200 warm-up, 2000 timed.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

# name -> (stem, [(width, convs in block)], act)
NETS = {
    "c4-w64.128.256": (24, [(64, 1), (128, 1), (256, 1)], "gelu"),
    "c4-w64.256.256": (24, [(64, 1), (256, 1), (256, 1)], "gelu"),
    "c4-w64.256.256-relu": (24, [(64, 1), (256, 1), (256, 1)], "relu"),
    "c5-w64.256.256.512": (24, [(64, 1), (256, 1), (256, 1), (512, 1)], "gelu"),
    "c7-airbench": (24, [(64, 2), (256, 2), (256, 2)], "gelu"),
    "c4-w128.256.512": (32, [(128, 1), (256, 1), (512, 1)], "gelu"),
}


def build(stem: int, blocks, act: str) -> nn.Module:
    A = nn.GELU if act == "gelu" else nn.ReLU
    layers: list[nn.Module] = [nn.Conv2d(3, stem, 2), A()]
    c = stem
    for w, n in blocks:
        layers += [nn.Conv2d(c, w, 3, padding=1), nn.MaxPool2d(2), A()]
        for _ in range(n - 1):
            layers += [nn.Conv2d(w, w, 3, padding=1), A()]
        c = w
    layers += [nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(c, 10, bias=False)]
    return nn.Sequential(*layers)


def graph(fn, x):
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn(x)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn(x)
    return g.replay


def time_us(replay, iters=2000, warmup=200) -> dict:
    for _ in range(warmup):
        replay()
    torch.cuda.synchronize()
    ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)]
    for a, b in ev:
        a.record(); replay(); b.record(); b.synchronize()
    t = np.array([a.elapsed_time(b) for a, b in ev]) * 1e3
    return {"p50_us": float(np.median(t)), "p95_us": float(np.percentile(t, 95))}


def floor_us() -> dict:
    x = torch.zeros(1, device="cuda")
    return time_us(graph(lambda t: t.add_(1), x))


@torch.inference_mode()
def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="runs/probe")
    p.add_argument("--budget-s", type=float, default=240)
    a = p.parse_args()
    t0 = time.time()
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    rows = [{"net": "launch-floor", "path": "graph-1-kernel", **floor_us()}]
    print(rows[-1], flush=True)
    for mode in ("eager-graph", "inductor-graph", "inductor-graph-b2", "ma-nocg-graph"):
        for name, (stem, blocks, act) in NETS.items():
            if time.time() - t0 > a.budget_s:
                break
            if mode == "ma-nocg-graph" and name not in ("c4-w64.256.256", "c7-airbench"):
                continue
            torch._dynamo.reset()
            m = build(stem, blocks, act).cuda().half().eval().to(memory_format=torch.channels_last)
            x = torch.randn(2 if mode.endswith("b2") else 1, 3, 32, 32, device="cuda").half()
            x = x.contiguous(memory_format=torch.channels_last)
            fn = m
            tc = time.time()
            if mode.startswith("inductor"):
                fn = torch.compile(m, dynamic=False)
            elif mode.startswith("ma-nocg"):
                fn = torch.compile(m, mode="max-autotune-no-cudagraphs", dynamic=False)
            try:
                r = graph(fn, x)
                row = {"net": name, "path": mode, "compile_s": time.time() - tc, **time_us(r)}
            except Exception as e:  # record, go on
                row = {"net": name, "path": mode, "error": f"{type(e).__name__}: {e}"[:300]}
            rows.append(row)
            print(row, flush=True)
            (out / "probe.json").write_text(json.dumps(rows, indent=1))
    print(f"\n{'net':<22} {'path':<18} p50/p95 us")
    for r in rows:
        print(f"{r['net']:<22} {r['path']:<18} {r.get('p50_us', float('nan')):7.1f} {r.get('p95_us', float('nan')):7.1f}")


if __name__ == "__main__":
    main()
