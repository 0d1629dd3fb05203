"""What runs inside a Ray task: train a model; benchmark a group of variants and time its parent/child
pairs; re-time a group.

Every function here takes all it needs as arguments and returns plain rows (dicts); `runner/sweep.py`
wraps them as Ray tasks and decides when each runs. Timing tasks run in a *fresh worker process*
(`max_calls=1` in sweep.py) and set every process-wide flag they depend on themselves: measured on an
H200 host (reports/h200-contention/), a process that had trained before timed eager MobileNetV3 ~1.5x
slower (4.1-4.3 ms vs 2.7-2.9 ms), so nothing may leak from one task into the next.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import os
import traceback
from datetime import datetime, timezone
from typing import Any

import numpy as np
import ray
import torch

from runner import env, hostlock
from runner.data import Cifar
from variants import BenchSpec, TrainSpec, Variant

AGREE_IMAGES = 500        # test images the batch-1 callable is checked on against the eval callable
FOLD_REL_ERR_MAX = 1e-3   # BN folding in fp32: max |logit error| / max |logit| above this is an error
DYNAMO_RECOMPILE_LIMIT = 64  # see measurement_flags
# A prepared variant's logits vs the fp32 eager model's, relative to the logit scale: catches a broken
# fused / compiled path (wrong layout, a dropped epilogue) while allowing half-precision rounding.
PATH_REL_ERR_MAX = {"fp32": 1e-3, "fp16": 5e-2, "amp_fp16": 5e-2, "bf16": 1e-1}


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def stamp() -> str:
    """A task row's started_at / finished_at: ISO UTC like now(), to the millisecond, because the sweep's
    timeline (runner/timeline.py) draws tasks of a few seconds and sums their busy time per GPU."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def task_device() -> torch.device:
    """The GPU Ray gave this task (CUDA_VISIBLE_DEVICES holds just it), else the CPU.

    The CUDA context is created here, inside a shared hold: creating (and tearing down) a context slowed
    eager timing on the other GPU up to 2x (reports/h200-neighbour/). Its teardown is `on_gpu`'s job.
    Outside Ray, the CPU (`ray.get_gpu_ids()` alone would start a local Ray instance)."""
    if ray.is_initialized() and ray.get_gpu_ids() and torch.cuda.is_available():
        with hostlock.busy():
            torch.cuda.set_device(0)
            torch.empty(1, device="cuda:0")  # the context exists now, not at a first use outside the hold
        return torch.device("cuda", 0)
    return torch.device("cpu")


@contextlib.contextmanager
def on_gpu():
    """A task's device, and on a GPU a shared hold from the task's end to its process's end, so that the
    context's teardown never overlaps a timing (runner/hostlock.py `hold_until_exit`)."""
    device = task_device()
    try:
        yield device
    finally:
        if device.type == "cuda":
            hostlock.hold_until_exit()


@contextlib.contextmanager
def measurement_flags(cudnn_autotune: bool = False):
    """Every process-wide flag a measurement depends on, set explicitly and restored afterwards.

    TF32 off (fp32 means fp32); cuDNN's autotuning off unless the sweep's `bench.cudnn_autotune` asks for
    it: its search picks different kernels in each fresh process, so one graphed variant read 1.15-1.24 ms
    in four processes and its in-sweep row missed its re-check by 7%, while cuDNN's heuristics gave the
    same kernels and 1.144-1.146 ms in four (reports/h200-process-spread/). Determinism off. One inductor
    compile thread: a neighbour compiling with inductor's pool of workers made eager timing on the *other*
    GPU ~1.5x slower (reports/h200-contention/). Dynamo's recompile limit raised: a group task compiles several variants of one model class (and each for two
    batch sizes) in one process, and past the default limit dynamo silently runs the model eagerly.
    """
    import torch._dynamo.config as dynamo_config
    import torch._inductor.config as inductor_config

    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.get_float32_matmul_precision(), torch.backends.cudnn.benchmark,
             torch.backends.cudnn.deterministic, inductor_config.compile_threads, dynamo_config.recompile_limit)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.benchmark = cudnn_autotune and torch.cuda.is_available()
    torch.backends.cudnn.deterministic = False
    inductor_config.compile_threads = 1
    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, DYNAMO_RECOMPILE_LIMIT)
    try:
        yield
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, precision,
         torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
         inductor_config.compile_threads, dynamo_config.recompile_limit) = saved
        torch.set_float32_matmul_precision(precision)


