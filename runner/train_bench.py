"""Train models of a sweep file on one device and tabulate time, throughput and accuracy (no Ray).

    python -m runner train-bench --config variants/default.yaml --models resnet18,mobilenet --seeds 0,1,2

`--models` takes the model keys of the config (default: all). A distilled model needs its teacher:
the teacher is trained first, in this process, once per seed (reused when it is in the list too; its
rows say `requested=False` when it was only trained to teach). Each model is trained with
`runner.train.train`, so recipes, timing (train_s: training epochs only, synchronized, no evaluation)
and fp32 top-1 are the sweep's. With several seeds, a per-model summary gives mean / min / max / spread
of top-1: the seed-to-seed noise that any accuracy comparison has to beat.
Output: one Parquet row per model x seed; the per-epoch log is in the `log_json` column.
"""
from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Callable, NamedTuple

import pandas as pd
import torch

from runner import env
from runner.data import load
from runner.results import write_frame
from runner.train import train
from variants import SpecError, TrainSpec, load_sweep


def parse_seeds(text: str | None, default: int) -> list[int]:
    if not text:
        return [default]
    return [int(s) for s in text.split(",") if s.strip()]


def select_models(spec, names: str | None) -> list[TrainSpec]:
    """The requested TrainSpecs, in config order; unknown keys fail with the keys that exist."""
    if not names:
        return list(spec.models)
    want = [n.strip() for n in names.split(",") if n.strip()]
    keys = [m.key for m in spec.models]
    unknown = [n for n in want if n not in keys]
    if unknown:
        raise SpecError(f"{spec.source_file}: no model {', '.join(unknown)}; models there: {', '.join(keys)}")
    return [m for m in spec.models if m.key in want]


class Step(NamedTuple):
    """One training of the plan: the spec (seed set), whether the user asked for it, its teacher's seed."""
    spec: TrainSpec
    requested: bool
    teacher_seed: int | None = None


def plan(spec, requested: list[TrainSpec], seeds: list[int], teacher_seed: int | None = None) -> list[Step]:
    """The trainings in order: every teacher before its students.

    A teacher is trained once per student seed, or once in all with `teacher_seed` (then every student
    seed learns from the same teacher, and the students' seed-to-seed spread is the students' own).
    """
    order: list[Step] = []
    req_keys = {m.key for m in requested}
    trained: set[tuple[str, int]] = set()       # (key, seed) trained so far, in any pass
    for seed in seeds:
        this_pass: set[tuple[str, int]] = set()  # one pass per entry of `seeds`: --seeds 0,0 trains twice
        for m in requested:
            t_seed = (seed if teacher_seed is None else teacher_seed) if m.teacher else None
            if m.teacher and (m.teacher, t_seed) not in trained:
                teacher = spec.model(m.teacher)
                order.append(Step(dataclasses.replace(teacher, seed=t_seed), m.teacher in req_keys and t_seed == seed))
                trained.add((m.teacher, t_seed))
                this_pass.add((m.teacher, t_seed))
            if (m.key, seed) not in this_pass:    # a requested teacher already trained for its student
                order.append(Step(dataclasses.replace(m, seed=seed), True, t_seed))
                trained.add((m.key, seed))
                this_pass.add((m.key, seed))
    return order


def run_one(m: TrainSpec, data, device: torch.device, teacher_ckpt: dict | None, requested: bool) -> tuple[dict, dict]:
    """Train one (model, seed); return (table row, checkpoint). Wall time includes building and evaluation."""
    t0 = time.perf_counter()
    ckpt = train(m, data, device, teacher_ckpt=teacher_ckpt)
    wall = time.perf_counter() - t0
    # Steady throughput: the median img/s of epochs 2.., as epoch 1 also pays one-time costs (cuDNN
    # autotuning, compilation).
    rates = [e["train_img_per_s"] for e in ckpt["log"][1:]] or [e["train_img_per_s"] for e in ckpt["log"]]
    row = {"model": m.key, "arch": m.arch, "arch_args_json": json.dumps(dict(m.arch_args), sort_keys=True),
           "teacher": m.teacher, "requested": requested, "seed": m.seed, "epochs": ckpt["epochs"],
           "train_s": ckpt["train_s"], "wall_s": wall, "train_img_per_s": ckpt["train_img_per_s"],
           "top1_pct": ckpt["top1_pct"], "batch_size": m.recipe.batch_size, "spec_hash": m.spec_hash,
           "recipe_json": ckpt["recipe_json"], "data_source": ckpt["data_source"],
           "steady_img_per_s": float(pd.Series(rates).median()), "log_json": json.dumps(ckpt["log"])}
    return row, ckpt


