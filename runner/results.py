"""Result rows on disk: one flat schema, atomic Parquet writes, merge.

Layout of a sweep folder (written by `runner/sweep.py`, read by `runner/report.py`):

    runs/<sweep>/results/<variant_id>.parquet    one file per variant, written the moment it lands
    runs/<sweep>/training/<model>.parquet        per-epoch log + summary of each trained model
    runs/<sweep>/samples/<variant_id>.parquet    raw per-iteration latency samples
    runs/<sweep>/checkpoints/<model>.pt          trained weights (never committed)
    runs/<sweep>/results.parquet, training.parquet, final_table.csv   merged views

Column names carry their units (`lat_p95_ms`, `compile_s`, `size_mb`). A failure is a row with
`status` error / skipped and `error`, never a missing row. Task rows carry `started_at` and `finished_at`
(ISO UTC). New columns go last (`started_at`, then `host_wait_s`, `timed_at`, `checks_started_at`, `timing_order`,
..., the interval columns in results; `recheck_repeats`, `recheck_cv_pct`, ..., `recheck_p50_lo_ms` in re-checks),
and files written before they existed still read (read_folder reads every part with the schema: a column a part lacks comes back as nulls).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Iterable

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from runner import files
from runner.files import write_json  # noqa: F401 (the check scripts import it from here)
from runner.intervals import COLUMNS as INTERVAL_COLUMNS, across_processes

STATS = ("mean", "p50", "p90", "p95", "p99", "std", "min")

# One row per (variant, repeat). Latency columns `lat_*` are the primary timer: CUDA events on a GPU,
# the host clock on CPU (`timer` says which); `host_*` is always the host clock around launch..synchronize.
RESULT_SCHEMA = pa.schema(
    [("sweep", pa.string()), ("variant_id", pa.string()), ("brief_id", pa.string()), ("label", pa.string()),
     ("model", pa.string()), ("arch", pa.string()), ("precision", pa.string()),
     ("memory_format", pa.string()), ("compile", pa.string()), ("cuda_graph", pa.bool_()),
     ("bn_fold", pa.bool_()), ("tta", pa.string()), ("status", pa.string()), ("error", pa.string()), ("repeat", pa.int32()),
     ("top1_pct", pa.float64()), ("top1_drift_pts", pa.float64()), ("teacher", pa.string())]
    + [(f"lat_{s}_ms", pa.float64()) for s in STATS]
    + [(f"host_{s}_ms", pa.float64()) for s in STATS]
    + [("timer", pa.string()), ("warmup", pa.int32()), ("iters", pa.int32()), ("lat_cv_pct", pa.float64()),
       ("unstable", pa.bool_()), ("compile_s", pa.float64()), ("size_mb", pa.float64()),
       ("params", pa.int64()), ("device", pa.string()), ("gpu_name", pa.string()), ("gpu_uuid", pa.string()),
       ("gpu_exclusive", pa.bool_()), ("gpu_other_pids", pa.string()), ("sm_clock_mhz_before", pa.float64()),
       ("sm_clock_mhz_after", pa.float64()), ("temp_c_before", pa.float64()), ("temp_c_after", pa.float64()),
       ("driver_version", pa.string()), ("torch_version", pa.string()), ("cuda_version", pa.string()),
       ("cudnn_version", pa.string()), ("ray_version", pa.string()), ("hostname", pa.string()),
       ("git_commit", pa.string()), ("data_source", pa.string()), ("seed", pa.int64()),
       ("spec_hash", pa.string()), ("config_json", pa.string()), ("finished_at", pa.string()),
       # where and by what code (resume compares the digest), and NVML sampled during the timing
       ("code_digest", pa.string()), ("ray_node_id", pa.string()), ("pid", pa.int64()), ("nvml_note", pa.string()),
       ("nvml_samples", pa.int32()), ("sm_clock_mhz_min", pa.float64()), ("sm_clock_mhz_max", pa.float64()),
       ("temp_c_max", pa.float64()),
       # numerical checks (runner/engine/rows.py): a row over a bound is an error row
       ("folded_layers", pa.int32()), ("fold_max_rel_err", pa.float64()), ("path_max_rel_err", pa.float64()),
       ("b1_agree_pct", pa.float64()), ("eval_error", pa.string()),
       # why it is slow (runner/breakdown.py)
       ("kernels_per_forward", pa.float64()), ("kernel_us_per_forward", pa.float64()),
       ("wall_us_per_forward", pa.float64()), ("gap_us_per_forward", pa.float64()),
       ("floor_p50_us", pa.float64()), ("floor_p95_us", pa.float64()), ("breakdown_note", pa.string()),
       # when the task began (ISO UTC, ms), for the timeline; last so older files keep their layout
       ("started_at", pa.string()),
       # seconds the timing waited for the host to itself (the previous engine's host lock); None since runner/engine/
       ("host_wait_s", pa.float64()),
       # a bench task times all its variants before it checks any (runner/engine/program.py says why): when this
       # variant's timing ended and its checks began (ISO UTC, ms; None in older rows), for the timeline
       ("timed_at", pa.string()),
       ("checks_started_at", pa.string()),
       # "round-robin": repeat r of every variant of the task was timed in one round (runner/engine/worker.py),
       # so runner/host_rounds.py can compare a round across variants; None in older rows (back to back)
       ("timing_order", pa.string()),
       # when the task's worker process began and finished its imports (the previous engine's worker hook), for the
       # timeline's start-up split; None in older rows and outside a Ray worker
       ("worker_started_at", pa.string()), ("worker_ready_at", pa.string()),
       # each repeat timed in this many slices spread over the task, and this repeat's p50 per slice as a
       # JSON list, in time order (runner/engine/worker.py), for runner/host_rounds.py; None in older rows
       ("timing_slices", pa.int32()), ("slice_p50s_ms", pa.string())]
    # 95% intervals across the variant's slices (runner/intervals.py: interval_columns), the same on every
    # repeat row; NaN where too few slices; then why its timing stopped (intervals.STOP_REASONS), the p50
    # half-width target it ran for (%) and the slices it timed. None in older rows.
    + [(c, pa.int32() if c == "ci_units" else pa.float64()) for c in INTERVAL_COLUMNS]
    + [("stop_reason", pa.string()), ("target_pct", pa.float64()), ("slices_timed", pa.int32())]
)

# One row per (parent, child) pair timed interleaved in one task (runner/pairs.py); p50s as JSON lists.
PAIR_SCHEMA = pa.schema(
    [("variant_id", pa.string()), ("parent_id", pa.string()), ("status", pa.string()), ("error", pa.string()),
     ("rounds", pa.int32()), ("iters_per_round", pa.int32()), ("parent_p50s_ms", pa.string()),
     ("child_p50s_ms", pa.string()), ("device", pa.string()), ("gpu_name", pa.string()),
     ("gpu_uuid", pa.string()), ("ray_node_id", pa.string()), ("pid", pa.int64()), ("code_digest", pa.string()),
     ("torch_version", pa.string()), ("cuda_version", pa.string()), ("cudnn_version", pa.string()),
     ("ray_version", pa.string()), ("hostname", pa.string()), ("git_commit", pa.string()),
     ("finished_at", pa.string()), ("started_at", pa.string()), ("worker_started_at", pa.string()), ("worker_ready_at", pa.string())]
)

# One row per variant re-timed at the end of a sweep, alone (runner/agreement.py compares). recheck_*_ms:
# the median over its repeats of each repeat's statistic, as summarize() gives the in-sweep ones.
RECHECK_SCHEMA = pa.schema(
    [("variant_id", pa.string()), ("status", pa.string()), ("error", pa.string()),
     ("recheck_p50_ms", pa.float64()), ("recheck_p95_ms", pa.float64()), ("recheck_host_p50_ms", pa.float64()),
     ("device", pa.string()), ("gpu_name", pa.string()), ("gpu_uuid", pa.string()), ("ray_node_id", pa.string()),
     ("pid", pa.int64()), ("code_digest", pa.string()), ("torch_version", pa.string()), ("cuda_version", pa.string()),
     ("cudnn_version", pa.string()), ("ray_version", pa.string()), ("hostname", pa.string()),
     ("git_commit", pa.string()), ("finished_at", pa.string()), ("started_at", pa.string()),
     # the repeats it was timed with (round-robin over its stage, runner/engine/worker.py) and the CV of their
     # p50s (as `lat_cv_pct`); None in older rows, which were timed once
     ("recheck_repeats", pa.int32()), ("recheck_cv_pct", pa.float64()), ("worker_started_at", pa.string()),
     ("worker_ready_at", pa.string()),
     # each repeat timed in this many slices spread over the stage (runner/engine/worker.py); None in older rows
     ("recheck_slices", pa.int32()),
     # the re-check's own 95% interval of p50 across its slices (runner/intervals.py); None in older rows
     ("recheck_p50_lo_ms", pa.float64()), ("recheck_p50_hi_ms", pa.float64())]
)

TRAINING_SCHEMA = pa.schema(
    [("sweep", pa.string()), ("model", pa.string()), ("arch", pa.string()), ("teacher", pa.string()),
     ("status", pa.string()), ("error", pa.string()), ("epoch", pa.int32()), ("epochs", pa.int32()),
     ("train_loss", pa.float64()), ("train_acc_pct", pa.float64()), ("top1_pct", pa.float64()),
     ("epoch_s", pa.float64()), ("train_s", pa.float64()), ("train_img_per_s", pa.float64()),
     ("seed", pa.int64()), ("device", pa.string()), ("gpu_name", pa.string()), ("gpu_uuid", pa.string()),
     ("torch_version", pa.string()), ("git_commit", pa.string()), ("data_source", pa.string()),
     ("spec_hash", pa.string()), ("recipe_json", pa.string()), ("finished_at", pa.string()),
     ("ray_node_id", pa.string()), ("pid", pa.int64()), ("started_at", pa.string()), ("worker_started_at", pa.string()), ("worker_ready_at", pa.string()),
     ("torch_threads", pa.int32()), ("nice", pa.int32())]   # the training process's torch threads and niceness
)

SAMPLES_SCHEMA = pa.schema([("variant_id", pa.string()), ("repeat", pa.int32()), ("iter", pa.int32()),
                            ("lat_ms", pa.float64()), ("host_ms", pa.float64())])


def to_table(rows: Iterable[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    """Conform dict rows to `schema`: missing columns become nulls, unknown keys are an error."""
    rows = list(rows)
    names = set(schema.names)
    for r in rows:
        extra = set(r) - names
        if extra:
            raise KeyError(f"columns not in the schema: {sorted(extra)}")
    return pa.Table.from_pylist([{n: r.get(n) for n in schema.names} for r in rows], schema=schema)


def write_atomic(table: pa.Table, path: str | Path) -> Path:
    """Write Parquet so that a reader (or a crash) never sees half a file, nor a planted link is followed."""
    return files.write_new(path, lambda f: pq.write_table(table, f))


def write_frame(df: pd.DataFrame, path: str | Path, schema: pa.Schema | None = None) -> Path:
    """A DataFrame to Parquet, atomically (see write_atomic); `schema` fixes the column types."""
    return write_atomic(pa.Table.from_pandas(df, schema=schema, preserve_index=False), path)


def write_rows(rows: Iterable[dict[str, Any]], path: str | Path, schema: pa.Schema = RESULT_SCHEMA) -> Path:
    return write_atomic(to_table(rows, schema), path)


def read_folder(folder: str | Path, schema: pa.Schema, skipped: list[Path] | None = None) -> pd.DataFrame:
    """All part files of one folder as one frame (empty frame with the schema's columns when none).

    A part that does not read (truncated, not Parquet, another table) is left out and named on stderr,
    and appended to `skipped`: one damaged file must not hide every other result. The sweep then
    re-runs that variant, as its row is missing."""
    tables = []
    for p in sorted(Path(folder).glob("*.parquet")):
        problem = _part_problem(p, schema)
        if problem is None:
            try:
                tables.append(pq.read_table(p, schema=schema))
                continue
            except (pa.ArrowException, OSError, ValueError) as e:
                problem = f"{type(e).__name__}: {files.short(e, 200)}"
        print(f"warning: skipped {p}: it does not read as a part file of this folder ({problem})",
              file=sys.stderr)
        if skipped is not None:
            skipped.append(p)
    if not tables:
        return schema.empty_table().to_pandas()
    return pa.concat_tables(tables).to_pandas()


def _part_problem(path: Path, schema: pa.Schema) -> str | None:
    """Why `path` is not one of this folder's part files, or None. Its identifying columns (the schema's
    first two, e.g. sweep + variant_id) must be there: a foreign Parquet would read as all-null rows. A column
    it shares with the schema has the schema's type (or none, all null): reading casts, so a variant_id
    written as the number 3 became a variant named '3'. Its rows belong to the variant (model) it is named
    after: a part is written as <variant_id>.parquet, and resume trusts the name."""
    try:
        part = pq.read_schema(path)
        missing = [n for n in schema.names[:2] if n not in part.names]
        if missing:
            return f"no column {', '.join(missing)}"
        for f in part:
            want = schema.field(f.name).type if f.name in schema.names else None
            if want is not None and f.type != want and not pa.types.is_null(f.type):
                return f"its column {f.name} is {f.type}, not {want}: another schema"
        owner = next((n for n in ("variant_id", "model") if n in schema.names[:2]), None)
        found = set(pq.read_table(path, columns=[owner]).column(0).to_pylist()) - {path.stem} if owner else ()
    except (pa.ArrowException, OSError, ValueError) as e:
        return f"{type(e).__name__}: {files.short(e, 200)}"
    return f"it holds rows of {owner} {files.short(sorted(map(str, found)), 80)}, not {path.stem}" if found else None


def merge(run_dir: str | Path, skipped: list[Path] | None = None) -> dict[str, Path]:
    """Merge the part files of a sweep folder into results.parquet / training.parquet / final_table.csv.
    Part files that do not read are left out and appended to `skipped` (see read_folder)."""
    run_dir = Path(run_dir)
    out = {}
    results = read_folder(run_dir / "results", RESULT_SCHEMA, skipped)
    out["results"] = write_frame(results, run_dir / "results.parquet", RESULT_SCHEMA)
    training = read_folder(run_dir / "training", TRAINING_SCHEMA, skipped)
    out["training"] = write_frame(training, run_dir / "training.parquet", TRAINING_SCHEMA)
    for name, schema in (("pairs", PAIR_SCHEMA), ("rechecks", RECHECK_SCHEMA), ("twins", RECHECK_SCHEMA)):
        if (run_dir / name).is_dir():
            out[name] = write_frame(read_folder(run_dir / name, schema, skipped), run_dir / f"{name}.parquet", schema)
    csv = run_dir / "final_table.csv"
    twins = read_folder(run_dir / "twins", RECHECK_SCHEMA) if (run_dir / "twins").is_dir() else None
    table = across_processes(summarize(results), twins)
    files.write_new(csv, lambda f: table.to_csv(f, index=False, float_format="%.4f"), text=True)
    out["csv"] = csv
    return out


def cv_pct(values) -> float:
    """Coefficient of variation (sample std / mean, %) across repeats: how far repeats disagree.
    The one definition: the bench's `unstable` flag and the report's CV column both use it."""
    import numpy as np
    v = np.asarray(values, dtype=np.float64)
    return float(100.0 * v.std(ddof=1) / v.mean()) if v.size > 1 and v.mean() > 0 else 0.0


def _all_or_none(values: pd.Series):
    """True only if every repeat was exclusive; None when nothing was checked (CPU, no NVML)."""
    v = values.dropna()
    return None if v.empty else bool(v.astype(bool).all())


def summarize(results: pd.DataFrame) -> pd.DataFrame:
    """One line per variant: accuracy, the median over repeats of each latency statistic, repeat spread,
    and the variant's 95% intervals (runner/intervals.py; per variant, so the first repeat row's)."""
    keys = ["variant_id", "brief_id", "label", "model", "precision", "memory_format", "compile", "cuda_graph",
            "bn_fold", "status"] + (["tta"] if "tta" in results.columns else [])
    if results.empty:
        return pd.DataFrame(columns=keys + ["error", "top1_pct", "lat_mean_ms", "lat_p50_ms", "lat_p95_ms"])
    agg = {"error": "first", "top1_pct": "first", "top1_drift_pts": "first", "lat_mean_ms": "median",
           "lat_p50_ms": "median", "lat_p95_ms": "median", "lat_p99_ms": "median", "lat_std_ms": "median",
           "lat_min_ms": "min", "host_p50_ms": "median", "host_p95_ms": "median", "lat_cv_pct": "first",
           "unstable": "first", "compile_s": "first", "size_mb": "first", "params": "first",
           "gpu_exclusive": _all_or_none, "gpu_name": "first", "gpu_uuid": "first", "repeat": "count"}
    # Per-variant facts (same in every repeat row), when the rows have them (older runs do not).
    for col in ("host_p99_ms", "eval_error", "b1_agree_pct", "fold_max_rel_err", "path_max_rel_err",
                "folded_layers", "kernels_per_forward", "kernel_us_per_forward", "wall_us_per_forward",
                "gap_us_per_forward", "floor_p50_us", "floor_p95_us", "code_digest", "git_commit",
                "ray_node_id", "nvml_note", "device", *INTERVAL_COLUMNS, "stop_reason", "target_pct",
                "slices_timed"):
        if col in results.columns:
            agg[col] = "first"
    agg = {k: v for k, v in agg.items() if k in results.columns}
    summary = results.groupby(keys, dropna=False, sort=False).agg(agg).reset_index()
    summary = summary.rename(columns={"repeat": "repeats"})
    summary.loc[summary["status"] != "ok", "repeats"] = 0
    return summary
