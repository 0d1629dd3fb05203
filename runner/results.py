"""Result rows on disk: one flat schema, atomic Parquet writes, merge.

Layout of a sweep folder (written by `runner/sweep.py`, read by `runner/report.py`):

    runs/<sweep>/results/<variant_id>.parquet    one file per variant, written the moment it lands
    runs/<sweep>/training/<model>.parquet        per-epoch log + summary of each trained model
    runs/<sweep>/samples/<variant_id>.parquet    raw per-iteration latency samples
    runs/<sweep>/checkpoints/<model>.pt          trained weights (never committed)
    runs/<sweep>/results.parquet, training.parquet, final_table.csv   merged views

Column names carry their units (`lat_p95_ms`, `compile_s`, `size_mb`). A failure is a row with
`status` error / skipped and `error`, never a missing row.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

STATS = ("mean", "p50", "p90", "p95", "p99", "std", "min")

# One row per (variant, repeat). Latency columns `lat_*` are the primary timer: CUDA events on a GPU,
# the host clock on CPU (`timer` says which); `host_*` is always the host clock around launch..synchronize.
RESULT_SCHEMA = pa.schema(
    [("sweep", pa.string()), ("variant_id", pa.string()), ("brief_id", pa.string()), ("label", pa.string()),
     ("model", pa.string()), ("arch", pa.string()), ("precision", pa.string()),
     ("memory_format", pa.string()), ("compile", pa.string()), ("cuda_graph", pa.bool_()),
     ("bn_fold", pa.bool_()), ("status", pa.string()), ("error", pa.string()), ("repeat", pa.int32()),
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
       ("ray_node_id", pa.string())]
)

TRAINING_SCHEMA = pa.schema(
    [("sweep", pa.string()), ("model", pa.string()), ("arch", pa.string()), ("teacher", pa.string()),
     ("status", pa.string()), ("error", pa.string()), ("epoch", pa.int32()), ("epochs", pa.int32()),
     ("train_loss", pa.float64()), ("train_acc_pct", pa.float64()), ("top1_pct", pa.float64()),
     ("epoch_s", pa.float64()), ("train_s", pa.float64()), ("train_img_per_s", pa.float64()),
     ("seed", pa.int64()), ("device", pa.string()), ("gpu_name", pa.string()), ("gpu_uuid", pa.string()),
     ("torch_version", pa.string()), ("git_commit", pa.string()), ("data_source", pa.string()),
     ("spec_hash", pa.string()), ("recipe_json", pa.string()), ("finished_at", pa.string()),
     ("ray_node_id", pa.string())]
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
    """Write Parquet so that a reader (or a crash) never sees half a file: temp file + rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_frame(df: pd.DataFrame, path: str | Path, schema: pa.Schema | None = None) -> Path:
    """A DataFrame to Parquet, atomically (see write_atomic); `schema` fixes the column types."""
    return write_atomic(pa.Table.from_pandas(df, schema=schema, preserve_index=False), path)


def write_json(obj: Any, path: str | Path) -> Path:
    """A JSON report (the check scripts' output), written atomically like the Parquet files."""
    import json
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)
    return path


def write_rows(rows: Iterable[dict[str, Any]], path: str | Path, schema: pa.Schema = RESULT_SCHEMA) -> Path:
    return write_atomic(to_table(rows, schema), path)


def read_folder(folder: str | Path, schema: pa.Schema) -> pd.DataFrame:
    """All part files of one folder as one frame (empty frame with the schema's columns when none)."""
    parts = sorted(Path(folder).glob("*.parquet"))
    if not parts:
        return schema.empty_table().to_pandas()
    return pa.concat_tables([pq.read_table(p, schema=schema) for p in parts]).to_pandas()


def merge(run_dir: str | Path) -> dict[str, Path]:
    """Merge the part files of a sweep folder into results.parquet / training.parquet / final_table.csv."""
    run_dir = Path(run_dir)
    out = {}
    results = read_folder(run_dir / "results", RESULT_SCHEMA)
    out["results"] = write_frame(results, run_dir / "results.parquet", RESULT_SCHEMA)
    training = read_folder(run_dir / "training", TRAINING_SCHEMA)
    out["training"] = write_frame(training, run_dir / "training.parquet", TRAINING_SCHEMA)
    csv = run_dir / "final_table.csv"
    summarize(results).to_csv(csv, index=False, float_format="%.4f")
    out["csv"] = csv
    return out


def _all_or_none(values: pd.Series):
    """True only if every repeat was exclusive; None when nothing was checked (CPU, no NVML)."""
    v = values.dropna()
    return None if v.empty else bool(v.astype(bool).all())


def summarize(results: pd.DataFrame) -> pd.DataFrame:
    """One line per variant: accuracy, the median over repeats of each latency statistic, repeat spread."""
    keys = ["variant_id", "brief_id", "label", "model", "precision", "memory_format", "compile", "cuda_graph",
            "bn_fold", "status"]
    if results.empty:
        return pd.DataFrame(columns=keys + ["error", "top1_pct", "lat_mean_ms", "lat_p50_ms", "lat_p95_ms"])
    agg = {"error": "first", "top1_pct": "first", "top1_drift_pts": "first", "lat_mean_ms": "median",
           "lat_p50_ms": "median", "lat_p95_ms": "median", "lat_p99_ms": "median", "lat_std_ms": "median",
           "lat_min_ms": "min", "host_p50_ms": "median", "host_p95_ms": "median", "lat_cv_pct": "first",
           "unstable": "first", "compile_s": "first", "size_mb": "first", "params": "first",
           "gpu_exclusive": _all_or_none, "gpu_name": "first", "gpu_uuid": "first", "repeat": "count"}
    summary = results.groupby(keys, dropna=False, sort=False).agg(agg).reset_index()
    summary = summary.rename(columns={"repeat": "repeats"})
    summary.loc[summary["status"] != "ok", "repeats"] = 0
    return summary
