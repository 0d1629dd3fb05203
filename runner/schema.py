"""Every Parquet table a sweep writes, and the schema version that each file carries and each read checks.

    stamp(table)     the table with SCHEMA_VERSION in its metadata (results.write_atomic stamps every file)
    check(path)      SchemaError unless the file carries this code's version: one line, naming the file
    read(path)       check, then the file as a DataFrame
    read_schema(path)    the file's schema, once its footer is within MAX_FOOTER

Every Parquet file the runner reads (it may be a copy from elsewhere, or planted) is read through
read_schema first: a footer larger than MAX_FOOTER is refused from the file's last 8 bytes, before
pyarrow parses it into memory (a 40 MB metadata entry made a 98 MB footer; 100,000 columns, 19 MB).

Code reads only the version it writes. A file from older code is refused, never read into a table whose
missing columns would print as blanks, or whose columns meant something else: published runs under
reports/ are read with the code of their commit. A change to any schema below bumps SCHEMA_VERSION
(tests/test_results.py pins the schemas' fingerprint to it). Column names carry their units.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from runner.files import FileError, short
from runner.intervals import COLUMNS as INTERVAL_COLUMNS

SCHEMA_VERSION = 1
VERSION_KEY = b"cifar_runner.schema_version"
# The largest footer among the published runs' Parquet files (reports/*/, measured at acf46aa) is 56,458
# bytes: reports/h200-1gpu-engine/results.parquet, one row group of 116 columns with pandas' metadata. Files
# of these tables have one row group (under 2**20 rows) and Parquet keeps at most 4 KiB of statistics per
# column: 4 MiB is far above any of them, and a footer that size parses in a fraction of a second.
MAX_FOOTER = 4 << 20
STATS = ("mean", "p50", "p90", "p95", "p99", "std", "min")

# One row per (variant, repeat). Latency columns `lat_*` are the primary timer: CUDA events on a GPU,
# the host clock on CPU (`timer` says which); `host_*` is always the host clock around launch..synchronize.
RESULT_SCHEMA = pa.schema(
    [("sweep", pa.string()), ("variant_id", pa.string()), ("brief_id", pa.string()), ("label", pa.string()),
     ("model", pa.string()), ("arch", pa.string()), ("precision", pa.string()),
     ("memory_format", pa.string()), ("compile", pa.string()), ("cuda_graph", pa.bool_()),
     ("bn_fold", pa.bool_()), ("tta", pa.string()), ("status", pa.string()), ("error", pa.string()),
     ("repeat", pa.int32()), ("top1_pct", pa.float64()), ("top1_drift_pts", pa.float64()),
     ("teacher", pa.string())]
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
       # when the task began, when this variant's timing ended and its checks began (ISO UTC, ms), for the
       # timeline: an actor times all its variants before it checks any (runner/engine/program.py says why)
       ("started_at", pa.string()), ("timed_at", pa.string()), ("checks_started_at", pa.string()),
       # "round-robin": repeat r of every variant of the task was timed in one round (runner/engine/worker.py),
       # each repeat in `timing_slices` slices spread over the task, with this repeat's p50 per slice as a JSON
       # list in time order: runner/host_rounds.py compares a round across variants
       ("timing_order", pa.string()), ("timing_slices", pa.int32()), ("slice_p50s_ms", pa.string())]
    # 95% intervals across the variant's slices (runner/intervals.py: interval_columns), the same on every
    # repeat row, NaN where too few slices; then why its timing stopped (intervals.STOP_REASONS), the p50
    # half-width target it ran for (%) and the slices it timed
    + [(c, pa.int32() if c == "ci_units" else pa.float64()) for c in INTERVAL_COLUMNS]
    + [("stop_reason", pa.string()), ("target_pct", pa.float64()), ("slices_timed", pa.int32())]
)

# Where and by what code a pair or re-check row was timed, and when.
_PROVENANCE = [(name, pa.int64() if name == "pid" else pa.string()) for name in (
    "device", "gpu_name", "gpu_uuid", "ray_node_id", "pid", "code_digest", "torch_version", "cuda_version",
    "cudnn_version", "ray_version", "hostname", "git_commit", "finished_at", "started_at")]

# One row per (parent, child) pair timed interleaved in one task (runner/pairs.py); p50s as JSON lists.
PAIR_SCHEMA = pa.schema(
    [("variant_id", pa.string()), ("parent_id", pa.string()), ("status", pa.string()), ("error", pa.string()),
     ("rounds", pa.int32()), ("iters_per_round", pa.int32()), ("parent_p50s_ms", pa.string()),
     ("child_p50s_ms", pa.string())] + _PROVENANCE
)

# One row per variant timed again in a new process: a twin (the second process of its interval) or a
# re-check at the end (runner/agreement.py compares). recheck_*_ms: the median over its repeats of each
# repeat's statistic, as summarize() gives the in-sweep ones; its repeats are round-robin over its stage,
# each in `recheck_slices` slices (runner/engine/worker.py), with their CV and its own 95% p50 interval.
RECHECK_SCHEMA = pa.schema(
    [("variant_id", pa.string()), ("status", pa.string()), ("error", pa.string()),
     ("recheck_p50_ms", pa.float64()), ("recheck_p95_ms", pa.float64()), ("recheck_host_p50_ms", pa.float64())]
    + _PROVENANCE
    + [("recheck_repeats", pa.int32()), ("recheck_cv_pct", pa.float64()), ("recheck_slices", pa.int32()),
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
     ("ray_node_id", pa.string()), ("pid", pa.int64()), ("started_at", pa.string()),
     ("torch_threads", pa.int32()), ("nice", pa.int32())]   # the training process's torch threads and niceness
)

SAMPLES_SCHEMA = pa.schema([("variant_id", pa.string()), ("repeat", pa.int32()), ("iter", pa.int32()),
                            ("lat_ms", pa.float64()), ("host_ms", pa.float64())])

# One row per step of a sweep (runner/engine/steps.py writes them, runner/timeline.py reads them).
STEPS_SCHEMA = pa.schema(
    [("kind", pa.string()), ("name", pa.string()), ("status", pa.string()), ("actor", pa.string()),
     ("submitted", pa.string()), ("start", pa.string()), ("end", pa.string()), ("landed", pa.string()),
     ("gpu_uuid", pa.string()), ("node", pa.string()), ("hostname", pa.string()), ("pid", pa.int64())])

SCHEMAS = {"results": RESULT_SCHEMA, "pairs": PAIR_SCHEMA, "rechecks": RECHECK_SCHEMA, "twins": RECHECK_SCHEMA,
           "training": TRAINING_SCHEMA, "samples": SAMPLES_SCHEMA, "steps": STEPS_SCHEMA}


class SchemaError(FileError):
    """A Parquet file written with another schema version than this code's (or none)."""


