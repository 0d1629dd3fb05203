"""The sweep's phases on a Ray cluster, each finished before the next starts; rows written as they land.

    train  ->  bench + pairs (compiling groups, then the rest)  ->  re-check (same split)

Why phases, measured on an H200 host (reports/h200-contention/): a benchmark's number must be that
variant's alone, and a GPU to itself is not enough for eager (CPU-bound) variants. A neighbour compiling
with inductor's worker pool made eager timing ~1.5x slower even on the other GPU and even with the CPUs
split between them; a neighbour training now and then did too. So no training runs while anything is
timed, and no compilation runs while a non-compiling variant is timed: within a phase the tasks that
compile go first, on every GPU at once, then the ones that do not. Each timing task is a fresh process
measuring one *group* (`group_key`: a model's variants of one precision, compiling or not) and the pairs
whose child is in it; the re-check times the same groups in reverse order (runner/tasks.py says why).
Within a phase, tasks on the GPUs of one machine still share its CPUs: each timing inside them holds the
host exclusively (runner/hostlock.py), the rest of their work shares it.
Ray does all the placing (one task per GPU, `num_gpus=1`); this module only decides what may overlap,
and in which order each phase's tasks are submitted (longest expected first: see ARCH_COST).
"""
from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import ray
import torch

from runner import agreement, guard, hostlock, pairs, results
from runner.results import PAIR_SCHEMA, RECHECK_SCHEMA, RESULT_SCHEMA, SAMPLES_SCHEMA, TRAINING_SCHEMA
from runner.tasks import later, now
from variants import SweepSpec, TrainSpec, Variant


@dataclasses.dataclass
class Progress:
    total: int
    log: Callable[[str], None]
    done: int = 0
    t0: float = dataclasses.field(default_factory=time.perf_counter)

    def landed(self, what: str, status: str, detail: str = "") -> None:
        self.done += 1
        self.log(f"[{self.done:>3}/{self.total}] {time.perf_counter() - self.t0:7.1f}s  {status:<7} {what}"
                 + (f"  {detail}" if detail else ""))


@dataclasses.dataclass(frozen=True)
class Deadline:
    """`sweep --stop-after`: past `at` (time.monotonic()), no task is submitted; the tasks in flight land.

    For GPU leases with a time limit: a sweep stopped this way loses no finished work (Ctrl-C or a kill
    loses the tasks in flight, up to a training's length), and the same command resumes it."""
    at: float | None = None

    @classmethod
    def after(cls, seconds: float | None) -> "Deadline":
        return cls(None if seconds is None else time.monotonic() + seconds)

    def passed(self) -> bool:
        return self.at is not None and time.monotonic() >= self.at


class Stopped(Exception):
    """The sweep reached its --stop-after deadline with `left` tasks not yet submitted."""

    def __init__(self, phase: str, left: int):
        super().__init__(f"stopped at the --stop-after deadline in the {phase} phase, {left} task(s) not started")
        self.phase, self.left = phase, left


@dataclasses.dataclass
class Plan:
    """What one invocation runs; `remote` holds the Ray task wrappers (runner/sweep.py makes them)."""
    spec: SweepSpec
    run_dir: Path
    pending: list[Variant]
    hashes: dict[str, str]
    train_opts: dict
    bench_opts: dict
    remote: dict[str, Any]
    log: Callable[[str], None]
    train_errors: dict[str, str] = dataclasses.field(default_factory=dict)
    bar_pct: float = 85.0
    deadline: Deadline = Deadline()
    slots: int = 1  # tasks that can run at once (GPUs, or CPU slots): the in-flight limit under a deadline
    # model -> a ref to its saved checkpoint, or None: for a re-check of a model this invocation did not load
    saved_checkpoint: Callable[[str], Any] = lambda key: None


def compiles(*variants: Variant) -> bool:
    return any(v.compile != "none" for v in variants)


