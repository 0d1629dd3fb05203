"""The benchmark actor: one long-lived process per GPU that prepares, times, checks and (last) profiles.

It never trains (a process that trained times eager code ~1.5x slower: docs/investigations/h200-contention/)
and it never decides when to time: the driver calls one method at a time, in the order of
runner/engine/program.py, and only when its host's gate allows. Every method returns `(result, step)`, `step`
being when the method ran inside the actor (the driver adds when it submitted and landed it:
runner/engine/steps.py). A variant's faults become rows (skipped / error); nothing here raises into the driver
for a variant.
"""
from __future__ import annotations

import dataclasses
import json
import traceback
from typing import Any

import numpy as np
import ray
import torch

from runner import env
from runner.engine import rows as R

DYNAMO_RECOMPILE_LIMIT = 64  # an actor compiles many variants (each for two batch sizes) in one process


def measurement_flags(cudnn_autotune: bool) -> None:
    """Every process-wide flag a measurement depends on, set once: the process is the actor's alone.

    TF32 off (fp32 means fp32); cuDNN's autotuning off unless asked (its search picks different kernels in
    each process: one graphed variant read 1.15-1.24 ms over four processes, 1.144-1.146 ms with the
    heuristics, docs/investigations/h200-process-spread/); one inductor compile thread (a neighbour compiling
    with inductor's pool made eager timing on the other GPU ~1.5x slower,
    docs/investigations/h200-contention/); dynamo's recompile limit raised so that no variant silently falls
    back to eager."""
    import torch._dynamo.config as dynamo_config
    import torch._inductor.config as inductor_config

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.benchmark = cudnn_autotune and torch.cuda.is_available()
    torch.backends.cudnn.deterministic = False
    inductor_config.compile_threads = 1
    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, DYNAMO_RECOMPILE_LIMIT)


@dataclasses.dataclass
class Live:
    """A prepared variant held by the actor until its checks and profile are done."""
    variant: Any
    stage: str
    base: dict
    model: torch.nn.Module
    prepared: Any
    fn: Any
    x: torch.Tensor
    slices: list = dataclasses.field(default_factory=list)
    monitors: list = dataclasses.field(default_factory=list)
    extra: dict = dataclasses.field(default_factory=dict)
    error: str | None = None
    stop_reason: str | None = None   # why its timing stopped when `bench.target_pct` asks for more
    dropped: int = 0                 # slices of slow host rounds, timed again


