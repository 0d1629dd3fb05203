"""The sweep: start or join Ray, decide what is left to do, train, then hand over to the timing phases.

    python -m runner sweep --config variants/default.yaml [--address auto] [--data PATH] [--fresh]

Training is one Ray task per model, a distilled model's task taking its teacher's checkpoint ObjectRef
(Ray starts it when the teacher is done); every training ends before anything is timed, then
runner/phases.py runs the benchmarks, the paired keep/drop timings and the re-checks. Every task asks for
a whole GPU (num_gpus=1). Each result is written to Parquet the moment it lands (nothing finished is ever
lost); re-running the same command skips rows measured by the same code on the same kind of device.
"""
from __future__ import annotations

import dataclasses
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import ray
import torch

from runner import env, guard, phases, reaper, results, tasks, worker_setup
from runner.data import Cifar
from runner.results import RESULT_SCHEMA
from variants import BenchSpec, SweepSpec, TrainSpec, Variant
from variants.loader import stable_hash

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def variant_hash(variant: Variant, model: TrainSpec, bench: BenchSpec, data_source: str, code: str) -> str:
    """What must match for a finished row to count as done on a re-run: the variant, its model's spec, the
    bench settings, the data and the code that measured it (a row from older code is measured again)."""
    return stable_hash({"variant": variant.axes(), "model": model.spec_hash, "bench": dataclasses.asdict(bench),
                         "data": data_source, "code": code})


# The remote wrappers are made from the plain functions (not with the decorator) so that Ray pickles a
# reference to an importable function rather than its code and globals. max_retries covers a worker that
# dies (OOM kill, lost node); an exception inside a job is not retried, it becomes an error row.
# max_calls=1 on *every* task: a worker exits after one task, so each timing task starts in a fresh
# process (a process that had trained timed eager ~1.5x slower). Ray defaults to that only for functions
# declared with num_gpus, and ours get their resources from .options(), so it is set here explicitly.
train_task = ray.remote(max_retries=1, max_calls=1)(tasks.train_job)
bench_task = ray.remote(max_retries=1, max_calls=1)(tasks.bench_job)
recheck_task = ray.remote(max_retries=1, max_calls=1)(tasks.recheck_job)


# ---- driver --------------------------------------------------------------------------------------------

def start_ray(address: str | None, log: Callable[[str], None]) -> dict[str, Any]:
    """Join `address` or start a local cluster; print the dashboard address and how to get in."""
    # Workers must import this project *and* whatever the driver's PYTHONPATH already provides (Ray itself
    # may live there, as on machines where it is unpacked beside the system Python).
    inherited = os.environ.get("PYTHONPATH", "")
    env_vars = {"RUNNER_GIT_COMMIT": env.git_commit(),
                "PYTHONPATH": os.pathsep.join(p for p in (str(PROJECT_ROOT), inherited) if p)}
    # Every worker imports torch and this project inside a shared host hold (runner/worker_setup.py says why).
    runtime_env: dict[str, Any] = {"env_vars": env_vars, "worker_process_setup_hook": worker_setup.HOOK}
    if address:
        # On a real cluster the code travels with the job, so every node runs this exact checkout.
        runtime_env = {"working_dir": str(PROJECT_ROOT), "env_vars": {"RUNNER_GIT_COMMIT": env_vars["RUNNER_GIT_COMMIT"]},
                       "excludes": [".git", ".devkit", ".data", ".venv", "runs", "reports", "*.pt"],
                       "worker_process_setup_hook": worker_setup.HOOK}
    # No address means a cluster of our own ("local"): ray.init(address=None) silently joins any cluster that
    # `ray start` left on this machine (a sweep joined a 2-node test cluster so), with a one-node runtime_env.
    ctx = ray.init(address=address or os.environ.get("RAY_ADDRESS") or "local", runtime_env=runtime_env,
                   include_dashboard=True, log_to_driver=True, logging_level="WARNING", **guard.local_ray_args(address))
    reaper.watch_local_cluster()  # a cluster we started goes with this driver, even after a SIGKILL
    guard.reclaim_signals()  # ray.init replaced our SIGTERM handler with its own sys.exit(15)
    res = ray.cluster_resources()
    gpus = int(res.get("GPU", 0))
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    url = getattr(ctx, "dashboard_url", None)
    if url:
        log(f"Ray dashboard: http://{url}  (tasks are named train:<model>, bench:<model>-<precision> and recheck:<model>-<precision>)")
        if os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
            log("  token authentication is on: the dashboard asks for the token that `ray get-auth-token` prints "
                "(.venv/bin/ray after the README's install; stored in ~/.ray/auth_token); API calls need "
                "`Authorization: Bearer <token>`.")
    log(f"Ray cluster: {len(nodes)} node(s), {gpus} GPU(s), {int(res.get('CPU', 0))} CPU(s)")
    _probe_workers()
    # Ray labels GPU nodes with the accelerator's kind (accelerator_type:H200): resume compares with it.
    kinds = sorted({k.split(":", 1)[1] for n in nodes for k in n.get("Resources", {}) if k.startswith("accelerator_type:")})
    return {"gpus": gpus, "nodes": len(nodes), "cpus": int(res.get("CPU", 0)), "gpu_kinds": kinds}