def place() -> dict[str, Any]:
    """Where a row was measured: versions, code digest, Ray node, and its worker's start (worker_setup)."""
    from runner import worker_setup

    node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    return {**env.versions(), "code_digest": env.code_digest(), "ray_node_id": node, "pid": os.getpid(),
            "worker_started_at": worker_setup.times.get("worker_started_at"),
            "worker_ready_at": worker_setup.times.get("worker_ready_at")}


# ---- training ------------------------------------------------------------------------------------------

def train_job(spec: TrainSpec, data: Cifar, teacher_ckpt: dict | None, sweep: str) -> dict:
    from runner.train import train

    started = stamp()
    with on_gpu() as device:
        with hostlock.busy():  # never beside a timing on this host (another sweep's, say)
            ckpt = train(spec, data, device, teacher_ckpt=teacher_ckpt)
        ckpt["rows"] = training_rows(spec, ckpt, device, sweep, started)
    return ckpt


def training_rows(spec: TrainSpec, ckpt: dict, device: torch.device, sweep: str,
                  started: str | None = None) -> list[dict]:
    base = {"sweep": sweep, "model": spec.key, "arch": spec.arch, "teacher": spec.teacher, "status": "ok",
            "epochs": ckpt["epochs"], "seed": spec.seed, "spec_hash": spec.spec_hash,
            "recipe_json": ckpt["recipe_json"], "data_source": ckpt["data_source"], "started_at": started,
            "finished_at": stamp(), **env.device_info(device)}
    vers = place()
    base.update({k: vers[k] for k in ("torch_version", "git_commit", "ray_node_id", "pid", "worker_started_at",
                                      "worker_ready_at")})
    rows = [{**base, **e} for e in ckpt["log"]]
    # The last row is the model's summary: fp32 accuracy of the final weights and the whole run's speed.
    rows.append({**base, "epoch": ckpt["epochs"], "top1_pct": ckpt["top1_pct"], "train_s": ckpt["train_s"],
                 "train_img_per_s": ckpt["train_img_per_s"]})
    return rows


# ---- the benchmark of a group of variants ---------------------------------------------------------------
# One task measures a *group*: the variants of one model that share precision and whether they compile
# (runner/phases.py groups them), in one fresh process on one GPU: all prepared, then timed in rounds (each
# round one repeat of every variant: runner/round_robin.py says why), then the group's parent/child pairs
# with the callables it already holds. Why groups: each fresh process costs seconds (Ray worker start, torch
# import, CUDA context, checkpoint and data) that dwarf the ~0.4 s a graphed variant takes to time. Each
# variant is still timed with nothing else on its GPU and the host to itself (phases, runner/hostlock.py);
# the re-check phase times the same groups in *reverse* order in other processes, so a variant whose number
# depended on what ran before it in the process would disagree there.
#
# Within the task, every timing comes before every diagnostic. Measured on an H200 (reports/h200-inflation/):
# once torch.profiler has run in a process, every later kernel launch of it is slower (CUPTI staying
# subscribed, most likely); B1 timed 2.57 ms before a kernel breakdown and 3.52 ms after it (+37%), its
# fp16 CUDA graph +11%, to the end of the process. With breakdown and checks after each variant, every
# variant but a group's first was timed so (the 2x H200 sweep at 42d5e65: 44 of 48 rows 1.02-2.1x their
# re-check).

@dataclasses.dataclass(frozen=True)
class Later:
    """A task argument fetched by the task itself, inside a shared host hold. Ray resolves a bare ObjectRef
    argument before the task starts, outside any hold, so unpickling a 180 MB dataset would overlap another
    task's timing; a reference wrapped in an object is passed through as it is."""
    ref: Any


