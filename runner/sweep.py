"""The sweep: plan Ray tasks from a SweepSpec, run them on every GPU at once, write each row as it lands.

    python -m runner sweep --config variants/default.yaml [--address auto] [--data PATH]

Plan (a DAG Ray resolves by itself): one train task per model; a distilled model's task takes its
teacher's checkpoint ObjectRef as an argument, so Ray starts it when the teacher is done; one bench task
per variant takes its model's checkpoint ref. Every task asks for a whole GPU (num_gpus=1), so a
benchmark never shares its device with training or with another benchmark. The driver submits everything,
then collects with `ray.wait` and writes each result to Parquet the moment it lands (nothing finished is
ever lost); re-running the same command skips what is already done.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import ray
import torch

from runner import env, results
from runner.data import Cifar, DeviceBatches
from runner.results import RESULT_SCHEMA, SAMPLES_SCHEMA, TRAINING_SCHEMA
from variants import BenchSpec, SweepSpec, TrainSpec, Variant
from variants.loader import stable_hash

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _task_device() -> torch.device:
    """The GPU Ray gave this task (CUDA_VISIBLE_DEVICES holds just it), else the CPU."""
    if ray.get_gpu_ids() and torch.cuda.is_available():
        torch.cuda.set_device(0)
        return torch.device("cuda", 0)
    return torch.device("cpu")


def variant_hash(variant: Variant, model: TrainSpec, bench: BenchSpec, data_source: str) -> str:
    """What must match for a finished row to count as done on a re-run."""
    return stable_hash({"variant": variant.axes(), "model": model.spec_hash, "bench": dataclasses.asdict(bench),
                         "data": data_source})


# ---- Ray tasks (module-level functions; every input arrives as an argument) ----------------------------

def train_job(spec: TrainSpec, data: Cifar, teacher_ckpt: dict | None, sweep: str) -> dict:
    from runner.train import train

    device = _task_device()
    ckpt = train(spec, data, device, teacher_ckpt=teacher_ckpt)
    ckpt["rows"] = training_rows(spec, ckpt, device, sweep)
    return ckpt


def training_rows(spec: TrainSpec, ckpt: dict, device: torch.device, sweep: str) -> list[dict]:
    base = {"sweep": sweep, "model": spec.key, "arch": spec.arch, "teacher": spec.teacher, "status": "ok",
            "epochs": ckpt["epochs"], "seed": spec.seed, "spec_hash": spec.spec_hash,
            "recipe_json": ckpt["recipe_json"], "data_source": ckpt["data_source"], "finished_at": _now(),
            "ray_node_id": ray.get_runtime_context().get_node_id(),  # which Ray node trained it (multi-node runs)
            **env.device_info(device)}
    vers = env.versions()
    base.update(torch_version=vers["torch_version"], git_commit=vers["git_commit"])
    rows = [{**base, **e} for e in ckpt["log"]]
    # The last row is the model's summary: fp32 accuracy of the final weights and the whole run's speed.
    rows.append({**base, "epoch": ckpt["epochs"], "top1_pct": ckpt["top1_pct"], "train_s": ckpt["train_s"],
                 "train_img_per_s": ckpt["train_img_per_s"]})
    return rows


def bench_job(variant: Variant, model_spec: TrainSpec, ckpt: dict, data: Cifar, bench: BenchSpec,
               sweep: str, spec_hash: str) -> tuple[list[dict], list[dict]]:
    """Prepare one variant, measure its accuracy and batch-1 latency; never raises for a variant's fault."""
    from runner import bench as bench_mod
    from runner import optimize
    from runner.evaluate import accuracy
    from runner.train import model_from_checkpoint

    device = _task_device()
    base = {"sweep": sweep, "variant_id": variant.variant_id, "brief_id": variant.brief_id,
            "label": variant.label, "model": variant.model, "arch": model_spec.arch, **variant.axes(),
            "teacher": model_spec.teacher, "seed": model_spec.seed, "spec_hash": spec_hash,
            "data_source": ckpt["data_source"], "warmup": bench.warmup, "iters": bench.iters,
            "config_json": json.dumps({"variant": dataclasses.asdict(variant),
                                       "model": dataclasses.asdict(model_spec),
                                       "bench": dataclasses.asdict(bench)}, default=str, sort_keys=True),
            "ray_node_id": ray.get_runtime_context().get_node_id(),  # which Ray node measured it (multi-node runs)
            **env.versions(), **env.device_info(device)}
    try:
        optimize.strict_fp32()
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # pick the fastest kernels during warm-up, as in deployment
        model = model_from_checkpoint(ckpt, device)
        prepared = optimize.prepare(model, variant, device)
        fn, x, compile_s = prepared.runner(1)
        before = env.nvml_state(base["gpu_uuid"])
        samples = bench_mod.measure(fn, x, warmup=bench.warmup, iters=bench.iters, repeats=bench.repeats)
        after = env.nvml_state(base["gpu_uuid"])
        # Accuracy through the same prepared model, at a large batch (its own static graph / compile).
        test = data.subset(0, model_spec.recipe.test_subset)
        eval_fn, _, _ = prepared.runner(min(bench.eval_batch_size, len(test.test_y)))
        batches = DeviceBatches(test.test_x, test.test_y, device, min(bench.eval_batch_size, len(test.test_y)),
                                train=False)
        top1 = accuracy(eval_fn, batches, prepare_input=prepared.cast_input)
    except optimize.Unsupported as e:
        return [{**base, "status": "skipped", "error": str(e), "repeat": 0, "finished_at": _now()}], []
    except Exception as e:  # a crash, an OOM, an unsupported compile: a row that says so, and the sweep goes on
        tb = traceback.format_exc(limit=6)
        return [{**base, "status": "error", "error": f"{type(e).__name__}: {e}\n{tb}"[:4000], "repeat": 0,
                 "finished_at": _now()}], []
    base.update(status="ok", error=None, top1_pct=top1, top1_drift_pts=top1 - ckpt["top1_pct"],
                compile_s=compile_s, size_mb=prepared.size_mb, params=prepared.params,
                gpu_exclusive=_both(before["gpu_exclusive"], after["gpu_exclusive"]),
                gpu_other_pids=before["gpu_other_pids"] or after["gpu_other_pids"],
                sm_clock_mhz_before=before["sm_clock_mhz"], sm_clock_mhz_after=after["sm_clock_mhz"],
                temp_c_before=before["temp_c"], temp_c_after=after["temp_c"],
                driver_version=before["driver_version"], finished_at=_now())
    rows = [{**base, **r} for r in bench_mod.repeat_rows(samples, bench.cv_flag_pct)]
    raw = [{"variant_id": variant.variant_id, "repeat": r, "iter": i, "lat_ms": float(a), "host_ms": float(h)}
           for r, s in enumerate(samples) for i, (a, h) in enumerate(zip(s.lat_ms, s.host_ms))]
    return rows, raw