class BenchWorker:
    """Ray actor (runner/engine/bench_phase.py creates it with one whole GPU, or a CPU node's CPUs)."""

    def __init__(self, sweep: str, bench, spec_hashes: dict[str, str]):
        self.created_at = R.stamp()
        self.sweep, self.bench, self.hashes = sweep, bench, spec_hashes
        use_gpu = ray.is_initialized() and bool(ray.get_gpu_ids()) and torch.cuda.is_available()
        self.device = torch.device("cuda", 0) if use_gpu else torch.device("cpu")
        if use_gpu:
            torch.cuda.set_device(0)
            torch.empty(1, device=self.device)  # the CUDA context now, not inside a first timing
        else:  # the actor holds every CPU of its node (nothing of ours runs beside it); it times on these threads
            torch.set_num_threads(bench.cpu_threads or R.task_threads())
        measurement_flags(bench.cudnn_autotune)
        self.where = {**R.place(), **env.device_info(self.device)}
        self.models: dict[str, tuple[Any, dict, Any]] = {}
        self.live: dict[str, Live] = {}
        self.floor: dict[str, Any] = {}
        self.ready_at = R.stamp()

    def _step(self, kind: str, name: str, started: str) -> dict:
        return {"kind": kind, "name": name, "start": started, "end": R.stamp(), "pid": self.where["pid"],
                "node": self.where["ray_node_id"], "gpu_uuid": self.where.get("gpu_uuid"),
                "hostname": self.where.get("hostname")}

    def hello(self) -> tuple[dict, dict]:
        """Where the actor runs; its step is the process's start (Ray's, imports, CUDA context)."""
        step = self._step("start", "actor", self.created_at)
        step["end"] = self.ready_at
        return self.where, step

    def load(self, key: str, model_spec, ckpt: dict, data) -> tuple[None, dict]:
        from runner import breakdown

        t0 = R.stamp()
        self.models[key] = (model_spec, ckpt, data)
        if self.device.type == "cuda" and not self.floor:
            self.floor = breakdown.launch_floor(self.device)  # the GPU's floor, once: the same for every row
        return None, self._step("load", key, t0)

    def prepare(self, variant, stage: str, aux: bool = False) -> tuple[tuple[list, list] | None, dict]:
        """The variant ready for batch 1 (held), or its (rows, []) when skipped or failed; `aux`: prepared
        only to be a pair's parent (its row is from an earlier invocation), so nothing to return."""
        from runner import optimize
        from runner.train import model_from_checkpoint

        t0 = R.stamp()
        model_spec, ckpt, _ = self.models[variant.model]
        base = {**R.base_row(variant, model_spec, ckpt, self.bench, self.sweep, self.hashes[variant.variant_id],
                             self.where), "started_at": t0}
        out = None
        try:
            model = model_from_checkpoint(ckpt, self.device)
            # reset=False: the actor's earlier compiled variants stay valid for their pairs and checks.
            prepared = optimize.prepare(model, variant, self.device, reset=False)
            fn, x, compile_s = prepared.callable_for(1)
            self.live[variant.variant_id] = Live(variant, stage, base, model, prepared, fn, x, extra={
                "compile_s": compile_s, "size_mb": prepared.size_mb, "params": prepared.params})
        except optimize.Unsupported as e:
            out = [{**base, "status": "skipped", "error": str(e), "repeat": 0, "finished_at": R.stamp()}], []
        except Exception as e:  # a crash, an OOM, an unsupported compile: a row that says so
            out = R.error_rows(base, f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=6)}")
        return (None if aux else out), self._step("prepare", variant.variant_id, t0)

    def time(self, ids: tuple[str, ...], s: int, stage: str) -> tuple[None, dict]:  # noqa: C901
        """Slice `s` of every repeat of `ids`, round-robin: for each repeat, each variant in turn (so a slow
        host phase of a second lands in a slice or two of several variants, not in one variant's repeats).
        Each (slice, repeat) is a round; the slices are tagged with `stage` (a parent timed again for its
        child's pairs keeps its own stage's slices for its row)."""
        from runner import bench as bench_mod
        t0 = R.stamp()
        b = self.bench
        iters = R.slice_sizes(b.iters, b.slices)[s % b.slices]  # an extra slice is as long as a planned one
        warmup = -(-b.warmup // b.slices)
        for r in range(b.repeats):
            for vid in ids:
                t = self.live.get(vid)
                if t is None or t.error:
                    continue
                try:
                    with env.GpuMonitor(self.where.get("gpu_uuid")) as gpu:
                        got = bench_mod.time_repeat(t.fn, t.x, warmup=warmup, iters=iters)
                    t.slices.append(R.Slice(stage, r, s * b.repeats + r, got.lat_ms, got.host_ms, got.timer))
                    if stage == t.stage:
                        t.monitors.append(gpu)
                except Exception as e:
                    t.error = f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=6)}"
                t.extra["timed_at"] = R.stamp()
        return None, self._step("time", f"slice {s + 1} of {len(ids)}", t0)

    def more(self, ids: tuple[str, ...], stage: str, done: int) -> tuple[tuple[tuple[str, ...], int], dict]:
        """After a stage's planned slices (`done` time steps so far): drop the rounds that were a host slow
        phase (every variant slow at once: runner/intervals.slow_rounds) and ask for slices to replace them,
        then, with `bench.target_pct`, for more until each variant's p50 interval is that narrow or its
        `bench.max_s` is spent. Returns (the ids to time again, how many more time steps), (.., 0) to stop."""
        from runner import intervals

        t0, b = R.stamp(), self.bench
        live = {vid: self.live[vid] for vid in ids if vid in self.live and not self.live[vid].error}
        own = {vid: [x for x in t.slices if x.stage == stage] for vid, t in live.items()}
        rounds = sorted({x.round for xs in own.values() for x in xs})
        p50s = {vid: [next((float(np.median(x.lat_ms)) for x in xs if x.round == r), np.nan) for r in rounds]
                for vid, xs in own.items()}
        slow = {r for r, bad in zip(rounds, intervals.slow_rounds(p50s)) if bad} if len(live) > 1 else set()
        want, steps = [], 0
        for vid, t in live.items():
            t.dropped += sum(1 for x in t.slices if x.stage == stage and x.round in slow)
            t.slices = [x for x in t.slices if not (x.stage == stage and x.round in slow)]
            kept = [float(np.median(x.lat_ms)) for x in t.slices if x.stage == stage]
            n_more = min(len(slow) * b.repeats, 2 * b.slices * b.repeats - len(kept)) if slow else 0
            if b.target_pct > 0:
                spent = sum(float(x.host_ms.sum()) for x in t.slices if x.stage == stage) / 1000.0
                extra, reason = intervals.plan_more(kept, b.target_pct, spent_s=spent, max_s=b.max_s,
                                                    max_slices=3 * b.slices * b.repeats, step=b.repeats)
                t.stop_reason = reason or t.stop_reason
                n_more = max(n_more, extra)
            if n_more > 0:
                want.append(vid)
                steps = max(steps, -(-n_more // b.repeats))
        return (tuple(want), steps), self._step("more", f"{len(want)} of {len(live)} (slow rounds {len(slow)})", t0)

    def pairs(self, pairs: tuple[tuple[str, str], ...], stage: str) -> tuple[list[dict], dict]:
        """Keep / drop evidence without timing anything again: parent and child were timed in the same rounds
        of `stage` (round-robin, one process), so each round's p50s are a paired measurement
        (runner/pairs.py decides). A pair with a side skipped or failed has no row."""
        t0 = R.stamp()
        out = []
        for pid, cid in pairs:
            a, b = self.live.get(pid), self.live.get(cid)
            if a is None or b is None or a.error or b.error:
                continue
            ra = {x.round: float(np.median(x.lat_ms)) for x in a.slices if x.stage == stage}
            rb = {x.round: float(np.median(x.lat_ms)) for x in b.slices if x.stage == stage}
            both = sorted(set(ra) & set(rb))  # the rounds that timed both sides
            pa, pb = [ra[r] for r in both], [rb[r] for r in both]
            out.append({"parent_id": pid, "variant_id": cid, "status": "ok", "error": None, "rounds": len(pb),
                        "iters_per_round": len(b.slices[0].lat_ms) if b.slices else None, "started_at": t0,
                        "parent_p50s_ms": json.dumps(pa), "child_p50s_ms": json.dumps(pb), "finished_at": R.stamp(),
                        **self.where})
        return out, self._step("pairs", stage, t0)

    def finish(self, vid: str) -> tuple[tuple[list, list] | None, dict]:
        """The variant's checks, then its rows and raw samples (the variant stays held for the profile)."""
        t0 = R.stamp()
        t = self.live.get(vid)
        if t is None:  # skipped or failed in prepare: its row has landed already
            return None, self._step("check", vid, t0)
        if t.error:
            out = R.error_rows({**t.base, "timed_at": t.extra.get("timed_at")}, t.error)
            del self.live[vid]
            return out, self._step("check", vid, t0)
        model_spec, ckpt, data = self.models[t.variant.model]
        own = [x for x in t.slices if x.stage == t.stage]
        extra = {**t.extra, **env.gpu_summary(t.monitors), **self.floor, "checks_started_at": t0,
                 "timing_order": "round-robin", "slices_timed": len(own) + t.dropped,
                 "target_pct": self.bench.target_pct or None,
                 "stop_reason": t.stop_reason or ("max_slices" if self.bench.target_pct else "planned")}
        try:
            extra.update(R.checks(t.model, t.prepared, t.fn, t.x, data, model_spec, self.bench, self.device, t.variant))
        except Exception as e:
            extra["check_error"] = f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=6)}"[:4000]
        extra["top1_drift_pts"] = (extra["top1_pct"] - ckpt["top1_pct"]) if extra.get("top1_pct") is not None else None
        error = extra.pop("check_error", None)
        base = {**t.base, **extra, "status": "error" if error else "ok", "error": error, "finished_at": R.stamp()}
        return R.latency_rows(base, own, self.bench), self._step("check", vid, t0)

    def profile(self, ids: tuple[str, ...]) -> tuple[dict[str, dict], dict]:
        """Each held variant's kernel breakdown (runner/breakdown.py). Last in an actor's life: once the
        profiler has run, every later launch of the process is slower
        (docs/investigations/h200-inflation/)."""
        from runner import breakdown

        t0 = R.stamp()
        out = {}
        for vid in ids:
            t = self.live.get(vid)
            if t is None or not t.slices:
                continue
            wall_us = 1000.0 * float(np.median([np.median(s.lat_ms) for s in t.slices]))
            out[vid] = breakdown.kernel_breakdown(t.fn, t.x, wall_us=wall_us)
        self.live.clear()
        return out, self._step("profile", f"{len(out)} variants", t0)

    def recheck_rows(self, ids: tuple[str, ...], stage: str) -> tuple[list[dict], dict]:
        """A re-check actor's rows: each variant's timing again, or the error that stopped it; then let go."""
        t0 = R.stamp()
        rows = []
        for vid in ids:
            t = self.live.pop(vid, None)
            if t is None:
                continue  # not prepared: its error came back from prepare
            if t.error or not t.slices:
                rows.append({"variant_id": vid, **self.where, "status": "error", "started_at": t.base["started_at"],
                             "error": (t.error or "not timed")[:2000], "finished_at": R.stamp()})
            else:
                own = [x for x in t.slices if x.stage == stage]
                rows.append({**R.recheck_row(vid, own, self.bench, self.where), "started_at": t.base["started_at"]})
        return rows, self._step("recheck", f"{len(rows)} variants", t0)
