"""The rows a benchmark actor returns: the base every row of a variant shares, its per-repeat latency rows
and raw samples, a re-check row, and the checks behind `status` (accuracy, BN fold, path, batch-1 agreement).

Bounds of the checks: a row over one is an error row that keeps its latency (the report says why).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from datetime import datetime, timezone
from typing import Any

import numpy as np
import ray
import torch

from runner import env

AGREE_IMAGES = 500        # test images the batch-1 callable is checked on against the eval callable
# ... on a CPU: each image is one batch-1 call (ResNet-18 ~41 ms on 2 cores, so 500 were 20 s of the quick
# start) and the faults the check is for (a static input buffer not refilled, a graph fed stale input) change
# most predictions, so 100 images show them as surely; on a GPU a call is ~1 ms and 500 cost nothing.
AGREE_IMAGES_CPU = 100
FOLD_REL_ERR_MAX = 1e-3   # BN folding in fp32: max |logit error| / max |logit| above this is an error
# A prepared variant's logits vs the fp32 eager model's, relative to the logit scale: catches a broken
# fused / compiled path (wrong layout, a dropped epilogue) while allowing half-precision rounding.
PATH_REL_ERR_MAX = {"fp32": 1e-3, "fp16": 5e-2, "amp_fp16": 5e-2, "bf16": 1e-1}
# The timed batch-1 callable's predicted classes vs the eval callable's: below this the timed path gives other
# answers than the one whose accuracy the row reports (every published run read 100%, but one fused row 97.6%:
# reports/h200-fused-narrow/), so its latency is not the latency of that model and the row is an error.
B1_AGREE_MIN_PCT = 99.0


def stamp() -> str:
    """ISO UTC to the millisecond: rows' and steps' clock (the timeline draws steps of a fraction of a second)."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def place() -> dict[str, Any]:
    """Where a row was measured: versions, code digest, Ray node and process."""
    node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    return {**env.versions(), "code_digest": env.code_digest(), "ray_node_id": node, "pid": os.getpid()}


def task_threads() -> int:
    """torch threads for the running Ray task or actor on a CPU: one per whole CPU Ray gave it (at least one);
    outside Ray, torch's current count."""
    if not ray.is_initialized():
        return torch.get_num_threads()
    return max(1, math.floor(ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)))


def base_row(variant, model_spec, ckpt: dict, bench, sweep: str, spec_hash: str, where: dict) -> dict:
    return {"sweep": sweep, "variant_id": variant.variant_id, "brief_id": variant.brief_id,
            "label": variant.label, "model": variant.model, "arch": model_spec.arch, **variant.axes(),
            "teacher": model_spec.teacher, "seed": model_spec.seed, "spec_hash": spec_hash,
            "data_source": ckpt["data_source"], "warmup": bench.warmup, "iters": bench.iters,
            "config_json": json.dumps({"variant": dataclasses.asdict(variant), "model": dataclasses.asdict(model_spec),
                                       "bench": dataclasses.asdict(bench)}, default=str, sort_keys=True),
            **where}


def error_rows(base: dict, error: str) -> tuple[list[dict], list[dict]]:
    return [{**base, "status": "error", "error": error[:4000], "repeat": 0, "finished_at": stamp()}], []