def _both(a, b):
    return None if a is None or b is None else bool(a and b)


# The remote wrappers are made from the plain functions (not with the decorator) so that Ray pickles a
# reference to an importable function rather than its code and globals. max_retries covers a worker that
# dies (OOM kill, lost node); an exception inside a job is not retried, it becomes an error row.
train_task = ray.remote(max_retries=1)(train_job)
bench_task = ray.remote(max_retries=1)(bench_job)


# ---- driver --------------------------------------------------------------------------------------------

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
    ctx = ray.init(address=address, runtime_env=runtime_env, include_dashboard=True,
                   log_to_driver=True, logging_level="WARNING")
    res = ray.cluster_resources()
    gpus = int(res.get("GPU", 0))
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    url = getattr(ctx, "dashboard_url", None)
    if url:
        log(f"Ray dashboard: http://{url}  (tasks are named train:<model> and bench:<variant>)")
        if os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
            log("  token authentication is on: the dashboard asks for the token that `ray get-auth-token` "
                "prints (stored in ~/.ray/auth_token); API calls need `Authorization: Bearer <token>`.")
    log(f"Ray cluster: {len(nodes)} node(s), {gpus} GPU(s), {int(res.get('CPU', 0))} CPU(s)")
    _probe_workers()
    return {"gpus": gpus, "nodes": len(nodes), "cpus": int(res.get("CPU", 0))}


class WorkerStartError(RuntimeError):
    """Ray workers could not run a task (they cannot import ray, torch or this project)."""