# ---- submission order: longest expected task first -------------------------------------------------------
# A phase ends when its last task does; with more tasks than GPUs, a long task started last keeps one GPU
# busy while the others idle until the next phase (the timeline's idle tails). Submitting the longest
# first (LPT) shortens that tail; Ray hands out GPUs to queued tasks of one shape in submission order.
# The costs are only relative, per architecture, from reports/h200-training (training, us per image at
# the shipped recipes' batch) and reports/h200x2-default-shortened (eager fp32 batch-1 ms per call, which
# sets a bench's length: 3 x 1,200 timed calls; graphed calls are ~5-10x shorter). An unknown arch gets
# DEFAULT_COST; a wrong guess costs only order, never correctness.
ARCH_COST = {"resnet18": (16.0, 2.3), "mobilenet_v3": (55.0, 5.5), "shufflenet_v2": (60.0, 5.6),
             "airbench": (9.0, 1.0), "fastnet": (11.0, 0.8)}
DEFAULT_COST = (30.0, 3.0)
GRAPHED_CALL = 0.2  # a CUDA-graphed or compiled call, as a fraction of the eager one
# A compiling group's length is its compiles (batch 1 and the eval batch): seconds per compiled variant,
# from reports/h200x2-default (ResNet-18 / airbench reduce-overhead ~25-30 s, MobileNetV3 inductor ~55 s,
# many small kernels). They order the compiling groups among themselves, where they dominate.
COMPILE_S = {"resnet18": 25.0, "mobilenet_v3": 55.0, "shufflenet_v2": 55.0, "airbench": 25.0, "fastnet": 15.0}
DEFAULT_COMPILE_S = 40.0


def _arch_cost(arch: str) -> tuple[float, float]:
    return next((c for prefix, c in ARCH_COST.items() if arch.startswith(prefix)), DEFAULT_COST)


def train_cost(m: TrainSpec, n_train: int = 50_000) -> float:
    """Expected relative length of a training: epochs x images x the arch's cost per image."""
    images = min(m.recipe.train_subset or n_train, n_train)
    return m.recipe.epochs * images * _arch_cost(m.arch)[0]


def train_order(models: list[TrainSpec], n_train: int = 50_000) -> list[TrainSpec]:
    """The trainings' priority: the longest *chain* first. A teacher counts with its longest student, so
    the teacher of a long distillation starts first even when another model alone trains longer."""
    def chain(m: TrainSpec) -> float:
        return train_cost(m, n_train) + max((chain(s) for s in models if s.teacher == m.key), default=0.0)
    return sorted(models, key=lambda m: -chain(m))


def next_training(queue: list[TrainSpec], landed: set[str]) -> TrainSpec | None:
    """The first of `queue` (in priority order) that can start now: no teacher, or its teacher landed.

    Why the driver hands out trainings one free slot at a time instead of submitting all at once: Ray
    starts whatever is ready, and a student is ready only when its teacher lands. On 2x H200 the distilled
    student then queued behind two trainings submitted after it and ran alone at the phase's end, 40 s
    after the other GPU went idle (reports/h200x2-default/, train phase). Ray still places every task."""
    return next((m for m in queue if m.teacher is None or m.teacher in landed), None)


def bench_cost(spec: SweepSpec, *variants: Variant) -> float:
    """Expected relative length of a timing task (a pair times both sides): its per-call latency."""
    return sum(_arch_cost(spec.model(v.model).arch)[1]
               * (GRAPHED_CALL if v.cuda_graph or v.compile != "none" else 1.0) for v in variants)


def compile_cost(spec: SweepSpec, *variants: Variant) -> float:
    """Expected seconds a group spends compiling (0 for variants that do not compile)."""
    arch = lambda v: spec.model(v.model).arch  # noqa: E731
    return sum(next((c for prefix, c in COMPILE_S.items() if arch(v).startswith(prefix)), DEFAULT_COMPILE_S)
               for v in variants if v.compile != "none")


def ordered(jobs: list[tuple]) -> list[tuple]:
    """Jobs (compiles?, cost, submit, land) longest first; equal costs keep their order (stable)."""
    return sorted(jobs, key=lambda j: -j[1])