def stamp(table: pa.Table) -> pa.Table:
    meta = {**(table.schema.metadata or {}), VERSION_KEY: str(SCHEMA_VERSION).encode()}
    return table.replace_schema_metadata(meta)


def footer_size(path: str | Path) -> int:
    """The size of the file's Parquet footer (its metadata), read from its last 8 bytes (the footer's length,
    then b"PAR1"); FileError when it is over MAX_FOOTER or the file is not Parquet."""
    with open(path, "rb") as f:
        if f.seek(0, 2) < 12:  # b"PAR1" + footer length + b"PAR1"
            raise FileError(f"{path}: not a Parquet file ({f.tell()} bytes)")
        f.seek(-8, 2)
        tail = f.read(8)
    if tail[4:] != b"PAR1":
        raise FileError(f"{path}: not a Parquet file (it does not end in PAR1: truncated?)")
    size = int.from_bytes(tail[:4], "little")
    if size > MAX_FOOTER:
        raise FileError(f"{path}: Parquet metadata of {size:,} bytes, over the cap of {MAX_FOOTER:,} "
                        f"(this runner's files have under 100 KB); not read")
    return size


def read_schema(path: str | Path) -> pa.Schema:
    footer_size(path)
    return pq.read_schema(path)


def version(path: str | Path) -> str | None:
    """The schema version a file says it was written with; None when it says none."""
    found = (read_schema(path).metadata or {}).get(VERSION_KEY)
    return None if found is None else found.decode("utf-8", "replace")


def check(path: str | Path) -> None:
    found = version(path)
    if found != str(SCHEMA_VERSION):
        what = "no schema version (older code)" if found is None else f"schema version {short(found, 20)}"
        raise SchemaError(f"{path}: written with {what}; this code reads only version {SCHEMA_VERSION}. Read it "
                          f"with the code of its commit (its rows' git_commit), or measure again here: a sweep's "
                          f"--fresh sets the old files aside.")


def read(path: str | Path, columns: list[str] | None = None) -> pd.DataFrame:
    """A merged file (results.parquet, ...) as a frame, once its version is this code's."""
    check(path)
    return pd.read_parquet(path, columns=columns)

