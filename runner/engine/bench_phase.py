"""The bench and re-check phases: one benchmark actor per GPU, the driver as the timing barrier.

    bench     actors load the trained models, then run their programs (runner/engine/program.py):
              prepare, time in slices, pairs, checks, profile; rows land as each variant's checks end
    twin      new actor processes time every measured variant again, in reverse order: the second process
              whose gap from the first gives each interval its between-process part (runner/intervals.py)
    re-check  new actor processes again (the models on other GPUs when there are several), the same way:
              the in-sweep numbers' independent witness, and the test of the intervals

The driver submits one step per actor at a time, when the host's gate allows (a timing runs with nothing
else of ours on its host), waits for any step to land, writes what it returned, and goes on. It defers its
own writing while a timing runs on its machine. An actor that dies leaves an error row for each variant it
had not landed; past the `--stop-after` deadline no actor starts a new stage.
"""
from __future__ import annotations

import dataclasses
from collections import deque
from pathlib import Path
from typing import Any, Callable

import ray

from runner import guard, results
from runner.engine import program
from runner.engine.control import Deadline, Progress, Stopped, wait_one
from runner.engine.steps import StepLog, now
from runner.engine.worker import BenchWorker
from runner.results import PAIR_SCHEMA, RECHECK_SCHEMA, RESULT_SCHEMA, SAMPLES_SCHEMA

Actor = ray.remote(BenchWorker)
MAX_EXTRA = 3  # a stage's time steps stop at this many times its planned slices, whatever `more` asks


@dataclasses.dataclass
class Phase:
    """What one phase runs: `models` maps model key -> (TrainSpec, checkpoint ref), `variants` in the sweep's
    order, `pairs` (parent, child) to time, `hashes` variant id -> spec hash."""
    spec: Any
    run_dir: Path
    variants: list
    models: dict[str, tuple[Any, Any]]
    data_ref: Any
    hashes: dict[str, str]
    actor_opts: dict
    n_actors: int
    progress: Progress
    steps: StepLog
    deadline: Deadline = Deadline()
    pairs: list = dataclasses.field(default_factory=list)
    witness: str = ""   # "" the bench phase; "twin" or "recheck": a timing-only phase whose rows go to <witness>s/
    log: Callable[[str], None] = print

    @property
    def recheck(self) -> bool:
        return bool(self.witness)


@dataclasses.dataclass
class Running:
    name: str
    handle: Any
    ids: set[str]
    todo: deque
    host: str = ""
    stage: str | None = None
    inflight: tuple | None = None   # (ref, step, submitted)
    dead: bool = False


def bench_cost(spec, v) -> float:  # noqa: D401
    """Expected relative length of a variant's timing: its per-call latency (graphed calls ~5x shorter)."""
    from runner.engine.training import arch_cost

    graphed = v.cuda_graph or v.compile != "none"
    return arch_cost(spec.model(v.model).arch)[1] * (0.2 if graphed else 1.0) + (30.0 if v.compile != "none" else 0.0)


def run(ph: Phase) -> None:
    """Run the phase to its end (or the deadline); raises Stopped when stages were left unstarted."""
    if not ph.variants:
        return
    costs: dict[str, float] = {}
    for v in ph.variants:
        costs[v.model] = costs.get(v.model, 0.0) + bench_cost(ph.spec, v)
    groups = program.assign(costs, min(ph.n_actors, len(costs)), rotate=1 if ph.recheck else 0)
    actors = []
    for i, models in enumerate(g for g in groups if g):
        vs = [v for v in ph.variants if v.model in models]
        prs = [(a, b) for a, b in ph.pairs if b.model in models]
        steps = program.bench_program(models, vs, prs, ph.spec.bench.slices, recheck=ph.recheck)
        kind = ph.witness or "bench"
        handle = Actor.options(name=f"{kind}:{i}", **ph.actor_opts).remote(ph.spec.name, ph.spec.bench, ph.hashes)
        actors.append(Running(f"{kind}:{i}", handle, {v.variant_id for v in vs}, deque([program.Step("hello")] + steps)))
    ph.log(f"-- {ph.witness or 'bench'} phase: {len(ph.variants)} variant(s) on {len(actors)} "
           f"actor(s): " + "; ".join(f"{a.name} {', '.join(g)}" for a, g in zip(actors, (g for g in groups if g))))
    _drive(ph, actors)