def run_phase(name: str, jobs: list[tuple[bool, float, Callable[[], Any], Callable[[Any], None]]],
              log: Callable[[str], None], deadline: Deadline = Deadline(), slots: int = 1) -> None:
    """Jobs are (compiles?, cost, submit() -> ref, land(ref)). Compiling jobs first, all landed, then the
    rest; within each group the longest expected first. Without a deadline every job is submitted at once
    and Ray queues them; with one, at most `slots` are in flight, so that none is submitted after it
    (raises Stopped once the ones in flight have landed).

    The barrier between the two stays although the host lock keeps compiles off timings: without it (tried
    at 9984112) the CPU quick sweep's in-sweep MobileNet rows read 1.22-1.53x their re-check in both of two
    runs, against 0.95-1.08x in four runs with it. The cause was not found; the idle GPU time it costs is
    the price."""
    for group, label in ((True, "compiling"), (False, "not compiling")):
        todo = [j for j in ordered(jobs) if j[0] == group]
        n = len(todo)
        limit = max(1, slots) if deadline.at is not None else n
        refs: dict[Any, Callable[[Any], None]] = {}
        _submit(todo, refs, limit, deadline)
        if refs:  # past the deadline, nothing of this group starts: no heading for it
            log(f"-- {name} phase, {label}: {n} task(s)")
        while refs:
            ready, _ = ray.wait(list(refs), num_returns=1)
            land = refs.pop(ready[0])
            _submit(todo, refs, limit, deadline)  # the freed slot gets its next task before the driver lands
            # Landing (unpickling rows and samples, writing Parquet) is host work of the driver's machine,
            # where a task on another GPU may be timing: it waits for the timing like any task's work.
            with hostlock.busy():
                land(ready[0])
        if todo:  # stopped among the compiling jobs, the others were never started either
            raise Stopped(name, len(todo) + (sum(1 for j in jobs if not j[0]) if group else 0))


def _submit(todo: list, refs: dict, limit: int, deadline: Deadline) -> None:
    while todo and len(refs) < limit and not deadline.passed():
        _, _, submit, land = todo.pop(0)
        refs[submit()] = land


def group_key(v: Variant) -> tuple[str, bool, str]:
    """Which bench task measures `v`: one per model, compiling or not, and precision. Compiling and not
    stay apart because the phases order them; the precision split halves a model's task so that a
    phase's tasks spread over more GPUs (the two halves share no prepared state anyway)."""
    return v.model, compiles(v), v.precision


def pair_key(parent: Variant, child: Variant) -> tuple[str, bool, str]:
    """The group whose task times a pair: the child's, compiling if either side compiles."""
    return child.model, compiles(parent, child), child.precision


def group_name(key: tuple[str, bool, str]) -> str:
    model, comp, precision = key
    return f"{model}-{precision}" + ("-compiling" if comp else "")


def groups(variants: list[Variant]) -> dict[tuple, list[Variant]]:
    """Variants by group_key, each group in the sweep's order (parents before their children)."""
    out: dict[tuple, list[Variant]] = {}
    for v in variants:
        out.setdefault(group_key(v), []).append(v)
    return out


def run(plan: Plan, data_ref, ckpts: dict[str, Any], progress: Progress) -> None:
    """Bench (with each group's pairs) and re-check phases; training is done: `ckpts` maps model ->
    checkpoint or None."""
    spec = plan.spec
    pending = []
    for v in plan.pending:
        if ckpts.get(v.model) is None:
            _land_untrained(v, plan, progress, plan.train_errors.get(v.model, "no checkpoint"))
        else:
            pending.append(v)
    bench_groups = groups(pending)
    pair_groups = _pairs_to_time(plan, ckpts)
    progress.total += sum(len(p) for p in pair_groups.values())
    jobs = []
    for key in list(bench_groups) + [k for k in pair_groups if k not in bench_groups]:
        group, pair_list = bench_groups.get(key, []), pair_groups.get(key, [])
        submit = (lambda g=group, pl=pair_list, key=key: plan.remote["bench"].options(
            name=f"bench:{group_name(key)}", **plan.bench_opts).remote(
            g, pl, spec.model(key[0]), later(ckpts[key[0]]), later(data_ref), spec.bench, spec.name,
            {v.variant_id: plan.hashes[v.variant_id] for v in g}))
        land = (lambda ref, g=group, pl=pair_list: _land_group(ref, g, pl, plan, progress))
        cost = (bench_cost(spec, *group) + sum(bench_cost(spec, a, b) for a, b in pair_list)
                + compile_cost(spec, *group))
        jobs.append((key[1], cost, submit, land))
    run_phase("bench", jobs, plan.log, plan.deadline, plan.slots)
    if spec.bench.recheck >= 0:
        run_phase("re-check", _recheck_jobs(plan, ckpts, progress), plan.log, plan.deadline, plan.slots)


