"""Graphed rows agree with themselves within a process (CV of p50 ~0.05%) but not across processes (in-sweep
vs re-check up to 7% apart, on one H200 at 0b0a882). Is cuDNN's autotuning (cudnn.benchmark=True) the
cause, choosing different kernels in each fresh process?

    python3 reports/h200-process-spread/spread.py --out FILE [--procs 4]

For each variant and each cudnn.benchmark setting, `--procs` fresh processes (interleaved, so drift does not
decide) each: build the model (random weights: latency does not depend on them), prepare it with the
project's own `runner.optimize.prepare` / `callable_for` (the sweep's path), time 3 repeats with
`runner.bench.measure`, then, after timing, record the set of CUDA kernels one eager forward launches (its
digest tells whether two processes run the same kernels).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VARIANTS = {  # the graphed rows furthest from their re-check on one H200 at 0b0a882
    "resnet18-fp32-cl-eager-graph": ("resnet18_cifar", "fp32", "channels_last"),
    "shufflenet-fp16-nchw-eager-graph": ("shufflenet_v2_x1_0_cifar", "fp16", "contiguous"),
}


def child(args) -> None:
    sys.path.insert(0, str(ROOT))
    import numpy as np
    import torch
    from models import get_model
    from runner import bench
    from runner.optimize import prepare
    from variants.spec import Variant

    arch, precision, fmt = VARIANTS[args.variant]
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = bool(args.benchmark)
    dev = torch.device("cuda", 0)
    torch.manual_seed(0)
    model = get_model(arch)
    v = Variant(model=args.variant.split("-")[0], precision=precision, memory_format=fmt, cuda_graph=True)
    prep = prepare(model, v, dev)
    fn, x, _ = prep.callable_for(1)
    with torch.inference_mode():
        s = bench.measure(fn, x, warmup=200, iters=1000, repeats=3)
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CUDA]) as p:
            prep.forward(x)
            torch.cuda.synchronize()
    kernels = sorted({e.name for e in p.events() if e.device_type.name == "CUDA"})
    print("RESULT " + json.dumps({
        "p50_ms": [float(np.median(r.lat_ms)) for r in s],
        "kernels": len(kernels), "kernel_digest": hashlib.sha1("\n".join(kernels).encode()).hexdigest()[:10],
        "conv_kernels": [k[:90] for k in kernels if "conv" in k.lower() or "cudnn" in k.lower()
                         or "xmma" in k.lower() or "sm90" in k.lower()][:12]}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--procs", type=int, default=4)
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--variant")
    ap.add_argument("--benchmark", type=int)
    args = ap.parse_args()
    if args.child:
        return child(args)
    rows = []
    for i in range(args.procs):
        for variant in VARIANTS:
            for b in (1, 0):
                out = subprocess.run([sys.executable, __file__, "--out", "-", "--child", "--variant", variant,
                                      "--benchmark", str(b)], capture_output=True, text=True, cwd=ROOT)
                line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
                row = {"variant": variant, "cudnn_benchmark": b, "proc": i,
                       **(json.loads(line[7:]) if line else {"error": out.stderr[-600:]})}
                rows.append(row)
                print(variant, "benchmark", b, "proc", i, [round(p, 4) for p in row.get("p50_ms", [])],
                      row.get("kernel_digest"), row.get("error", ""), flush=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
