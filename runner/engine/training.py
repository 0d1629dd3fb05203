"""The train phase: one Ray task per model, several per GPU, the longest chain first; checkpoints on disk.

Training never shares a process with timing: each task runs in a fresh worker (`max_calls=1`) that exits
after it, and the benchmark actors start only when every training has landed. Several trainings share a
GPU (`train.per_gpu` in the sweep file): a light net at batch 512 leaves an H200 mostly idle between its
small kernels, so two or three processes fill it; with deterministic cuDNN a seed still gives the same
weights whatever runs beside it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import ray
import torch

from runner import env, files, guard, results
from runner.engine import rows as R
from runner.engine.control import Deadline, Progress, Stopped, wait_one
from runner.engine.steps import StepLog, now
from runner.results import TRAINING_SCHEMA
from variants import TrainSpec

# Relative cost per architecture: (training us per image, eager batch-1 ms per call), from
# reports/h200-training and reports/h200x2-default; they order work (longest first), never decide it.
ARCH_COST = {"resnet18": (16.0, 2.3), "mobilenet_v3": (55.0, 5.5), "shufflenet_v2": (60.0, 5.6),
             "airbench": (9.0, 1.0), "fastnet": (11.0, 0.8)}
DEFAULT_COST = (30.0, 3.0)


def arch_cost(arch: str) -> tuple[float, float]:
    return next((c for prefix, c in ARCH_COST.items() if arch.startswith(prefix)), DEFAULT_COST)


def train_cost(m: TrainSpec, n_train: int = 50_000) -> float:
    images = min(m.recipe.train_subset or n_train, n_train)
    return m.recipe.epochs * images * arch_cost(m.arch)[0]


def train_order(models: list[TrainSpec], n_train: int = 50_000) -> list[TrainSpec]:
    """Longest *chain* first: a teacher counts with its longest student, so a distillation's teacher starts
    first even when another model alone trains longer."""
    def chain(m: TrainSpec) -> float:
        return train_cost(m, n_train) + max((chain(s) for s in models if s.teacher == m.key), default=0.0)
    return sorted(models, key=lambda m: -chain(m))


def next_training(queue: list[TrainSpec], landed: set[str]) -> TrainSpec | None:
    """The first of `queue` that can start now (no teacher, or its teacher landed). The driver hands out
    one free slot at a time: submitted all at once, a student (ready only when its teacher lands) queued
    behind trainings submitted after it and ran alone at the phase's end (reports/h200x2-default/)."""
    return next((m for m in queue if m.teacher is None or m.teacher in landed), None)


def train_job(spec: TrainSpec, data, teacher_ckpt: dict | None, sweep: str) -> dict:
    """Inside the Ray task: train, return the checkpoint with its rows (`rows`) and its step (`step`)."""
    from runner.train import train

    started = R.stamp()
    use_gpu = bool(ray.get_gpu_ids()) and torch.cuda.is_available()
    device = torch.device("cuda", 0) if use_gpu else torch.device("cpu")
    if not use_gpu:
        # One torch thread per CPU the task holds, said here rather than left to the OMP_NUM_THREADS that Ray
        # sets only when the variable is unset (a worker started with it set would use as many as it says).
        torch.set_num_threads(R.task_threads())
    ckpt = train(spec, data, device, teacher_ckpt=teacher_ckpt)
    info, where = env.device_info(device), R.place()
    base = {"sweep": sweep, "model": spec.key, "arch": spec.arch, "teacher": spec.teacher, "status": "ok",
            "torch_threads": torch.get_num_threads(), "nice": os.nice(0),
            "epochs": ckpt["epochs"], "seed": spec.seed, "spec_hash": spec.spec_hash, "recipe_json": ckpt["recipe_json"],
            "data_source": ckpt["data_source"], "started_at": started, **info,
            **{k: where[k] for k in ("torch_version", "git_commit", "ray_node_id", "pid")}}
    ckpt["rows"] = [{**base, **e, "finished_at": R.stamp()} for e in ckpt["log"]]
    # The last row is the model's summary: fp32 accuracy of the final weights and the whole run's speed.
    ckpt["rows"].append({**base, "epoch": ckpt["epochs"], "top1_pct": ckpt["top1_pct"], "train_s": ckpt["train_s"],
                         "train_img_per_s": ckpt["train_img_per_s"], "finished_at": R.stamp()})
    ckpt["step"] = {"kind": "train", "name": spec.key, "start": started, "end": R.stamp(), "pid": where["pid"],
                    "node": where["ray_node_id"], "gpu_uuid": info.get("gpu_uuid"), "hostname": where.get("hostname")}
    return ckpt


train_task = ray.remote(max_retries=1, max_calls=1)(train_job)


def land(ref, m: TrainSpec, run_dir: Path, sweep: str, progress: Progress) -> tuple[str | None, dict | None]:
    """Write the training's rows and checkpoint; return (None, its step), or (the error, None): the error's
    first line is the real cause."""
    try:
        ckpt = ray.get(ref)
    except Exception as e:
        msg = guard.task_error_text(e)  # first line: the exception inside the task, not Ray's wrapper
        results.write_rows([{"sweep": sweep, "model": m.key, "arch": m.arch, "teacher": m.teacher, "status": "error",
                             "error": msg, "spec_hash": m.spec_hash, "finished_at": now()}],
                           run_dir / "training" / f"{m.key}.parquet", TRAINING_SCHEMA)
        progress.landed(f"train:{m.key}", "error", msg.splitlines()[0][:200])
        return msg, None
    rows, step = ckpt.pop("rows"), ckpt.pop("step", None)
    files.write_via_memory(run_dir / "checkpoints" / f"{m.key}.pt", lambda f: torch.save(ckpt, f))
    results.write_rows(rows, run_dir / "training" / f"{m.key}.parquet", TRAINING_SCHEMA)
    progress.landed(f"train:{m.key}", "ok", f"top1 {ckpt['top1_pct']:.2f}%  {ckpt['train_s']:.1f}s "
                    f"{ckpt['train_img_per_s']:,.0f} img/s")
    return None, step


def run(queue: list[TrainSpec], refs: dict[str, Any], data_ref, opts: dict, slots: int, run_dir: Path, sweep: str,
        progress: Progress, deadline: Deadline, steps: StepLog) -> dict[str, str]:
    """Train `queue` (priority order); `refs` maps model -> checkpoint ref and gains the new ones (None for
    a failed one). Returns model -> error. Raises Stopped when the deadline left trainings unstarted."""
    landed, errors = set(refs), {}
    training: dict[ray.ObjectRef, tuple[TrainSpec, str]] = {}
    while training or (queue and not deadline.passed()):
        while queue and len(training) < slots and not deadline.passed():
            m = next_training(queue, landed) or (queue[0] if not training else None)
            if m is None:
                break
            queue.remove(m)
            teacher = refs.get(m.teacher) if m.teacher else None
            ref = train_task.options(name=f"train:{m.key}", **opts).remote(m, data_ref, teacher, sweep)
            training[ref] = (m, now())
            refs[m.key] = ref
        ref = wait_one(list(training), progress, lambda: ", ".join(f"train:{m.key}" for m, _ in training.values())
                       + (f"; {len(queue)} waiting for a slot or a teacher" if queue else ""))
        m, submitted = training.pop(ref)
        error, step = land(ref, m, run_dir, sweep, progress)
        steps.add(step, submitted=submitted, status="error" if error else "ok", kind="train", name=m.key)
        landed.add(m.key)
        if error:
            refs[m.key] = None
            errors[m.key] = error
    if queue:
        raise Stopped("train", len(queue))
    return errors