def _drive(ph: Phase, actors: list[Running]) -> None:
    gate, driver_host = program.HostGate(), ray.get_runtime_context().get_node_id()
    state = {"rows": {}, "left": 0}
    deferred: list[tuple] = []
    try:
        while True:
            gate.new_round()
            idle = [a for a in actors if a.inflight is None and a.todo and not a.dead]
            for a in sorted(idle, key=lambda a: not a.todo[0].timing):  # timings ask first (writer preference)
                _maybe_submit(ph, a, gate, state)
            busy = [a for a in actors if a.inflight is not None]
            if not busy:
                break
            ready = [wait_one([a.inflight[0] for a in busy], ph.progress, lambda: _running(busy))]
            a = next(x for x in busy if x.inflight[0] == ready[0])
            ref, step, submitted = a.inflight
            a.inflight = None
            gate.ended(a.host, step.kind)
            if step.kind in ("hello", "more"):  # they decide the actor's next steps: landed at once (tiny)
                _land(ph, a, ref, step, submitted, state)
                continue
            deferred.append((a, ref, step, submitted))
            if not gate.timing_on(driver_host):  # landing is host work: never beside a timing on this machine
                while deferred:
                    _land(ph, *deferred.pop(0), state)
    finally:
        for item in deferred:
            _land(ph, *item, state)
        for a in actors:
            ray.kill(a.handle, no_restart=True)
    if state["left"]:
        raise Stopped(ph.witness or "bench", state["left"])


def _maybe_submit(ph: Phase, a: Running, gate: program.HostGate, state: dict) -> None:
    step = a.todo[0]
    if step.kind == "prepare" and step.stage != a.stage:
        a.stage = step.stage
        if ph.deadline.passed():  # no stage starts past the deadline; a bench actor still profiles
            left = [s for s in a.todo if s.kind == "prepare"]
            state["left"] += len(left)
            a.todo = deque(s for s in a.todo if s.kind == "profile")
            if not a.todo:
                return
            step = a.todo[0]
    if step.kind != "hello" and not gate.may_start(a.host, step.kind):
        return
    a.todo.popleft()
    args = step.args
    if step.kind == "load":
        key = step.args[0]
        args = (key, ph.models[key][0], ph.models[key][1], ph.data_ref)
    ref = getattr(a.handle, step.kind).remote(*args)
    gate.started(a.host, step.kind)
    a.inflight = (ref, step, now())


