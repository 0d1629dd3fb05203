"""Cross-check our batch-1 latency numbers against an independent timer.

    python -m runner crosscheck [--iters 1000] [--warmup 200] [--out runs/crosscheck.json]
                                [--timer auto|triton|torch] [--only ARCH,...] [--device cuda:0]

Three untrained variants (weights do not change latency) are prepared exactly as a sweep prepares them
(`runner.optimize.prepare` + `.callable_for(1)`), then timed, interleaved, as: ours -> independent -> ours.
The second run of ours exposes drift (clocks, temperature) between the two timers' windows.

  ours         `runner.bench.measure(repeats=3)`: each call timed *alone* (CUDA events around one call,
               then a synchronize; on CPU the host clock). p50 = median of the per-repeat p50s.
  independent  `triton.testing.do_bench(..., return_mode="median")` on a GPU with triton: the median of
               per-call event times of many calls issued *back to back* (no synchronize between calls;
               triton also flushes L2 before each call, so its calls start cold). Without triton, or on
               CPU, `torch.utils.benchmark.Timer.blocked_autorange().median`: median over blocks of the
               mean time per call of back-to-back calls.
Agreement means the two differ by at most 10%. The exit code is always 0: this is a report.
On CPU, variants that need a GPU (fp16, CUDA graph) are replaced by their fp32 eager form (the output says so).
"""
from __future__ import annotations

import dataclasses
import inspect
import time

import numpy as np
import torch

from models import get_model
from runner import bench, env
from runner.diagnostics.table import Column, print_table
from runner.files import write_json
from runner.optimize import GRAPHING_COMPILE_MODES, prepare, strict_fp32, unsupported_reason
from variants import BenchSpec, Variant

AGREE_TOL = 0.10
# (architecture, variant): the fast paths a sweep most often picks, plus one plain eager fp32 baseline.
DEFAULT_VARIANTS: tuple[Variant, ...] = (
    Variant("resnet18_cifar", precision="fp16", memory_format="channels_last", cuda_graph=True),
    Variant("airbench_cifar", precision="fp16", memory_format="channels_last", cuda_graph=True, bn_fold=True),
    Variant("mobilenet_v3_small_cifar", precision="fp32"),
)
METHOD_NOTE = ("ours times each call alone (event/host clock around one call, then synchronize); "
               "the independent timer takes the median per-call time of many back-to-back calls "
               "(triton.testing.do_bench also flushes L2 before each call)")


def runnable_variant(v: Variant, device: torch.device) -> tuple[Variant, str]:
    """The variant itself, or (on CPU) its closest form that can run here, with a note saying what changed."""
    reason = unsupported_reason(v, device)
    if reason is None:
        return v, ""
    # Drop only the GPU-only axes: keep memory format and BN folding, which run (and matter) on CPU too.
    sub = dataclasses.replace(
        v, precision="fp32" if v.precision in ("fp16", "amp_fp16") else v.precision, cuda_graph=False,
        compile="none" if v.compile in (*GRAPHING_COMPILE_MODES, "max-autotune-no-cudagraphs") else v.compile)
    return sub, f"{v.variant_id} cannot run on {device.type} ({reason}); measured {sub.variant_id} instead"


def ours(fn, x, *, warmup: int, iters: int, repeats: int) -> dict:
    """Our bench, as the sweep runs it; p50 = median of the per-repeat p50s (as the report aggregates)."""
    samples = bench.measure(fn, x, warmup=warmup, iters=iters, repeats=repeats)
    lat = [bench.stats(s.lat_ms)["p50"] for s in samples]
    host = [bench.stats(s.host_ms)["p50"] for s in samples]
    return {"timer": samples[0].timer, "lat_p50_ms_per_repeat": lat, "host_p50_ms_per_repeat": host,
            "lat_p50_ms": float(np.median(lat)), "host_p50_ms": float(np.median(host)),
            "lat_cv_pct": bench.cv_pct(lat)}


def pick_timer(choice: str, device: torch.device) -> str:
    """'triton' only where it can work (CUDA + importable); otherwise torch's Timer."""
    if choice == "torch" or device.type != "cuda":
        return "torch"
    try:
        import triton.testing  # noqa: F401
    except ImportError:
        if choice == "triton":
            raise SystemExit("--timer triton: triton is not installed") from None
        return "torch"
    return "triton"


def triton_median_ms(fn, x, *, warmup_ms: float, rep_ms: float) -> tuple[float, str]:
    """do_bench's median, whichever API this triton has: `return_mode` (new), `quantiles` (old), else mean."""
    from triton.testing import do_bench

    params = inspect.signature(do_bench).parameters
    call = lambda: fn(x)  # noqa: E731
    with torch.inference_mode():  # same autograd state as our bench
        if "return_mode" in params:
            return float(do_bench(call, warmup=warmup_ms, rep=rep_ms, return_mode="median")), \
                "triton.testing.do_bench(return_mode='median')"
        if "quantiles" in params:
            res = do_bench(call, warmup=warmup_ms, rep=rep_ms, quantiles=[0.5])
            val = res[0] if isinstance(res, (list, tuple)) else res
            return float(val), "triton.testing.do_bench(quantiles=[0.5])"
        return float(do_bench(call, warmup=warmup_ms, rep=rep_ms)), "triton.testing.do_bench (mean: no median API)"


def torch_timer_median_ms(fn, x, *, min_run_time: float) -> tuple[float, str]:
    """torch.utils.benchmark: it synchronizes CUDA per block, not per call. Same thread count as ours
    (its default of 1 thread would make a CPU comparison meaningless)."""
    from torch.utils.benchmark import Timer

    t = Timer(stmt="fn(x)", globals={"fn": fn, "x": x}, num_threads=torch.get_num_threads())
    with torch.inference_mode():
        m = t.blocked_autorange(min_run_time=min_run_time)
    return float(m.median * 1e3), f"torch.utils.benchmark.Timer.blocked_autorange(min_run_time={min_run_time})"