def later(arg: Any) -> Any:
    """An ObjectRef wrapped so the task fetches it (`fetch`); any other value as it is."""
    return Later(arg) if isinstance(arg, ray.ObjectRef) else arg


def fetch(arg: Any) -> Any:
    return ray.get(arg.ref) if isinstance(arg, Later) else arg


@dataclasses.dataclass
class Timed:
    """A variant prepared (its `samples` empty until the rounds time it), then timed and waiting for its
    diagnostics and checks (bench_job's third pass)."""
    variant: Variant
    base: dict
    model: torch.nn.Module
    prepared: Any
    fn: Any
    x: torch.Tensor
    samples: list
    extra: dict


def bench_job(group: list[Variant], pair_list: list[tuple[Variant, Variant]], model_spec: TrainSpec,
              ckpt: dict | Later, data: Cifar | Later, bench: BenchSpec, sweep: str, hashes: dict[str, str]) -> dict:
    """Benchmark every variant of `group` and time `pair_list` interleaved; never raises for a variant's
    faults. Returns {"bench": {variant_id: (rows, raw samples)}, "pairs": [pair row, ...]} (no row for a
    pair with a side in this group that did not end ok).

    Three passes: (1) every variant prepared, then timed in rounds (round r times repeat r of each variant,
    runner/round_robin.py says why), (2) the pairs timed, (3) each variant's kernel
    breakdown (the profiler) and checks. Latency first, so a good latency is kept even when the accuracy
    pass fails (`eval_error`), and no timing ever follows a profile (the comment above says why).
    """
    with on_gpu() as device:
        return _bench_all(group, pair_list, model_spec, ckpt, data, bench, sweep, hashes, device)


def _bench_all(group, pair_list, model_spec, ckpt, data, bench, sweep, hashes, device) -> dict:
    from runner import breakdown

    with hostlock.busy():
        ckpt, data = fetch(ckpt), fetch(data)
    with measurement_flags(bench.cudnn_autotune):
        floor: dict[str, Any] = {}
        if device.type == "cuda":
            with hostlock.timing():
                floor = breakdown.launch_floor(device)  # the GPU's floor, once per process: the same for every row
        ready = {v.variant_id: _prepare_one(v, model_spec, ckpt, bench, sweep, hashes[v.variant_id], device)
                 for v in group}
        timed = _time_group(ready, bench, device, floor)
        held = {vid: (t.fn, t.x) for vid, t in timed.items() if isinstance(t, Timed)}
        # A pair needs both sides timed: one of this group that was skipped or failed has no pair.
        pairs_timed = [(p, c, _pair_one(p, c, ckpt, bench, device, held)) for p, c in pair_list
                       if not ({p.variant_id, c.variant_id} & set(timed)) - set(held)]
        out = {vid: _finish_one(t, ckpt, data, model_spec, bench, device) if isinstance(t, Timed) else t
               for vid, t in timed.items()}
        with hostlock.busy():  # freeing graphs and memory is driver work too (reports/h200-neighbour/)
            ready = timed = held = None  # `ready` still holds the variants whose timing failed
            gc.collect()
    # ... and ended ok: a side that a check turned into an error row drops its pairs.
    bad = {vid for vid, (rows, _) in out.items() if rows[0]["status"] != "ok"}
    return {"bench": out, "pairs": [row for p, c, row in pairs_timed if not {p.variant_id, c.variant_id} & bad]}


def _prepare_one(variant, model_spec, ckpt, bench, sweep, spec_hash, device) -> Timed | tuple[list, list]:
    """Prepare one variant for batch 1: a Timed without samples, or the (rows, []) of a skipped or failed one."""
    from runner import optimize
    from runner.train import model_from_checkpoint

    base = {**_bench_base(variant, model_spec, ckpt, bench, sweep, spec_hash, device), "started_at": stamp()}
    try:
        with hostlock.busy():  # preparing, compiling and capturing overlap other tasks' work, never a timing
            model = model_from_checkpoint(ckpt, device)
            # reset=False: the group's earlier compiled variants stay valid for its rounds and pairs (a fresh
            # process has no other leftovers; measurement_flags raises dynamo's recompile limit so they never
            # fall back).
            prepared = optimize.prepare(model, variant, device, reset=False)  # Unsupported: a skipped row
            fn, x, compile_s = prepared.callable_for(1)
    except optimize.Unsupported as e:
        return [{**base, "status": "skipped", "error": str(e), "repeat": 0, "finished_at": stamp()}], []
    except Exception as e:  # a crash, an OOM, an unsupported compile: a row that says so, and the group goes on
        return _error_rows(base, f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=6)}")
    extra = {"compile_s": compile_s, "size_mb": prepared.size_mb, "params": prepared.params}
    return Timed(variant, base, model, prepared, fn, x, [], extra)