def _land(ph: Phase, a: Running, ref, step: program.Step, submitted: str, state: dict) -> None:
    try:
        result, record = ray.get(ref)
    except Exception as e:  # the actor died (OOM kill, lost node) or a method raised: its variants end as errors
        cause = guard.task_error_text(e)
        ph.steps.add(None, submitted=submitted, actor=a.name, status="error", kind=step.kind, name=a.name)
        a.dead, a.todo = True, deque()
        _land_failed(ph, a, cause)
        return
    ph.steps.add(record, submitted=submitted, actor=a.name)
    if step.kind == "hello":
        a.host = result.get("ray_node_id") or a.name
    elif step.kind == "prepare" and result is not None:
        _write_variant(ph, a, step.args[0].variant_id, *result, state)
    elif step.kind == "finish" and result is not None:
        _write_variant(ph, a, step.args[0], *result, state)
    elif step.kind == "more":
        (want, n), (ids, stage, done) = result, step.args
        if want and n and done < MAX_EXTRA * ph.spec.bench.slices:  # a hard cap: a host slow for good ends too
            again = [program.Step("time", (want, done + i, stage), stage, want) for i in range(n)]
            a.todo.extendleft(reversed(again + [program.Step("more", (ids, stage, done + n), stage, step.ids)]))
    elif step.kind == "pairs":
        ph.progress.skip("bench", len(step.ids) - len(result), "a side of the pair was skipped or failed")
        for row in result:
            results.write_rows([row], ph.run_dir / "pairs" / f"{row['variant_id']}.parquet", PAIR_SCHEMA)
            ph.progress.landed(f"pair:{row['variant_id']}", row["status"], "")
    elif step.kind == "profile":
        for vid, cols in result.items():
            if vid in state["rows"]:
                state["rows"][vid] = [{**r, **cols} for r in state["rows"][vid]]
                results.write_rows(state["rows"][vid], ph.run_dir / "results" / f"{vid}.parquet", RESULT_SCHEMA)
    elif step.kind == "recheck_rows":
        for row in result:
            a.ids.discard(row["variant_id"])
            results.write_rows([row], ph.run_dir / f"{ph.witness}s" / f"{row['variant_id']}.parquet", RECHECK_SCHEMA)
            ph.progress.landed(f"{ph.witness}:{row['variant_id']}", row["status"], _first(row.get("error")))


def _write_variant(ph: Phase, a: Running, vid: str, rows: list[dict], raw: list[dict], state: dict) -> None:
    a.ids.discard(vid)
    if ph.recheck:  # a re-check variant that could not be prepared
        r = rows[0]
        row = {"variant_id": vid, "status": "error", "error": r.get("error"), "finished_at": now(),
               "started_at": r.get("started_at")}
        results.write_rows([row], ph.run_dir / f"{ph.witness}s" / f"{vid}.parquet", RECHECK_SCHEMA)
        ph.progress.landed(f"{ph.witness}:{vid}", "error", _first(r.get("error")))
        return
    state["rows"][vid] = rows
    results.write_rows(rows, ph.run_dir / "results" / f"{vid}.parquet", RESULT_SCHEMA)
    if raw:
        results.write_rows(raw, ph.run_dir / "samples" / f"{vid}.parquet", SAMPLES_SCHEMA)
    r = rows[0]
    if r["status"] == "ok":
        p50 = sorted(x["lat_p50_ms"] for x in rows)[len(rows) // 2]
        top1 = "—" if r.get("top1_pct") is None else f"{r['top1_pct']:.2f}%"
        detail = (f"top1 {top1}  p50 {p50:.3f} ms  {r.get('gpu_name') or 'cpu'}"
                  + ("  NOT EXCLUSIVE" if r.get("gpu_exclusive") is False else "")
                  + (f"  eval failed: {r['eval_error'][:120]}" if r.get("eval_error") else ""))
    else:
        detail = _first(r.get("error"))
    ph.progress.landed(f"bench:{vid}", r["status"], detail)


def _land_failed(ph: Phase, a: Running, cause: str) -> None:
    by_id = {v.variant_id: v for v in ph.variants}
    for vid in sorted(a.ids):
        v = by_id[vid]
        if ph.recheck:
            _write_variant(ph, a, vid, [{"error": cause}], [], {})
            continue
        m = ph.spec.model(v.model)
        row = {"sweep": ph.spec.name, "variant_id": vid, "brief_id": v.brief_id, "label": v.label, "model": v.model,
               "arch": m.arch, **v.axes(), "status": "error", "error": cause, "repeat": 0,
               "spec_hash": ph.hashes[vid], "finished_at": now()}
        _write_variant(ph, a, vid, [row], [], {"rows": {}})


def _running(busy: list[Running]) -> str:
    """What the actors are doing while nothing lands: `bench:0 time <variants>`, one per busy actor."""
    return "; ".join(f"{a.name} {a.inflight[1].kind} {','.join(a.inflight[1].ids)}"[:100] for a in busy)


def _first(text: str | None) -> str:
    return (text or "").splitlines()[0][:200] if text else ""