def independent_ms(fn, x, timer: str, args) -> tuple[float, str]:
    if timer == "triton":
        return triton_median_ms(fn, x, warmup_ms=args.indep_warmup_ms, rep_ms=args.indep_rep_ms)
    return torch_timer_median_ms(fn, x, min_run_time=args.min_run_time)


def check_variant(v: Variant, device: torch.device, timer: str, args) -> dict:
    """Build, prepare and time one variant: ours, independent, ours again."""
    run_v, note = runnable_variant(v, device)
    torch.manual_seed(0)
    model = get_model(run_v.model, num_classes=10).eval()
    prepared = prepare(model, run_v, device)
    fn, x, compile_s = prepared.callable_for(1)
    first = ours(fn, x, warmup=args.warmup, iters=args.iters, repeats=args.repeats)
    indep, method = independent_ms(fn, x, timer, args)
    second = ours(fn, x, warmup=args.warmup, iters=args.iters, repeats=args.repeats)
    ours_p50 = float(np.mean([first["lat_p50_ms"], second["lat_p50_ms"]]))
    ratio = indep / ours_p50 if ours_p50 > 0 else float("nan")
    return {"variant_id": run_v.variant_id, "requested_variant_id": v.variant_id, "substitution": note,
            "variant": dataclasses.asdict(run_v), "compile_s": compile_s,
            "ours_first": first, "ours_second": second, "ours_p50_ms": ours_p50,
            "drift_pct": 100.0 * (second["lat_p50_ms"] - first["lat_p50_ms"]) / first["lat_p50_ms"],
            "independent_p50_ms": indep, "independent_method": method,
            "ratio": ratio, "agree": bool(abs(ratio - 1.0) <= AGREE_TOL)}


TABLE = (Column("variant", 44, "<"), Column("ours#1 ms", 9), Column("ours#2 ms", 9), Column("drift%", 7),
         Column("indep ms", 9), Column("ratio", 6), Column("agree", 5), Column("host p50 ms", 11))


def table_rows(results: list[dict]) -> list[list[str] | str]:
    rows: list[list[str] | str] = []
    for r in results:
        if "error" in r:
            rows.append(f"{r['variant_id']:<44} ERROR {r['error']}")
            continue
        host = float(np.mean([r["ours_first"]["host_p50_ms"], r["ours_second"]["host_p50_ms"]]))
        rows.append([r["variant_id"], f"{r['ours_first']['lat_p50_ms']:.4f}", f"{r['ours_second']['lat_p50_ms']:.4f}",
                     f"{r['drift_pct']:+.1f}", f"{r['independent_p50_ms']:.4f}", f"{r['ratio']:.3f}",
                     "yes" if r["agree"] else "no", f"{host:.4f}"])
    return rows


def verdict(results: list[dict]) -> str:
    bad = [r["variant_id"] + (" (error)" if "error" in r else "") for r in results if not r.get("agree")]
    if not bad:
        return f"CROSSCHECK: all agree within {AGREE_TOL:.0%}"
    return f"CROSSCHECK: DISAGREE on {', '.join(bad)} (more than {AGREE_TOL:.0%} apart)"


def selected_variants(only: str | None) -> tuple[Variant, ...]:
    if not only:
        return DEFAULT_VARIANTS
    keep = {a.strip() for a in only.split(",") if a.strip()}
    unknown = keep - {v.model for v in DEFAULT_VARIANTS}
    if unknown:
        raise SystemExit(f"--only: unknown {', '.join(sorted(unknown))}; "
                         f"choose from {', '.join(v.model for v in DEFAULT_VARIANTS)}")
    return tuple(v for v in DEFAULT_VARIANTS if v.model in keep)


def run(args) -> int:
    """`python -m runner crosscheck` (options: runner/cli.py)."""
    device = torch.device(args.device or ("cuda:0" if torch.cuda.is_available() else "cpu"))
    strict_fp32()  # fp32 rows mean true fp32, as in the sweep's bench task
    if device.type == "cuda":
        torch.cuda.set_device(device)  # do_bench times on the current device
        torch.backends.cudnn.benchmark = BenchSpec().cudnn_autotune  # as a sweep's bench task does by default
    timer = pick_timer(args.timer, device)
    print(f"crosscheck on {device} ({env.device_info(device).get('gpu_name') or 'cpu'}); independent timer: {timer}")
    print(f"note: {METHOD_NOTE}")
    results = []
    for v in selected_variants(args.only):
        try:
            r = check_variant(v, device, timer, args)
        except Exception as e:  # a report: one broken variant is a line in it, not a crash of the whole check
            r = {"variant_id": v.variant_id, "error": f"{type(e).__name__}: {e}", "agree": False}
        if r.get("substitution"):
            print(f"note: {r['substitution']}")
        results.append(r)
    print()
    print_table(TABLE, table_rows(results))
    line = verdict(results)
    print(line)
    info = env.device_info(device)
    report = {"verdict": line, "method_note": METHOD_NOTE, "agree_tolerance": AGREE_TOL,
              "independent_timer": timer, "iters": args.iters, "warmup": args.warmup, "repeats": args.repeats,
              "indep_warmup_ms": args.indep_warmup_ms, "indep_rep_ms": args.indep_rep_ms,
              "min_run_time_s": args.min_run_time, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              **env.versions(), **info, **env.nvml_state(info["gpu_uuid"]), "results": results}
    print(f"wrote {write_json(report, args.out)}")
    return 0