def worker_probe() -> str:
    import runner.train  # noqa: F401  (the import a real task needs first)
    return torch.__version__


def _probe_workers(timeout_s: float = 180.0) -> None:
    """Fail in minutes, with a reason, when workers cannot start (Ray retries a crashing worker forever)."""
    try:
        ray.get(ray.remote(num_cpus=0)(worker_probe).options(name="probe").remote(), timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        raise WorkerStartError(
            f"no Ray worker could run a task within {timeout_s:.0f} s. Workers must be able to import ray, "
            f"torch and this project ({PROJECT_ROOT}); look for ModuleNotFoundError in the lines above "
            f"or in /tmp/ray/session_latest/logs/.") from None


def run_sweep(spec: SweepSpec, data: Cifar, run_dir: Path, *, address: str | None = None,
              shortened_note: str = "", log: Callable[[str], None] = print) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "resolved_config.json").write_text(json.dumps(spec.to_dict(), indent=2, default=str))
    done = _finished_rows(run_dir)
    hashes = {v.variant_id: variant_hash(v, spec.model(v.model), spec.bench, data.source) for v in spec.variants}
    pending = [v for v in spec.variants if done.get(v.variant_id) != hashes[v.variant_id]]
    skipped_done = len(spec.variants) - len(pending)
    if skipped_done:
        log(f"resuming: {skipped_done} variant(s) already finished in {run_dir}, {len(pending)} to run")
    started = _now()
    try:
        cluster = start_ray(address, log)
        _run(spec, data, run_dir, pending, hashes, cluster, log)
    finally:  # also on Ctrl-C or a crash: whatever landed is merged and readable
        ray.shutdown()
        results.merge(run_dir)
    meta = {"name": spec.name, "source_file": spec.source_file, "shortened": bool(shortened_note),
            "shortened_note": shortened_note, "data_source": data.source, "started_at": started,
            "finished_at": _now(), "cluster": cluster, "config": spec.to_dict(), "accuracy_bar_pct": 85.0}
    prev = run_dir / "sweep.json"
    if prev.exists():  # a resumed sweep keeps the times of its earlier invocations
        old = json.loads(prev.read_text())
        meta["previous_runs"] = old.get("previous_runs", []) + [
            {k: old.get(k) for k in ("started_at", "finished_at", "wall_s")}]
    meta["wall_s"] = (datetime.fromisoformat(meta["finished_at"]) - datetime.fromisoformat(started)).total_seconds()
    prev.write_text(json.dumps(meta, indent=2, default=str))
    from runner.report import build_report
    return build_report(run_dir)


def _finished_rows(run_dir: Path) -> dict[str, str]:
    """variant_id -> spec_hash of rows already on disk that need no re-run (ok or skipped)."""
    df = results.read_folder(run_dir / "results", RESULT_SCHEMA)
    df = df[df["status"].isin(["ok", "skipped"])]
    return dict(zip(df["variant_id"], df["spec_hash"]))


def _load_checkpoint(run_dir: Path, spec: TrainSpec, data: Cifar) -> dict | None:
    """A checkpoint of an earlier run of this sweep, if it was trained from the same spec on the same data."""
    path = run_dir / "checkpoints" / f"{spec.key}.pt"
    if not path.exists():
        return None
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
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
         cluster: dict[str, Any], log: Callable[[str], None]) -> None:
    cpu_per_node = min((n["Resources"].get("CPU", 1) for n in ray.nodes() if n.get("Alive")), default=1)
    train_opts, bench_opts = task_resources(cluster["gpus"], cpu_per_node)

    needed = {v.model for v in pending}
    needed |= {spec.model(k).teacher for k in needed if spec.model(k).teacher}
    data_ref = ray.put(data)
    ckpt_refs: dict[str, ray.ObjectRef] = {}
    waiting: dict[ray.ObjectRef, tuple[str, Any]] = {}
    # Teachers first (a student's task takes its teacher's checkpoint ref), whatever order the YAML uses.
    for m in sorted((spec.model(k) for k in needed), key=lambda m: m.teacher is not None):
        cached = _load_checkpoint(run_dir, m, data)
        if cached is not None:
            log(f"reusing checkpoint of {m.key} ({cached['top1_pct']:.2f}% fp32) from {run_dir / 'checkpoints'}")
            ckpt_refs[m.key] = ray.put(cached)
            continue
        teacher_ref = ckpt_refs.get(m.teacher) if m.teacher else None
        ref = train_task.options(name=f"train:{m.key}", **train_opts).remote(m, data_ref, teacher_ref, spec.name)
        ckpt_refs[m.key] = ref
        waiting[ref] = ("train", m)
    for v in pending:
        m = spec.model(v.model)
        ref = bench_task.options(name=f"bench:{v.variant_id}", **bench_opts).remote(
            v, m, ckpt_refs[v.model], data_ref, spec.bench, spec.name, hashes[v.variant_id])
        waiting[ref] = ("bench", v)

    progress = Progress(total=len(waiting), log=log)
    log(f"submitted {sum(k == 'train' for k, _ in waiting.values())} training and "
        f"{sum(k == 'bench' for k, _ in waiting.values())} benchmark task(s)")
    while waiting:
        ready, _ = ray.wait(list(waiting), num_returns=1)
        kind, item = waiting.pop(ready[0])
        if kind == "train":
            _land_training(ready[0], item, run_dir, spec.name, progress)
        else:
            _land_bench(ready[0], item, spec.model(item.model), run_dir, spec.name, hashes, progress)


