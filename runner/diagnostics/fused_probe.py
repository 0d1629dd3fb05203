"""GPU check of `compile: fused` (runner/fused.py) against the stock paths, on random-weight fastnets.

    python -m runner.diagnostics.fused_probe [--nets 111,122] [--fused 128,128s,128sf,512s] [--iters 2000]

For each net (the latency-first family's widths 64/256/256, whitening stem, GELU; `122` is
convs_per_block (1, 2, 2)), BN folded, fp16, channels_last, each path in one CUDA graph:
  eager     eager ops captured in a graph (runner.optimize.prepare, compile: none)
  inductor  torch.compile default mode, captured in a graph (compile: default)
  fused@T   runner/fused.py, T target programs per kernel, `s`: split K, `f`: the stem fused into the next
            conv (fused@512: the defaults, split K and fused stem, through runner.optimize.prepare; the others
            built directly, captured the same way)
Prints the max relative logit error against the fp32 eager unfolded model (batch 1, and batch 1000 for
fused), p50 / p95 of CUDA-event batch-1 latency (200 warm-up + `--iters` timed calls, runner.bench), and
after all timing (profiling slows later launches) kernels per forward and their summed time. Random
weights: latency does not depend on them; BN statistics are randomised so the fold is not trivial.
With $OUT set, the rows are also written to $OUT/fused_probe.json.
"""
from __future__ import annotations

import argparse
import json
import os

import torch
import triton

from models import get_model
from runner import bench, breakdown
from runner.diagnostics.table import Column, print_table
from runner.fused import TARGET_PROGRAMS, fused_forward
from runner.optimize import _capture_graph, fold_batchnorm, prepare
from variants import Variant

COLUMNS = (Column("net", 5, "<"), Column("path", 10, "<"), Column("kernels", 7), Column("kern_us", 7),
           Column("p50_us", 7), Column("p95_us", 7), Column("relerr_b1", 9), Column("relerr_b1000", 12),
           Column("top1_agree", 10))


def random_fastnet(cpb: tuple[int, ...], seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    m = get_model("fastnet_cifar", widths=(64, 256, 256), convs_per_block=cpb, stem="whiten2x2",
                  stem_width=24, act="gelu").eval()
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.normal_(0, 0.2)
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.normal_(0, 0.2)
    return m


def fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got.float() - ref).abs().max() / ref.abs().max())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", default="111,122")
    ap.add_argument("--fused", default="128,128s,128sf,512s",
                    help="more fused variants: target programs per kernel, + 's' split K, + 'f' fused stem")
    ap.add_argument("--iters", type=int, default=2000)
    ap.add_argument("--warmup", type=int, default=200)
    args = ap.parse_args()
    dev = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    big = torch.randn(1000, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    cases, rows, out = [], [], []  # cases: [net, path, graphed fn, static input, errors..., stats]
    floor = breakdown.launch_floor(dev)

    def add(net: str, name: str, build) -> None:
        """Build one path (an exception becomes an ERROR row, never the end of the probe) and time it now."""
        try:
            fn, x, e1, eb, agree, note = build()
            s = bench.stats(bench.time_repeat(fn, x, warmup=args.warmup, iters=args.iters).lat_ms * 1e3)
        except Exception as e:  # noqa: BLE001 - a probe reports, it does not stop at the first broken path
            rows.append(f"{net:<5} {name:<10} ERROR {type(e).__name__}: {' '.join(str(e).split())[:300]}")
            print(rows[-1], flush=True)
            return
        cases.append([net, name, fn, x, e1, eb, agree, s])
        print(f"{net} {name}: p50 {s['p50']:.1f} / p95 {s['p95']:.1f} us, rel err b1 {e1:.2e}{note}", flush=True)

    for net in args.nets.split(","):
        model = random_fastnet(tuple(int(ch) for ch in net))
        ref_model = model.float().to(dev)
        with torch.inference_mode():
            ref_big = ref_model(big.to(dev))

        def check(fn, x, fwd_big):
            with torch.inference_mode():
                e1 = rel_err(fn(x), ref_model(x.float()))
                if fwd_big is None:
                    return e1, None, None
                got = fwd_big(big.to(dev, torch.float16).contiguous(memory_format=torch.channels_last))
                return e1, rel_err(got, ref_big), float((got.argmax(1) == ref_big.argmax(1)).float().mean())

        def stock(compile_):
            v = Variant(model=f"fast{net}", precision="fp16", memory_format="channels_last", compile=compile_,
                        cuda_graph=True, bn_fold=True)
            prep = prepare(model, v, dev)
            fn, x, _ = prep.callable_for(1)  # fused: the accuracy pass's batch through the same kernels
            return (fn, x, *check(fn, x, prep.forward if compile_ == "fused" else None), "")

        def own(opt):
            x = torch.randn(1, 3, 32, 32, device=dev).half().contiguous(memory_format=torch.channels_last)
            fwd = fused_forward(folded, x, target_programs=int(opt.rstrip("sf")), split_k="s" in opt,
                                fuse_stem="f" in opt)
            fn = _capture_graph(fwd, x, dev)
            tiles = [(L["bp"], L["bn"], L["bk"], L["split"], L["warps"]) for L in fwd.layers]
            return (fn, x, *check(fn, x, fwd), f"; {fwd.kernels} kernels, tiles (pixels, channels, k, split, "
                    f"warps) {tiles}")

        for compile_, name in (("none", "eager"), ("default", "inductor"), ("fused", f"fused@{TARGET_PROGRAMS}")):
            add(net, name, lambda: stock(compile_))
        folded = fold_batchnorm(model)[0].half()
        for opt in args.fused.split(","):
            add(net, f"fused@{opt}", lambda: own(opt))
    for net, name, fn, x, e1, eb, agree, s in cases:  # profile after all timing (it slows later launches)
        bd = breakdown.kernel_breakdown(fn, x, replays=20, wall_us=s["p50"])
        rows.append([net, name, fmt(bd["kernels_per_forward"], ".0f"), fmt(bd["kernel_us_per_forward"], ".1f"),
                     f"{s['p50']:.1f}", f"{s['p95']:.1f}", f"{e1:.1e}", fmt(eb, ".1e"), fmt(agree, ".4f")])
        out.append(dict(net=net, path=name, p50_us=s["p50"], p95_us=s["p95"], rel_err_b1=e1, rel_err_b1000=eb,
                        top1_agree_b1000=agree, **{k: bd[k] for k in breakdown.BREAKDOWN_FIELDS}))
    gpu = torch.cuda.get_device_name(dev) if dev.type == "cuda" else str(dev)
    print(f"\n{gpu}, torch {torch.__version__}, triton {triton.__version__}; launch floor (graph of one trivial "
          f"kernel) p50 {fmt(floor['floor_p50_us'], '.1f')} / p95 {fmt(floor['floor_p95_us'], '.1f')} us")
    print_table(COLUMNS, rows)
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "fused_probe.json"), "w") as f:
            json.dump(dict(floor=floor, rows=out, errors=[r for r in rows if isinstance(r, str)]), f, indent=1)


if __name__ == "__main__":
    main()
