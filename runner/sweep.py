"""The sweep's driver: start or join Ray, decide what is left to do, then train, bench and re-check.

    python -m runner sweep --config variants/default.yaml [--address auto] [--data PATH] [--fresh]

    train     Ray tasks, `train.per_gpu` per GPU, the longest chain first (runner/engine/training.py)
    bench     one long-lived actor per GPU, the driver as the timing barrier (runner/engine/bench_phase.py)
    re-check  new actors, the same rows timed again in reverse order: the in-sweep numbers' witness

Each result is written to Parquet the moment it lands (nothing finished is ever lost); re-running the same
command skips rows measured by the same code on the same kind of device.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import ray
import torch

from runner import env, files, guard, reaper, results
from runner.engine import bench_phase, resume, run_folder, training
from runner.engine.control import HEARTBEAT_S, Deadline, Progress, plain_output
from runner.engine.steps import StepLog, now
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


# ---- driver --------------------------------------------------------------------------------------------

def start_ray(address: str | None, log: Callable[[str], None]) -> dict[str, Any]:
    """Join `address` or start a local cluster; print the dashboard address and how to get in."""
    # Workers must import this project *and* whatever the driver's PYTHONPATH already provides (Ray itself
    # may live there, as on machines where it is unpacked beside the system Python).
    inherited = os.environ.get("PYTHONPATH", "")
    env_vars = {"RUNNER_GIT_COMMIT": env.git_commit(),
                "PYTHONPATH": os.pathsep.join(p for p in (str(PROJECT_ROOT), inherited) if p)}
    runtime_env: dict[str, Any] = {"env_vars": env_vars}
    if address:
        # On a real cluster the code travels with the job, so every node runs this exact checkout.
        runtime_env = {"working_dir": str(PROJECT_ROOT), "env_vars": {"RUNNER_GIT_COMMIT": env_vars["RUNNER_GIT_COMMIT"]},
                       "excludes": [".git", ".devkit", ".data", ".venv", "runs", "reports", "*.pt"]}
    # No address means a cluster of our own ("local"): ray.init(address=None) silently joins any cluster that
    # `ray start` left on this machine (a sweep joined a 2-node test cluster so), with a one-node runtime_env.
    # RUNNER_DASHBOARD=0 leaves the dashboard out: on a 2-core machine its start costs a core for seconds
    # (the test suite starts a dozen local clusters).
    dashboard = os.environ.get("RUNNER_DASHBOARD", "1") != "0"
    plain_output()  # Ray's colour codes stay out of a log file
    log(f"starting Ray ({'joining ' + address if address else 'a local cluster'}; it takes a few seconds)")
    ctx = ray.init(address=address or os.environ.get("RAY_ADDRESS") or "local", runtime_env=runtime_env,
                   include_dashboard=dashboard, log_to_driver=True, logging_level="WARNING",
                   **guard.local_ray_args(address))
    reaper.watch_local_cluster()  # a cluster we started goes with this driver, even after a SIGKILL
    guard.reclaim_signals()  # ray.init replaced our SIGTERM handler with its own sys.exit(15)
    res = ray.cluster_resources()
    gpus = int(res.get("GPU", 0))
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    url = getattr(ctx, "dashboard_url", None)
    if url:
        log(f"Ray dashboard: http://{url}  (tasks train:<model>, actors bench:<n> and recheck:<n>, one per GPU)")
        if os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
            log("  token authentication is on: the dashboard asks for the token that `ray get-auth-token` prints "
                "(.venv/bin/ray after the README's install; stored in ~/.ray/auth_token); API calls need "
                "`Authorization: Bearer <token>`.")
    log(f"Ray cluster: {len(nodes)} node(s), {gpus} GPU(s), {int(res.get('CPU', 0))} CPU(s)")
    _probe_workers(log)
    # Ray labels GPU nodes with the accelerator's kind (accelerator_type:H200): resume compares with it.
    kinds = sorted({k.split(":", 1)[1] for n in nodes for k in n.get("Resources", {}) if k.startswith("accelerator_type:")})
    return {"gpus": gpus, "nodes": len(nodes), "cpus": int(res.get("CPU", 0)), "gpu_kinds": kinds}


class WorkerStartError(RuntimeError):
    """Ray workers could not run a task (they cannot import ray, torch or this project)."""


def worker_probe() -> str:
    import runner.train  # noqa: F401  (the import a real task needs first)
    return torch.__version__


def _probe_workers(log: Callable[[str], None], timeout_s: float = 180.0) -> None:
    """Fail in minutes, with a reason, when workers cannot start (Ray retries a crashing worker forever)."""
    # No max_calls: the probed worker (ray, torch and the project imported) stays idle, so Ray may lease
    # it for the first training (still the first real task it runs). Whether it does was not checked.
    ref, t0 = ray.remote(num_cpus=0)(worker_probe).options(name="probe").remote(), time.monotonic()
    while not ray.wait([ref], timeout=min(HEARTBEAT_S, max(0.0, t0 + timeout_s - time.monotonic())))[0]:
        if time.monotonic() >= t0 + timeout_s:
            break
        log(f"waiting for a Ray worker to start ({time.monotonic() - t0:.0f} s; it imports torch and this project)")
    try:
        ray.get(ref, timeout=0)
    except ray.exceptions.GetTimeoutError:
        raise WorkerStartError(
            f"no Ray worker could run a task within {timeout_s:.0f} s. Workers must be able to import ray, "
            f"torch and this project ({PROJECT_ROOT}); look for ModuleNotFoundError in the lines above "
            f"or in /tmp/ray/session_latest/logs/.") from None


def run_sweep(spec: SweepSpec, data: Cifar, run_dir: Path, *, address: str | None = None,
              shortened_note: str = "", fresh: bool = False, stop_after: float | None = None,
              log: Callable[[str], None] = print) -> Path:
    """Run (or resume) a sweep and write its report. `stop_after` seconds: submit nothing after that, let
    the tasks in flight land, and raise runner.engine.control.Stopped."""
    guard.check_paths(spec, run_dir)  # every file named after a model / variant stays inside run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    if fresh or run_folder.cut_short(run_dir):
        run_folder.set_aside(run_dir, log)
    results.check_folder(run_dir)  # rows of other code (another schema version): refused by name, before Ray
    files.write_json(run_folder.resolved(spec, data), run_dir / "resolved_config.json")
    code = env.code_digest()
    hashes = {v.variant_id: variant_hash(v, spec.model(v.model), spec.bench, data.source, code)
              for v in spec.variants}
    started, deadline = now(), Deadline.after(stop_after)
    cluster: dict[str, Any] = {}
    completed, steps = False, StepLog(run_dir)
    # A finished sweep run again on this machine (to rebuild its report, say) needs no Ray: what a local
    # cluster would have is known without one. Joining a cluster, its devices are asked of Ray.
    here = None if address or os.environ.get("RAY_ADDRESS") else local_devices()
    if here is not None and not resume.pending(spec, run_dir, hashes, here, log) \
            and not resume.witnesses_runnable(spec, run_dir):
        log("nothing left to run: every variant, twin and re-check is on disk (Ray not started)")
        return run_folder.close(run_dir, True, log, spec=spec, data=data, cluster=here, started=started,
                                shortened_note=shortened_note, code=code, worked=False)
    try:
        cluster = start_ray(address, log)
        pending = resume.pending(spec, run_dir, hashes, cluster, log if here is None else lambda _: None)  # said above
        _run(spec, data, run_dir, pending, hashes, cluster, log, deadline, steps)
        completed = True
    finally:  # also on Ctrl-C or a crash: whatever landed is merged, and the report describes exactly that
        guard.cleaning_up()  # a Ctrl-C from here on waits for the merge
        log("stopping Ray, merging the results and writing the report")
        ray.shutdown()
        reaper.stop()  # and whatever ray.shutdown left of a cluster we started
        # An interrupted invocation's time is kept too: a resumed sweep's wall is the sum of all of them.
        report = run_folder.close(run_dir, completed, log, spec=spec, data=data, cluster=cluster, started=started,
                                  shortened_note=shortened_note, code=code, worked=bool(steps.rows))
    return report


def local_devices() -> dict[str, Any] | None:
    """What a local Ray cluster of this machine would report of its GPUs, without starting one or a CUDA
    context (torch counts GPUs through NVML); None when it cannot be told (GPUs of different kinds, no NVML)."""
    from runner.diagnostics import nvml

    gpus = torch.cuda.device_count()
    if not gpus:
        return {"gpus": 0}
    names = set(nvml.device_names() or [])
    return {"gpus": gpus, "gpu_kinds": sorted(names)} if len(names) == 1 else None


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


def resources(gpus: int, cpus_per_node: float, per_gpu: int) -> tuple[dict, dict]:
    """Ray resources of a training task and of a benchmark actor. With GPUs, `per_gpu` trainings share a
    GPU and an actor takes a whole one, so Ray places one actor per GPU on every node. On a CPU-only
    cluster a training takes one CPU and an actor every CPU of a node (its timings still run alone)."""
    if gpus > 0:
        return {"num_gpus": 1.0 / per_gpu, "num_cpus": 1}, {"num_gpus": 1, "num_cpus": 1}
    return {"num_cpus": 1}, {"num_cpus": cpus_per_node}


def _run(spec: SweepSpec, data: Cifar, run_dir: Path, pending: list[Variant], hashes: dict[str, str],
         cluster: dict[str, Any], log: Callable[[str], None], deadline: Deadline, steps: StepLog) -> None:
    """Train what the pending variants need, then the bench and re-check phases."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    cpu_per_node = min((n["Resources"].get("CPU", 1) for n in nodes), default=1)
    train_opts, actor_opts = resources(cluster["gpus"], cpu_per_node, spec.train.per_gpu)
    n_actors = cluster["gpus"] or len(nodes)
    needed = {v.model for v in pending}
    needed |= {spec.model(k).teacher for k in needed if spec.model(k).teacher}
    data_ref = ray.put(data)
    refs: dict[str, Any] = {}
    queue: list[TrainSpec] = []
    for m in training.train_order([spec.model(k) for k in needed], len(data.train_y)):
        cached = _load_checkpoint(run_dir, m, data, log)
        if cached is None:
            queue.append(m)
        else:
            log(f"reusing checkpoint of {m.key} ({cached['top1_pct']:.2f}% fp32) from {run_dir / 'checkpoints'}")
            refs[m.key] = ray.put(cached)
    pairs = resume.pairs_to_time(spec, run_dir, pending)
    progress = Progress(plan(spec, queue, pending, pairs), log=log, bar=log is print and sys.stdout.isatty())
    slots = max(1, cluster["gpus"] * spec.train.per_gpu if cluster["gpus"] else cluster.get("cpus") or 1)
    log(f"plan: {len(queue)} training(s), {len(pending)} variant(s), {len(pairs)} pair(s), at most "
        f"{progress.plan['twin']} twin(s) and {progress.plan['recheck']} re-check(s): {progress.total} tasks")
    progress.begin("train")
    errors = training.run(queue, refs, data_ref, train_opts, slots, run_dir, spec.name, progress, deadline, steps)
    ready = [v for v in pending if refs.get(v.model) is not None]
    for v in pending:
        if refs.get(v.model) is None:
            _land_untrained(v, spec, run_dir, hashes, progress, errors.get(v.model, "no checkpoint"))
    progress.begin("bench")
    models = {k: (spec.model(k), ref) for k, ref in refs.items() if ref is not None}
    progress.skip("bench", sum(b.model not in models for _, b in pairs), "a pair whose model did not train")
    pairs = [(a, b) for a, b in pairs if b.model in models]
    common = dict(spec=spec, run_dir=run_dir, models=models, data_ref=data_ref, hashes=hashes, actor_opts=actor_opts,
                  n_actors=n_actors, progress=progress, steps=steps, deadline=deadline, log=log)
    bench_phase.run(bench_phase.Phase(variants=ready, pairs=pairs, **common))
    due = resume.witnesses_due(spec, run_dir)
    if spec.bench.processes > 1:  # every ok row timed in a second process: its interval's between-process part
        twins = _witnessed_by(spec, run_dir, data, models, due.get("twins", []))
        progress.skip("twin", progress.plan["twin"] - len(twins), "rows not ok, or timed twice already")
        progress.begin("twin")
        bench_phase.run(bench_phase.Phase(variants=twins, witness="twin", **common))
    if spec.bench.recheck >= 0:
        chosen = _witnessed_by(spec, run_dir, data, models, due.get("rechecks", []))
        progress.skip("recheck", progress.plan["recheck"] - len(chosen), "not drawn, or re-checked already")
        progress.begin("recheck")
        bench_phase.run(bench_phase.Phase(variants=chosen, witness="recheck", **common))
    progress.finish("planned but not run (a model that did not train, an actor that died)")