def _time_group(ready: dict, bench, device, floor) -> dict[str, Timed | tuple[list, list]]:
    """Time the group's prepared variants at batch 1, repeats round-robin (runner/round_robin.py): each
    Timed gets its samples and timing columns, or becomes an error row if a repeat raised."""
    from runner import round_robin

    prepared = {vid: t for vid, t in ready.items() if isinstance(t, Timed)}
    done = round_robin.time_round_robin({vid: (t.fn, t.x) for vid, t in prepared.items()}, bench,
                                        env.device_info(device)["gpu_uuid"], stamp)
    out = dict(ready)
    for vid, t in prepared.items():
        r = done[vid]
        out[vid] = _error_rows(t.base, r.error, r.timed_at) if r.error else dataclasses.replace(
            t, samples=r.samples, extra={**t.extra, "host_wait_s": r.host_wait_s, "timed_at": r.timed_at,
                                         "timing_order": "round-robin", "timing_slices": bench.slices,
                                         **r.gpu(), **floor})
    return out


def _error_rows(base: dict, error: str, finished_at: str | None = None) -> tuple[list, list]:
    return [{**base, "status": "error", "error": error[:4000], "repeat": 0, "finished_at": finished_at or stamp()}], []


def _finish_one(t: Timed, ckpt, data, model_spec, bench, device) -> tuple[list[dict], list[dict]]:
    """The kernel breakdown and the checks of a timed variant, then its rows. A check that fails makes an
    error row that keeps its latency; nothing here raises."""
    from runner import bench as bench_mod
    from runner import breakdown, round_robin

    extra = {**t.extra, "checks_started_at": stamp()}
    try:
        with hostlock.busy():
            # The wall time per forward is the timing's own p50: a re-measure here would run after another
            # variant's profile in this process, and be inflated by it.
            wall_us = 1000.0 * float(np.median([np.median(s.lat_ms) for s in t.samples]))
            extra.update(breakdown.kernel_breakdown(t.fn, t.x, wall_us=wall_us))
            extra.update(_checks(t.model, t.prepared, t.fn, t.x, data, model_spec, bench, device, t.variant))
    except Exception as e:
        extra["check_error"] = f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=6)}"[:4000]
    extra["top1_drift_pts"] = (extra["top1_pct"] - ckpt["top1_pct"]) if extra.get("top1_pct") is not None else None
    status, error = ("error", extra["check_error"]) if extra.get("check_error") else ("ok", None)
    base = {**t.base, "status": status, "error": error, "finished_at": stamp(),
            **{k: v for k, v in extra.items() if k != "check_error"}}
    rows = [{**base, **r, "slice_p50s_ms": json.dumps(round_robin.slice_p50s(s.lat_ms, bench.slices))}
            for r, s in zip(bench_mod.repeat_rows(t.samples, bench.cv_flag_pct), t.samples)]
    raw = [{"variant_id": t.variant.variant_id, "repeat": r, "iter": i, "lat_ms": float(a), "host_ms": float(h)}
           for r, s in enumerate(t.samples) for i, (a, h) in enumerate(zip(s.lat_ms, s.host_ms))]
    return rows, raw