def slice_sizes(iters: int, slices: int) -> list[int]:
    """Timed calls per slice: `iters` shared out as evenly as possible, the larger slices first."""
    return [iters // slices + (1 if i < iters % slices else 0) for i in range(slices)]


@dataclasses.dataclass
class Slice:
    """One slice of one repeat, timed in `stage`: its calls each timed alone (runner/bench.py)."""
    stage: str
    repeat: int
    round: int
    lat_ms: np.ndarray
    host_ms: np.ndarray
    timer: str


def repeats_of(slices: list[Slice], repeats: int):
    """The variant's repeats (runner.bench.Samples), each its slices joined in time order."""
    from runner.bench import Samples

    out = []
    for r in range(repeats):
        own = [s for s in slices if s.repeat == r]
        if own:
            out.append(Samples(np.concatenate([s.lat_ms for s in own]), np.concatenate([s.host_ms for s in own]),
                               own[0].timer))
    return out


def latency_rows(base: dict, slices: list[Slice], bench) -> tuple[list[dict], list[dict]]:
    """One row per repeat (lat_* / host_* statistics, CV over repeats, each slice's p50 in time order) and the
    raw samples, one per timed call."""
    from runner import bench as bench_mod

    reps = repeats_of(slices, bench.repeats)
    per_slice = {r: [float(np.median(s.lat_ms)) for s in slices if s.repeat == r] for r in range(bench.repeats)}
    spread = _intervals(slices)  # per variant: the same on every repeat row
    rows = [{**base, **r, **spread, "slice_p50s_ms": json.dumps(per_slice[r["repeat"]]),
             "timing_slices": len(per_slice[r["repeat"]])} for r in bench_mod.repeat_rows(reps, bench.cv_flag_pct)]
    raw = [{"variant_id": base["variant_id"], "repeat": r, "iter": i, "lat_ms": float(a), "host_ms": float(h)}
           for r, s in enumerate(reps) for i, (a, h) in enumerate(zip(s.lat_ms, s.host_ms))]
    return rows, raw


def _intervals(slices: list[Slice]) -> dict:
    """The 95% intervals of the row's statistics across slices (runner/intervals.py)."""
    from runner import intervals

    return intervals.interval_columns([s.lat_ms for s in slices], [s.host_ms for s in slices])


def _p50_interval(slices: list[Slice]) -> tuple[float, float]:
    from runner import intervals

    ci = intervals.unit_ci([float(np.median(s.lat_ms)) for s in slices])
    return (ci[0], ci[1]) if ci.ok else (float("nan"), float("nan"))


def recheck_row(variant_id: str, slices: list[Slice], bench, where: dict) -> dict:
    """The median over repeats of each repeat's statistic, as runner/results.summarize makes the in-sweep
    p50 the agreement table compares with."""
    from runner import bench as bench_mod

    reps = bench_mod.repeat_rows(repeats_of(slices, bench.repeats), bench.cv_flag_pct)
    med = {c: float(np.median([x[c] for x in reps])) for c in ("lat_p50_ms", "lat_p95_ms", "host_p50_ms")}
    ci = _p50_interval(slices)
    return {"variant_id": variant_id, **where, "status": "ok", "error": None, "finished_at": stamp(),
            "recheck_p50_lo_ms": ci[0], "recheck_p50_hi_ms": ci[1],
            "recheck_p50_ms": med["lat_p50_ms"], "recheck_p95_ms": med["lat_p95_ms"],
            "recheck_host_p50_ms": med["host_p50_ms"], "recheck_repeats": len(reps),
            "recheck_cv_pct": reps[0]["lat_cv_pct"], "recheck_slices": bench.slices}


def checks(model, prepared, fn1, x1, data, model_spec, bench, device, variant) -> dict[str, Any]:
    """Accuracy through the eval callable, and the three numerical checks, each its own column:

    - fold: the folded fp32 model against the unfolded one (`fold_max_rel_err`, `folded_layers`);
    - path: the prepared eval callable against the fp32 eager model (`path_max_rel_err`);
    - batch 1: the timed callable's predictions against the eval callable's (`b1_agree_pct`).
    An accuracy pass that fails leaves the latency standing (`eval_error`); a bound broken sets `check_error`.
    """
    from runner import evaluate, optimize

    test = data.subset(0, model_spec.recipe.test_subset)
    n_check = min(AGREE_IMAGES if device.type == "cuda" else AGREE_IMAGES_CPU, len(test.test_y))
    check_x = evaluate.normalized(test.test_x[:n_check], device)
    out: dict[str, Any] = {"folded_layers": prepared.folded_layers}
    problems = []
    with torch.inference_mode():
        ref = optimize.with_tta(model.float(), variant.tta)(check_x.float()).float()  # same function, fp32
        if variant.bn_fold:
            err = optimize.fold_error(model, check_x)
            out["fold_max_rel_err"] = err
            if err > FOLD_REL_ERR_MAX:
                problems.append(f"BN folding changed the logits by {err:.2e} of their scale (bound {FOLD_REL_ERR_MAX:.0e})")
    try:
        eval_bs = min(bench.eval_batch_size, len(test.test_y))
        # On a CPU no warm-up calls: there is no graph to capture or cuDNN search to run (a compile happens on
        # the first batch anyway), and each would be a whole batch (ResNet-18, 3 x 200 images: 25 s).
        on_cpu = device.type != "cuda"
        eval_fn, _, _ = prepared.callable_for(eval_bs, warm_calls=0) if on_cpu else prepared.callable_for(eval_bs)
        logits = evaluate.predict(eval_fn, test.test_x, device, eval_bs, prepared.cast_input)
        out["top1_pct"] = evaluate.top1(logits, test.test_y)
        out["path_max_rel_err"] = path_err = evaluate.max_rel_err(logits[:n_check], ref.cpu())
        bound = PATH_REL_ERR_MAX.get(variant.precision, 1e-1)
        if path_err > bound:
            problems.append(f"logits differ from the fp32 eager model's by {path_err:.2e} of their scale "
                            f"(bound {bound:.0e} for {variant.precision})")
        b1 = evaluate.predict_one_by_one(fn1, x1, test.test_x[:n_check], device, prepared.cast_input)
        out["b1_agree_pct"] = agree = 100.0 * float((b1.argmax(1) == logits[:n_check].argmax(1)).float().mean())
        if agree < B1_AGREE_MIN_PCT:
            problems.append(f"the timed batch-1 path predicts other classes than the evaluation on {100 - agree:.1f}% "
                            f"of {n_check} test images (bound {100 - B1_AGREE_MIN_PCT:.0f}%)")
    except Exception as e:
        out["eval_error"] = f"{type(e).__name__}: {e}"[:2000]
    if problems:
        out["check_error"] = "; ".join(problems)
    return out