class WorkerStartError(RuntimeError):
    """Ray workers could not run a task (they cannot import ray, torch or this project)."""


def worker_probe() -> str:
    import runner.train  # noqa: F401  (the import a real task needs first)
    return torch.__version__


def _probe_workers(timeout_s: float = 180.0) -> None:
    """Fail in minutes, with a reason, when workers cannot start (Ray retries a crashing worker forever)."""
    try:
        ray.get(ray.remote(num_cpus=0, max_calls=1)(worker_probe).options(name="probe").remote(), timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        raise WorkerStartError(
            f"no Ray worker could run a task within {timeout_s:.0f} s. Workers must be able to import ray, "
            f"torch and this project ({PROJECT_ROOT}); look for ModuleNotFoundError in the lines above "
            f"or in /tmp/ray/session_latest/logs/.") from None


def run_sweep(spec: SweepSpec, data: Cifar, run_dir: Path, *, address: str | None = None,
              shortened_note: str = "", fresh: bool = False, stop_after: float | None = None,
              log: Callable[[str], None] = print) -> Path:
    """Run (or resume) a sweep and write its report. `stop_after` seconds: submit nothing after that, let
    the tasks in flight land, and raise phases.Stopped (runner/phases.Deadline says why)."""
    guard.check_paths(spec, run_dir)  # every file named after a model / variant stays inside run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    if fresh:
        _set_aside(run_dir, log)
    (run_dir / "resolved_config.json").write_text(json.dumps(spec.to_dict(), indent=2, default=str))
    code = env.code_digest()
    hashes = {v.variant_id: variant_hash(v, spec.model(v.model), spec.bench, data.source, code)
              for v in spec.variants}
    started, deadline = tasks.now(), phases.Deadline.after(stop_after)
    cluster: dict[str, Any] = {}
    completed = False
    try:
        cluster = start_ray(address, log)
        done = _finished_rows(run_dir, cluster)
        pending = [v for v in spec.variants if done.get(v.variant_id) != hashes[v.variant_id]]
        if len(pending) < len(spec.variants):
            log(f"resuming: {len(spec.variants) - len(pending)} variant(s) already measured by this code on "
                f"this kind of device in {run_dir}, {len(pending)} to run (--fresh measures everything again)")
        _run(spec, data, run_dir, pending, hashes, cluster, log, deadline)
        completed = True
    finally:  # also on Ctrl-C or a crash: whatever landed is merged and readable
        ray.shutdown()
        reaper.stop()  # and whatever ray.shutdown left of a cluster we started
        results.merge(run_dir)
        # An interrupted invocation's time is kept too: a resumed sweep's wall is the sum of all of them.
        _write_meta(spec, data, run_dir, cluster, started, shortened_note, code, interrupted=not completed)
    from runner.report import build_report
    return build_report(run_dir)


def _write_meta(spec, data, run_dir: Path, cluster: dict, started: str, shortened_note: str, code: str,
                interrupted: bool = False) -> None:
    meta = {"name": spec.name, "source_file": spec.source_file, "shortened": bool(shortened_note),
            "interrupted": interrupted,
            "shortened_note": shortened_note, "data_source": data.source, "started_at": started,
            "finished_at": tasks.now(), "cluster": cluster, "config": spec.to_dict(), "accuracy_bar_pct": 85.0,
            "git_commit": env.git_commit(), "code_digest": code}
    prev = run_dir / "sweep.json"
    try:
        old = json.loads(prev.read_text()) if prev.exists() else None
    except (OSError, ValueError):  # a damaged sweep.json loses only the earlier invocations' times
        old = None
    if isinstance(old, dict):  # a resumed sweep keeps the times of its earlier invocations
        meta["previous_runs"] = old.get("previous_runs", []) + [
            {k: old.get(k) for k in ("started_at", "finished_at", "wall_s", "interrupted")}]
    meta["wall_s"] = (datetime.fromisoformat(meta["finished_at"]) - datetime.fromisoformat(started)).total_seconds()
    prev.write_text(json.dumps(meta, indent=2, default=str))


def _set_aside(run_dir: Path, log: Callable[[str], None]) -> None:
    """--fresh: earlier rows and checkpoints move to run_dir/previous/<time>/ (never deleted)."""
    parts = [p for p in ("results", "samples", "training", "checkpoints", "pairs", "rechecks")
             if (run_dir / p).exists()]
    if not parts:
        return
    dest = run_dir / "previous" / datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    dest.mkdir(parents=True, exist_ok=True)
    for p in parts:
        os.replace(run_dir / p, dest / p)
    log(f"--fresh: earlier results moved to {dest}")


def _finished_rows(run_dir: Path, cluster: dict[str, Any]) -> dict[str, str]:
    """variant_id -> spec_hash of rows on disk that need no re-run: ok or skipped, and measured on the
    kind of device this cluster has (a CPU row does not stand for a GPU, nor an H100's for an H200)."""
    df = results.read_folder(run_dir / "results", RESULT_SCHEMA)
    df = df[df["status"].isin(["ok", "skipped"])]
    kinds = cluster.get("gpu_kinds") or []
    if cluster.get("gpus"):
        same = df["device"].eq("cuda") & df["gpu_name"].fillna("").map(
            lambda name: not kinds or any(k.lower() in name.lower() for k in kinds))
    else:
        same = df["device"].ne("cuda")
    df = df[same | df["status"].eq("skipped")]
    return dict(zip(df["variant_id"], df["spec_hash"]))


def _load_checkpoint(run_dir: Path, spec: TrainSpec, data: Cifar, log: Callable[[str], None] = print) -> dict | None:
    """A checkpoint of an earlier run of this sweep, if it was trained from the same spec on the same data."""
    path = run_dir / "checkpoints" / f"{spec.key}.pt"
    if not path.exists():
        return None
    try:  # a damaged checkpoint (truncated, garbage, not ours) is retrained, not a crash of the resume
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(ckpt, dict):
            raise TypeError(f"holds a {type(ckpt).__name__}, not a checkpoint dict")
    except Exception as e:
        log(f"checkpoint {path} does not load ({guard.task_error_cause(e)}); retraining {spec.key}")
        return None
    same_data = ckpt.get("data_source") == data.subset(spec.recipe.train_subset, spec.recipe.test_subset).source
    return ckpt if ckpt.get("spec_hash") == spec.spec_hash and same_data else None


def task_resources(gpus: int, cpus_per_node: float) -> tuple[dict, dict]:
    """Ray resources of a (train, bench) task. With GPUs, each task takes one whole GPU, so Ray runs at
    most one task per GPU, on every GPU of every node at once. On a CPU-only cluster a benchmark takes
    every CPU of a node instead, so it still runs alone (and its rows are CPU timings)."""
    if gpus > 0:
        return {"num_gpus": 1, "num_cpus": 1}, {"num_gpus": 1, "num_cpus": 1}
    return {"num_cpus": 1}, {"num_cpus": cpus_per_node}


def _run(spec: SweepSpec, data: Cifar, run_dir: Path, pending: list[Variant], hashes: dict[str, str],
         cluster: dict[str, Any], log: Callable[[str], None], deadline: phases.Deadline) -> None:
    """Phase 1 here (train what the pending variants need), the timing phases in runner/phases.py."""
    cpu_per_node = min((n["Resources"].get("CPU", 1) for n in ray.nodes() if n.get("Alive")), default=1)
    train_opts, bench_opts = task_resources(cluster["gpus"], cpu_per_node)
    needed = {v.model for v in pending}
    needed |= {spec.model(k).teacher for k in needed if spec.model(k).teacher}
    data_ref = ray.put(data)
    progress = phases.Progress(total=len(pending), log=log)
    ckpts: dict[str, Any] = {}
    refs: dict[str, ray.ObjectRef] = {}
    queue: list[TrainSpec] = []
    for m in phases.train_order([spec.model(k) for k in needed], len(data.train_y)):
        cached = _load_checkpoint(run_dir, m, data, log)
        if cached is None:
            queue.append(m)
            continue
        log(f"reusing checkpoint of {m.key} ({cached['top1_pct']:.2f}% fp32) from {run_dir / 'checkpoints'}")
        refs[m.key] = ckpts[m.key] = ray.put(cached)

    def from_disk(key: str) -> Any:  # for a re-check left from a stopped invocation, of a model nothing else needs
        cached = _load_checkpoint(run_dir, spec.model(key), data, log=lambda _: None)
        return None if cached is None else ray.put(cached)

    progress.total += len(queue)
    log(f"phase train: {len(queue)} training task(s); {len(pending)} variant(s) to measure after it")
    # At most one training per slot in flight, the ready one of highest priority next (phases.next_training
    # says why); a student takes its teacher's checkpoint ref.
    slots = max(1, cluster.get("gpus") or cluster.get("cpus") or 1)
    landed: set[str] = set(refs)
    training: dict[ray.ObjectRef, TrainSpec] = {}
    errors: dict[str, str] = {}
    while training or (queue and not deadline.passed()):  # every training ends before the first benchmark
        while queue and len(training) < slots and not deadline.passed():
            m = phases.next_training(queue, landed) or (queue[0] if not training else None)
            if m is None:
                break
            queue.remove(m)
            teacher_ref = refs.get(m.teacher) if m.teacher else None
            refs[m.key] = train_task.options(name=f"train:{m.key}", **train_opts).remote(m, data_ref, teacher_ref,
                                                                                       spec.name)
            training[refs[m.key]] = m
        ready, _ = ray.wait(list(training), num_returns=1)
        m = training.pop(ready[0])
        error = phases.land_training(ready[0], m, run_dir, spec.name, progress)
        landed.add(m.key)
        ckpts[m.key] = ready[0] if error is None else None
        if error:
            errors[m.key] = error
    if queue:
        raise phases.Stopped("train", len(queue))
    plan = phases.Plan(spec, run_dir, pending, hashes, train_opts, bench_opts,
                       {"bench": bench_task, "recheck": recheck_task}, log, errors, deadline=deadline, slots=slots,
                       saved_checkpoint=from_disk)
    phases.run(plan, data_ref, ckpts, progress)