def _land_training(ref, m: TrainSpec, run_dir: Path, sweep: str, progress: Progress) -> None:
    try:
        ckpt = ray.get(ref)
    except Exception as e:
        msg = _short(e)
        results.write_rows([{"sweep": sweep, "model": m.key, "arch": m.arch, "teacher": m.teacher,
                             "status": "error", "error": msg, "spec_hash": m.spec_hash, "finished_at": _now()}],
                           run_dir / "training" / f"{m.key}.parquet", TRAINING_SCHEMA)
        progress.landed(f"train:{m.key}", "error", msg.splitlines()[0][:200])
        return
    rows = ckpt.pop("rows")
    path = run_dir / "checkpoints" / f"{m.key}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path.with_suffix(".tmp"))
    os.replace(path.with_suffix(".tmp"), path)
    results.write_rows(rows, run_dir / "training" / f"{m.key}.parquet", TRAINING_SCHEMA)
    progress.landed(f"train:{m.key}", "ok", f"top1 {ckpt['top1_pct']:.2f}%  {ckpt['train_s']:.1f}s "
                    f"{ckpt['train_img_per_s']:,.0f} img/s")


def _land_bench(ref, v: Variant, m: TrainSpec, run_dir: Path, sweep: str, hashes: dict[str, str],
                progress: Progress) -> None:
    try:
        rows, raw = ray.get(ref)
    except Exception as e:  # the task died (its model failed to train, OOM kill, node lost): still a row
        # Ray fails a task whose argument (here: the model's checkpoint) could not be computed.
        upstream = "input arguments for this task could not be computed" in str(e)
        cause = f"training of model '{v.model}' failed: " if upstream else ""
        rows, raw = [{"sweep": sweep, "variant_id": v.variant_id, "brief_id": v.brief_id, "label": v.label,
                      "model": v.model, "arch": m.arch, **v.axes(), "status": "error",
                      "error": cause + _short(e), "repeat": 0, "spec_hash": hashes[v.variant_id],
                      "finished_at": _now()}], []
    results.write_rows(rows, run_dir / "results" / f"{v.variant_id}.parquet", RESULT_SCHEMA)
    if raw:
        results.write_rows(raw, run_dir / "samples" / f"{v.variant_id}.parquet", SAMPLES_SCHEMA)
    r = rows[0]
    if r["status"] == "ok":
        p50 = sorted(x["lat_p50_ms"] for x in rows)[len(rows) // 2]
        detail = (f"top1 {r['top1_pct']:.2f}%  p50 {p50:.3f} ms  {r['gpu_name'] or 'cpu'}"
                  + ("" if r.get("gpu_exclusive") is not False else "  NOT EXCLUSIVE"))
    else:
        detail = (r["error"] or "").splitlines()[0][:200]
    progress.landed(f"bench:{v.variant_id}", r["status"], detail)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _short(e: BaseException) -> str:
    """The exception as one readable string (Ray colours its task names; the colours go)."""
    return _ANSI.sub("", f"{type(e).__name__}: {e}")[:4000]