def _pairs_to_time(plan: Plan, ckpts) -> dict[tuple, list[tuple[Variant, Variant]]]:
    """Pairs by the group that times them (pair_key): a pair is timed when either side is measured in this
    invocation, or its pair file is missing."""
    if plan.spec.bench.pair_rounds <= 0:
        return {}
    new = {v.variant_id for v in plan.pending}
    done = set(results.read_folder(plan.run_dir / "pairs", PAIR_SCHEMA)["variant_id"])
    out: dict[tuple, list] = {}
    for parent, child, _axis in pairs.plan(plan.spec.variants):
        if ckpts.get(child.model) is None:
            continue
        if child.variant_id in done and not ({parent.variant_id, child.variant_id} & new):
            continue
        out.setdefault(pair_key(parent, child), []).append((parent, child))
    return out


def _recheck_jobs(plan: Plan, ckpts, progress) -> list:
    """The re-check sample, timed by groups like the bench phase (runner/tasks.recheck_job)."""
    summary = results.summarize(results.read_folder(plan.run_dir / "results", RESULT_SCHEMA))
    ids = agreement.recheck_sample(summary, plan.spec.bench.recheck, plan.bar_pct)
    ids = unchecked(ids, plan.run_dir)
    by_id = {v.variant_id: v for v in plan.spec.variants}
    ckpts = dict(ckpts)
    for model in {by_id[i].model for i in ids if i in by_id} - set(ckpts):
        ckpts[model] = plan.saved_checkpoint(model)
    chosen = [by_id[i] for i in ids if i in by_id and ckpts.get(by_id[i].model) is not None]
    progress.total += len(chosen)
    jobs = []
    for key, group in groups([v for v in plan.spec.variants if v in chosen]).items():
        submit = (lambda g=group, key=key: plan.remote["recheck"].options(
            name=f"recheck:{group_name(key)}", **plan.bench_opts).remote(g, later(ckpts[key[0]]), plan.spec.bench))
        jobs.append((key[1], bench_cost(plan.spec, *group) + compile_cost(plan.spec, *group), submit,
                     lambda ref, g=group: _land_rechecks(ref, g, plan, progress)))
    return jobs


def unchecked(ids: list[str], run_dir: Path) -> list[str]:
    """The ids without a re-check that ended after their rows landed: never re-checked (a sweep stopped in
    its re-check phase, a resumed one whose sample grew) or re-measured since. A resumed sweep re-checks
    only these, and a sweep with nothing left to measure still finishes its re-checks."""
    rows = results.read_folder(run_dir / "results", RESULT_SCHEMA)
    checks = results.read_folder(run_dir / "rechecks", RECHECK_SCHEMA)

    def last(frame: pd.DataFrame) -> pd.Series:
        when = pd.to_datetime(frame["finished_at"], utc=True, format="ISO8601", errors="coerce")
        return when.groupby(frame["variant_id"]).max()

    measured, checked = last(rows), last(checks[checks["status"] == "ok"])
    return [i for i in ids if i not in checked.index or checked[i] < measured.get(i, checked[i])]


# ---- landing: every result on disk the moment it arrives -------------------------------------------------

def land_training(ref, m: TrainSpec, run_dir: Path, sweep: str, progress: Progress) -> str | None:
    """Write the training's rows and checkpoint; return None, or the error (first line: the real cause)."""
    try:
        ckpt = ray.get(ref)
    except Exception as e:
        msg = guard.task_error_text(e)  # first line: the exception inside the task, not Ray's wrapper
        results.write_rows([{"sweep": sweep, "model": m.key, "arch": m.arch, "teacher": m.teacher,
                             "status": "error", "error": msg, "spec_hash": m.spec_hash, "finished_at": now()}],
                           run_dir / "training" / f"{m.key}.parquet", TRAINING_SCHEMA)
        progress.landed(f"train:{m.key}", "error", msg.splitlines()[0][:200])
        return msg
    rows = ckpt.pop("rows")
    path = run_dir / "checkpoints" / f"{m.key}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path.with_suffix(".tmp"))
    os.replace(path.with_suffix(".tmp"), path)
    results.write_rows(rows, run_dir / "training" / f"{m.key}.parquet", TRAINING_SCHEMA)
    progress.landed(f"train:{m.key}", "ok", f"top1 {ckpt['top1_pct']:.2f}%  {ckpt['train_s']:.1f}s "
                    f"{ckpt['train_img_per_s']:,.0f} img/s")
    return None


