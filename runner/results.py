"""Result rows on disk: atomic Parquet writes, stamped with the schema version; reads that check it; merge.

The sweep folder's layout is in the README ("Where results go"); the tables and their version are in
runner/schema.py. A failure is a row with `status` error / skipped and `error`, never a missing row. A part
file written by other code is refused by name (SchemaError), never read with blanks where its columns differ.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Iterable

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from runner import files
from runner.intervals import COLUMNS as INTERVAL_COLUMNS, across_processes
# The tables are runner/schema.py's; most callers import them from here, beside the writes and reads.
from runner.schema import (PAIR_SCHEMA, RECHECK_SCHEMA, RESULT_SCHEMA, SAMPLES_SCHEMA, SCHEMAS,  # noqa: F401
                           STATS, STEPS_SCHEMA, TRAINING_SCHEMA, SchemaError, check, read_schema, stamp)


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
    """Write Parquet, stamped with this code's schema version, so that a reader (or a crash) never sees half a
    file, nor a planted link is followed."""
    table = stamp(table)
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
    re-runs that variant, as its row is missing. A part of ours from other code (another schema version)
    raises SchemaError: leaving it out would make a table that looks whole."""
    tables = []
    for p in sorted(Path(folder).glob("*.parquet")):
        problem = _part_problem(p, schema)
        if problem is None:
            check(p)
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
        part = read_schema(path)  # its footer within schema.MAX_FOOTER, else FileError: skipped
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


def check_folder(run_dir: str | Path) -> None:
    """Before a resume builds on a sweep folder: every part file of ours carries this code's schema version
    (SchemaError, naming the first that does not). Damaged or foreign files are read_folder's to skip."""
    for name, schema in SCHEMAS.items():
        for p in sorted((Path(run_dir) / name).glob("*.parquet")):
            if _part_problem(p, schema) is None:
                check(p)


def merge(run_dir: str | Path, skipped: list[Path] | None = None) -> dict[str, Path]:
    """Merge the part files of a sweep folder into results.parquet / training.parquet / final_table.csv.
    Part files that do not read are left out and appended to `skipped` (see read_folder)."""
    run_dir = Path(run_dir)
    out = {}
    results = read_folder(run_dir / "results", RESULT_SCHEMA, skipped)
    out["results"] = write_frame(results, run_dir / "results.parquet", RESULT_SCHEMA)
    training = read_folder(run_dir / "training", TRAINING_SCHEMA, skipped)
    out["training"] = write_frame(training, run_dir / "training.parquet", TRAINING_SCHEMA)
    read: dict[str, pd.DataFrame] = {}
    for name, schema in (("pairs", PAIR_SCHEMA), ("rechecks", RECHECK_SCHEMA), ("twins", RECHECK_SCHEMA)):
        if (run_dir / name).is_dir():
            read[name] = read_folder(run_dir / name, schema, skipped)
            out[name] = write_frame(read[name], run_dir / f"{name}.parquet", schema)
    csv = run_dir / "final_table.csv"
    table = across_processes(summarize(results), read.get("twins"))
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
            "bn_fold", "status", "tta"]
    agg = {"error": "first", "top1_pct": "first", "top1_drift_pts": "first", "lat_mean_ms": "median",
           "lat_p50_ms": "median", "lat_p95_ms": "median", "lat_p99_ms": "median", "lat_std_ms": "median",
           "lat_min_ms": "min", "host_p50_ms": "median", "host_p95_ms": "median", "lat_cv_pct": "first",
           "unstable": "first", "compile_s": "first", "size_mb": "first", "params": "first",
           "gpu_exclusive": _all_or_none, "gpu_name": "first", "gpu_uuid": "first", "repeat": "count"}
    # Per-variant facts: the same in every repeat row of a variant.
    agg.update({col: "first" for col in (
        "host_p99_ms", "eval_error", "b1_agree_pct", "fold_max_rel_err", "path_max_rel_err", "folded_layers",
        "kernels_per_forward", "kernel_us_per_forward", "wall_us_per_forward", "gap_us_per_forward",
        "floor_p50_us", "floor_p95_us", "code_digest", "git_commit", "ray_node_id", "nvml_note", "device",
        *INTERVAL_COLUMNS, "stop_reason", "target_pct", "slices_timed")})
    if results.empty:
        return pd.DataFrame(columns=keys + [c if c != "repeat" else "repeats" for c in agg])
    summary = results.groupby(keys, dropna=False, sort=False).agg(agg).reset_index()
    summary = summary.rename(columns={"repeat": "repeats"})
    summary.loc[summary["status"] != "ok", "repeats"] = 0
    return summary