def plan(spec: SweepSpec, queue: list, pending: list, pairs: list) -> dict[str, int]:
    """Tasks per phase, known before the first one starts: twins and re-checks at their most (every
    variant; the named ones, the chosen one and `recheck` more), the ones not needed counted done later."""
    n = len(spec.variants)
    named = sum(bool(v.brief_id) for v in spec.variants)
    return {"train": len(queue), "bench": len(pending) + len(pairs), "twin": n if spec.bench.processes > 1 else 0,
            "recheck": min(n, named + 1 + spec.bench.recheck) if spec.bench.recheck >= 0 else 0}


def _witnessed_by(spec: SweepSpec, run_dir: Path, data: Cifar, models: dict, due: list[str]) -> list:
    """The variants of `due` (from resume.witnesses_due) with their models loaded (a witness left by a stopped
    invocation needs its checkpoint)."""
    chosen = [v for v in spec.variants if v.variant_id in due]
    for key in {v.model for v in chosen} - set(models):
        cached = _load_checkpoint(run_dir, spec.model(key), data, log=lambda _: None)
        if cached is not None:
            models[key] = (spec.model(key), ray.put(cached))
    return [v for v in chosen if v.model in models]


def _land_untrained(v: Variant, spec: SweepSpec, run_dir: Path, hashes: dict, progress: Progress, cause: str) -> None:
    m = spec.model(v.model)
    row = {"sweep": spec.name, "variant_id": v.variant_id, "brief_id": v.brief_id, "label": v.label,
           "model": v.model, "arch": m.arch, **v.axes(), "status": "error", "repeat": 0, "spec_hash": hashes[v.variant_id],
           "error": f"training of model '{v.model}' failed: {cause}", "finished_at": now()}
    results.write_rows([row], run_dir / "results" / f"{v.variant_id}.parquet", RESULT_SCHEMA)
    progress.landed(f"bench:{v.variant_id}", "error", row["error"].splitlines()[0][:200])