def train_all(spec, order: list[Step], data, device: torch.device,
              on_row: Callable[[list[dict]], None] | None = None) -> list[dict]:
    """Train in plan order; keep only the checkpoints a later student needs (teachers), keyed by (key, seed).
    `on_row(rows so far)` is called after every training, so a run cut short keeps what finished."""
    teachers = {step.spec.teacher for step in order if step.spec.teacher}
    ckpts: dict[tuple[str, int], dict] = {}
    rows = []
    for m, requested, t_seed in order:
        teacher_ckpt = ckpts[(m.teacher, t_seed)] if m.teacher else None
        row, ckpt = run_one(m, data, device, teacher_ckpt, requested)
        row["teacher_seed"] = t_seed
        row["teacher_top1_pct"] = teacher_ckpt["top1_pct"] if teacher_ckpt else None
        if m.key in teachers:
            ckpts[(m.key, m.seed)] = ckpt
        rows.append(row)
        if on_row is not None:
            on_row(rows)
    return rows


def print_table(df: pd.DataFrame) -> None:
    """Every training, then top-1 over seeds for the models trained with more than one."""
    head = (f"{'model':<16} {'arch':<26} {'teacher':<10} {'seed':>4} {'epochs':>6} {'train_s':>8} "
            f"{'img/s':>10} {'img/s ep2+':>10} {'top1 %':>7}")
    print(head)
    print("-" * len(head))
    for r in df.itertuples():
        name = r.model + ("" if r.requested else " (t)")
        teacher = r.teacher if isinstance(r.teacher, str) else "-"  # pandas turns a missing teacher into NaN
        print(f"{name:<16} {r.arch:<26} {teacher:<10} {r.seed:>4} {r.epochs:>6} {r.train_s:>8.1f} "
              f"{r.train_img_per_s:>10,.0f} {r.steady_img_per_s:>10,.0f} {r.top1_pct:>7.2f}")
    print("train_s: training epochs only (no evaluation); img/s over all epochs; ep2+: median after epoch 1")
    if not df["requested"].all():
        print("(t) trained only as a teacher, not requested")
    summary = seed_summary(df)
    if summary.empty:
        return
    print(f"\n{'top-1 over seeds':<16} {'seeds':>5} {'mean':>7} {'min':>7} {'max':>7} {'spread':>7}")
    for model, r in summary.iterrows():
        print(f"{model:<16} {int(r['seeds']):>5} {r['mean']:>7.2f} {r['min']:>7.2f} {r['max']:>7.2f} "
              f"{r['spread']:>7.2f}")


def seed_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per model with more than one seed: top-1 mean / min / max / spread (max - min)."""
    g = df.groupby("model", sort=False)["top1_pct"]
    s = pd.DataFrame({"seeds": g.size(), "mean": g.mean(), "min": g.min(), "max": g.max()})
    s["spread"] = s["max"] - s["min"]
    return s[s["seeds"] > 1]


def run(args) -> int:
    """`python -m runner train-bench` (options: runner/cli.py)."""
    try:
        spec = load_sweep(args.config).capped(max_epochs=args.max_epochs)
        requested = select_models(spec, args.models)
    except SpecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    data = load(args.data or spec.data.source, spec.data.root)  # a DataError: one line from runner/cli.py
    order = plan(spec, requested, parse_seeds(args.seeds, spec.seed), args.teacher_seed)
    info = env.device_info(device)
    print(f"train_bench: {len(order)} training run(s) on {device} ({info['gpu_name'] or 'cpu'}); data: {data.source}")
    vers = env.versions()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save(rows: list[dict]) -> pd.DataFrame:
        df = pd.DataFrame(rows).assign(
            config=spec.source_file, device=info["device"], gpu_name=info["gpu_name"], gpu_uuid=info["gpu_uuid"],
            torch_version=vers["torch_version"], git_commit=vers["git_commit"], hostname=vers["hostname"])
        write_frame(df, out)
        return df

    df = save(train_all(spec, order, data, device, on_row=save))
    print()
    print_table(df)
    print(f"\nwrote {out}")
    return 0