def _bench_base(variant, model_spec, ckpt, bench, sweep, spec_hash, device) -> dict:
    return {"sweep": sweep, "variant_id": variant.variant_id, "brief_id": variant.brief_id,
            "label": variant.label, "model": variant.model, "arch": model_spec.arch, **variant.axes(),
            "teacher": model_spec.teacher, "seed": model_spec.seed, "spec_hash": spec_hash,
            "data_source": ckpt["data_source"], "warmup": bench.warmup, "iters": bench.iters,
            "config_json": json.dumps({"variant": dataclasses.asdict(variant),
                                       "model": dataclasses.asdict(model_spec),
                                       "bench": dataclasses.asdict(bench)}, default=str, sort_keys=True),
            **place(), **env.device_info(device)}

def _checks(model, prepared, fn1, x1, data, model_spec, bench, device, variant) -> dict[str, Any]:
    """Accuracy through the eval callable, and the three numerical checks, each its own column.

    - fold: the folded fp32 model against the unfolded one (`fold_max_rel_err`, `folded_layers`);
    - path: the prepared eval callable against the fp32 eager model (`path_max_rel_err`);
    - batch 1: the timed callable's predictions against the eval callable's (`b1_agree_pct`).
    An accuracy pass that fails leaves the latency standing (`eval_error`).
    """
    from runner import evaluate, optimize

    test = data.subset(0, model_spec.recipe.test_subset)
    n_check = min(AGREE_IMAGES, len(test.test_y))
    check_x = evaluate.normalized(test.test_x[:n_check], device)
    out: dict[str, Any] = {"folded_layers": prepared.folded_layers}
    problems = []
    with torch.inference_mode():
        ref = optimize.with_tta(model.float(), variant.tta)(check_x.float()).float()  # same function, fp32
        if variant.bn_fold:
            err = optimize.fold_error(model, check_x)
            out["fold_max_rel_err"] = err
            if err > FOLD_REL_ERR_MAX:
                problems.append(f"BN folding changed the logits by {err:.2e} of their scale "
                                f"(bound {FOLD_REL_ERR_MAX:.0e})")
    try:
        eval_bs = min(bench.eval_batch_size, len(test.test_y))
        eval_fn, _, _ = prepared.callable_for(eval_bs)
        logits = evaluate.predict(eval_fn, test.test_x, device, eval_bs, prepared.cast_input)
        out["top1_pct"] = evaluate.top1(logits, test.test_y)
        path_err = evaluate.max_rel_err(logits[:n_check], ref.cpu())
        out["path_max_rel_err"] = path_err
        bound = PATH_REL_ERR_MAX.get(variant.precision, 1e-1)
        if path_err > bound:
            problems.append(f"logits differ from the fp32 eager model's by {path_err:.2e} of their scale "
                            f"(bound {bound:.0e} for {variant.precision})")
        b1 = evaluate.predict_one_by_one(fn1, x1, test.test_x[:n_check], device, prepared.cast_input)
        out["b1_agree_pct"] = 100.0 * float((b1.argmax(1) == logits[:n_check].argmax(1)).float().mean())
    except Exception as e:
        out["eval_error"] = f"{type(e).__name__}: {e}"[:2000]
    if problems:
        out["check_error"] = "; ".join(problems)
    return out


# ---- re-check and paired timing (no accuracy: these only time) -----------------------------------------

def _prepared_callable(variant: Variant, ckpt: dict, device: torch.device):
    """reset=False: the callables the task prepared before stay valid for its rounds and pairs (a task's
    process is fresh, so there is nothing else to reset)."""
    from runner import optimize
    from runner.train import model_from_checkpoint

    prepared = optimize.prepare(model_from_checkpoint(ckpt, device), variant, device, reset=False)
    fn, x, _ = prepared.callable_for(1)
    return fn, x


