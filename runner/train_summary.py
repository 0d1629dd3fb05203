"""Merge train_bench outputs into one training table and summarise it in markdown (per model and recipe).

    python -m runner train-summary runs/train_bench/*.parquet \
        [--merged-out runs/training.parquet] [--markdown-out runs/training.md]

(reports/h200-training/ was made so, by the code of its commit; this code reads only its own schema version.)

Each input is one `python -m runner train-bench` output. A row keeps its file as `job` (the file's stem)
and its folder as `round`. The summary has one line per (round, job, model): the seeds, top-1 per seed and
mean / spread, training seconds (max over seeds: the number a time budget must hold for every seed) and
images/s; same-seed repeats are reported as such, since a repeat is how run-to-run reproducibility is shown.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from runner import files
from runner.report_format import markdown_table
from runner.results import write_frame
from runner.schema import read, read_schema


# The train_bench columns the summary reads; a file without them is not a train_bench output.
NEEDED = ("model", "teacher", "requested", "seed", "epochs", "batch_size", "train_s", "train_img_per_s",
          "steady_img_per_s", "top1_pct", "gpu_name")


def collect(paths: list[str | Path]) -> pd.DataFrame:
    frames = []
    for p in map(Path, paths):
        if not p.is_file():  # pyarrow's own error names only the path
            raise ValueError(f"{p}: {'a folder, not a file' if p.is_dir() else 'no such file'} (expected a "
                             "train-bench Parquet output)")
        missing = [c for c in NEEDED if c not in read_schema(p).names]  # a footer over the cap: FileError
        if missing:
            raise ValueError(f"{p}: not a train_bench output (no column {', '.join(missing)})")
        df = read(p)  # of this code's schema version, else a SchemaError naming the file
        frames.append(df.assign(round=p.parent.name, job=p.stem))
    if not frames:
        raise ValueError("no train_bench Parquet files given")
    return pd.concat(frames, ignore_index=True)


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (round, job, model), in the order the trainings ran."""
    rows = []
    for (rnd, job, model), g in df.groupby(["round", "job", "model"], sort=False):
        seeds = g["seed"].tolist()
        repeats = len(seeds) - len(set(seeds))
        rows.append({
            "round": rnd, "job": job, "model": model, "teacher": next(iter(g["teacher"].dropna()), None),
            "requested": bool(g["requested"].all()), "epochs": int(g["epochs"].iloc[0]),
            "batch_size": int(g["batch_size"].iloc[0]), "seeds": ",".join(map(str, seeds)),
            "top1_each": " / ".join(f"{v:.2f}" for v in g["top1_pct"]),
            "top1_mean": g["top1_pct"].mean(), "top1_spread": g["top1_pct"].max() - g["top1_pct"].min(),
            "same_seed_repeats": repeats,
            "train_s_max": g["train_s"].max(), "img_per_s_mean": g["train_img_per_s"].mean(),
            "steady_img_per_s_mean": g["steady_img_per_s"].mean(), "gpu_name": g["gpu_name"].iloc[0],
        })
    return pd.DataFrame(rows)


def markdown(summary: pd.DataFrame) -> str:
    headers = ["round / job", "model", "epochs x batch", "seeds", "top-1 % per seed", "mean", "spread",
               "train s (max)", "img/s (all / ep2+)"]
    rows = []
    for r in summary.itertuples():
        teacher = f" <- {r.teacher}" if isinstance(r.teacher, str) else ""   # pandas turns None into NaN
        model = r.model + ("" if r.requested else " (teacher)") + teacher
        rows.append([f"{r.round} / {r.job}", model, f"{r.epochs} x {r.batch_size}", r.seeds, r.top1_each,
                     f"{r.top1_mean:.2f}", f"{r.top1_spread:.2f}", f"{r.train_s_max:.1f}",
                     f"{r.img_per_s_mean:,.0f} / {r.steady_img_per_s_mean:,.0f}"])
    return "\n".join(markdown_table(headers, rows)) + "\n"


def run(args) -> int:
    """`python -m runner train-summary` (options: runner/cli.py)."""
    try:
        df = collect(args.parquet)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = markdown(summarize(df))
    print(text, end="")
    if args.merged_out:
        write_frame(df, args.merged_out)
    if args.markdown_out:
        files.write_text(args.markdown_out, text)
    return 0