def _error_row(v: Variant, plan: Plan, error: str) -> dict:
    m = plan.spec.model(v.model)
    return {"sweep": plan.spec.name, "variant_id": v.variant_id, "brief_id": v.brief_id, "label": v.label,
            "model": v.model, "arch": m.arch, **v.axes(), "status": "error", "error": error, "repeat": 0,
            "spec_hash": plan.hashes[v.variant_id], "finished_at": now()}


def _land_untrained(v: Variant, plan: Plan, progress: Progress, cause: str) -> None:
    row = _error_row(v, plan, f"training of model '{v.model}' failed: {cause}")
    results.write_rows([row], plan.run_dir / "results" / f"{v.variant_id}.parquet", RESULT_SCHEMA)
    progress.landed(f"bench:{v.variant_id}", "error", row["error"])


def _land_group(ref, group: list[Variant], pair_list: list, plan: Plan, progress: Progress) -> None:
    """Write every variant's rows and every pair's row of one bench task; a task that died (OOM kill,
    node lost) still leaves one row per variant and pair, naming the real cause."""
    try:
        out = ray.get(ref)
        benches, pair_rows = out["bench"], out["pairs"]
    except Exception as e:
        cause = guard.task_error_text(e)
        benches = {v.variant_id: ([_error_row(v, plan, cause)], []) for v in group}
        pair_rows = [{"parent_id": a.variant_id, "variant_id": b.variant_id, "status": "error", "error": cause,
                      "finished_at": now()} for a, b in pair_list]
    for v in group:
        rows, raw = benches.get(v.variant_id) or ([_error_row(v, plan, "the task returned no row")], [])
        _land_bench(v, rows, raw, plan, progress)
    progress.total -= len(pair_list) - len(pair_rows)  # pairs with a side that did not end ok
    for row in pair_rows:
        _write_row(row, plan.run_dir / "pairs" / f"{row['variant_id']}.parquet", PAIR_SCHEMA,
                   f"pair:{row['variant_id']}", progress)


def _land_bench(v: Variant, rows: list[dict], raw: list[dict], plan: Plan, progress: Progress) -> None:
    results.write_rows(rows, plan.run_dir / "results" / f"{v.variant_id}.parquet", RESULT_SCHEMA)
    if raw:
        results.write_rows(raw, plan.run_dir / "samples" / f"{v.variant_id}.parquet", SAMPLES_SCHEMA)
    r = rows[0]
    if r["status"] == "ok":
        p50 = sorted(x["lat_p50_ms"] for x in rows)[len(rows) // 2]
        top1 = "—" if r.get("top1_pct") is None else f"{r['top1_pct']:.2f}%"
        detail = (f"top1 {top1}  p50 {p50:.3f} ms  {r['gpu_name'] or 'cpu'}"
                  + ("" if r.get("gpu_exclusive") is not False else "  NOT EXCLUSIVE")
                  + (f"  eval failed: {r['eval_error'][:120]}" if r.get("eval_error") else ""))
    else:
        detail = (r["error"] or "").splitlines()[0][:200]
    progress.landed(f"bench:{v.variant_id}", r["status"], detail)


def _land_rechecks(ref, group: list[Variant], plan: Plan, progress: Progress) -> None:
    try:
        rows = {r["variant_id"]: r for r in ray.get(ref)}
    except Exception as e:
        cause = guard.task_error_text(e)
        rows = {v.variant_id: {"variant_id": v.variant_id, "status": "error", "error": cause,
                               "finished_at": now()} for v in group}
    for v in group:
        row = rows.get(v.variant_id) or {"variant_id": v.variant_id, "status": "error",
                                         "error": "the task returned no row", "finished_at": now()}
        _write_row(row, plan.run_dir / "rechecks" / f"{v.variant_id}.parquet", RECHECK_SCHEMA,
                   f"recheck:{v.variant_id}", progress)


def _write_row(row: dict, path: Path, schema, what: str, progress: Progress) -> None:
    results.write_rows([row], path, schema)
    progress.landed(what, row["status"], (row.get("error") or "").splitlines()[0][:200] if row.get("error") else "")