def recheck_job(group: list[Variant], ckpt: dict | Later, bench: BenchSpec) -> list[dict]:
    """Time each variant of a group again with the sweep's protocol, in the *reverse* of the bench task's
    order: the in-sweep numbers' witness. Like the bench task, all are prepared first, then timed
    `bench.repeats` times round-robin (runner/round_robin.py), so a few seconds of a slow host phase hit at
    most one repeat of a variant; the row's statistics are medians over repeats, as the report's are."""
    from runner import round_robin

    with on_gpu() as device:
        with hostlock.busy():
            ckpt = fetch(ckpt)
        order = list(reversed(group))
        info = env.device_info(device)
        rows = {v.variant_id: {"variant_id": v.variant_id, **place(), **info} for v in order}
        held: dict[str, tuple] = {}
        try:
            with measurement_flags(bench.cudnn_autotune):
                for v in order:
                    rows[v.variant_id]["started_at"] = stamp()
                    _prepare_recheck(v, ckpt, device, held, rows[v.variant_id])
                done = round_robin.time_round_robin(held, bench, info["gpu_uuid"], stamp)
        finally:
            with hostlock.busy():  # freeing GPU memory is driver work too (reports/h200-neighbour/)
                held = None
                if device.type == "cuda":
                    torch.cuda.empty_cache()
        return [_recheck_row(rows[v.variant_id], done.get(v.variant_id), bench) for v in order]


def _prepare_recheck(variant: Variant, ckpt: dict, device: torch.device, held: dict, row: dict) -> None:
    """The variant's batch-1 callable into `held`, or its error into `row`."""
    try:
        with hostlock.busy():
            held[variant.variant_id] = _prepared_callable(variant, ckpt, device)
    except Exception as e:
        row.update(status="error", error=f"{type(e).__name__}: {e}"[:2000], finished_at=stamp())


def _recheck_row(row: dict, r: Any, bench: BenchSpec) -> dict:
    """A re-check row from the variant's round_robin.Repeats `r`: the median over repeats of each repeat's
    statistic, as runner/results.summarize makes the in-sweep p50 the agreement table compares with; or the
    error of a repeat, or (`r` None) the error `row` already holds of a variant that was not prepared."""
    from runner import bench as bench_mod

    if row.get("status") == "error":
        return row
    if r.error:
        return {**row, "status": "error", "error": r.error[:2000], "finished_at": r.timed_at}
    reps = bench_mod.repeat_rows(r.samples, bench.cv_flag_pct)
    med = {c: float(np.median([x[c] for x in reps])) for c in ("lat_p50_ms", "lat_p95_ms", "host_p50_ms")}
    return {**row, "status": "ok", "error": None, "finished_at": r.timed_at, "recheck_p50_ms": med["lat_p50_ms"],
            "recheck_p95_ms": med["lat_p95_ms"], "recheck_host_p50_ms": med["host_p50_ms"],
            "recheck_repeats": len(reps), "recheck_cv_pct": reps[0]["lat_cv_pct"], "recheck_slices": bench.slices}


def _pair_one(parent: Variant, child: Variant, ckpt: dict, bench: BenchSpec, device: torch.device,
              held: dict[str, tuple]) -> dict:
    """Parent and child timed interleaved (A B B A A B ...), `bench.pair_rounds` times, in this process.

    Drift between minutes, GPUs and processes then hits both alike; the paired differences' spread is
    the noise the keep / drop decision is judged against (runner/pairs.py). A side the group already
    benchmarked is reused as it was timed; the other (a parent from another group) is prepared here.
    """
    from runner import pairs

    rounds = bench.pair_rounds
    row = {"parent_id": parent.variant_id, "variant_id": child.variant_id, "started_at": stamp(), **place(),
           **env.device_info(device)}
    try:
        with measurement_flags(bench.cudnn_autotune):
            with hostlock.busy():
                a = held.get(parent.variant_id) or _prepared_callable(parent, ckpt, device)
                b = held.get(child.variant_id) or _prepared_callable(child, ckpt, device)
            per_side = max(20, bench.iters // rounds)
            with hostlock.timing():
                pa, pb = pairs.interleaved(a, b, rounds=rounds, iters=per_side, warmup=max(10, bench.warmup // 10))
    except Exception as e:
        return {**row, "status": "error", "error": f"{type(e).__name__}: {e}"[:2000], "finished_at": stamp()}
    finally:
        with hostlock.busy():  # a parent prepared here is freed inside a hold (see _bench_all)
            a = b = None
    return {**row, "status": "ok", "error": None, "finished_at": stamp(), "rounds": rounds, "iters_per_round": per_side,
            "parent_p50s_ms": json.dumps(pa), "child_p50s_ms": json.dumps(pb)}
