"""runner/results.py: schema conformance, atomic Parquet writes, merge and the summary table (real files)."""
from __future__ import annotations

import os

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from runner.results import (RESULT_SCHEMA, SAMPLES_SCHEMA, TRAINING_SCHEMA, merge, read_folder, summarize,
                            to_table, write_atomic, write_rows)


def _ok(vid, rep, p50, **kw):
    row = dict(sweep="unit", variant_id=vid, brief_id="B1" if vid == "mb-fp32" else None, label=f"label {vid}",
               model="mb", arch="mobilenet_v3_small_cifar", precision="fp32", memory_format="contiguous",
               compile="none", cuda_graph=False, bn_fold=False, status="ok", repeat=rep, top1_pct=80.0,
               lat_mean_ms=p50 * 1.1, lat_p50_ms=p50, lat_p95_ms=p50 * 1.5, lat_min_ms=p50 * 0.5,
               timer="host", warmup=10, iters=100, size_mb=6.1, params=1_500_000, device="cpu")
    row.update(kw)
    return row


def test_to_table_rejects_unknown_columns():
    with pytest.raises(KeyError) as info:
        to_table([{"variant_id": "a"}, {"variant_id": "b", "lat_p50": 1.0}], RESULT_SCHEMA)
    assert "lat_p50" in str(info.value)
    with pytest.raises(KeyError, match="bogus"):
        to_table([{"model": "m", "bogus": 1}], TRAINING_SCHEMA)


def test_to_table_fills_missing_with_nulls():
    t = to_table([{"variant_id": "a", "repeat": 2}], RESULT_SCHEMA)
    assert t.schema == RESULT_SCHEMA and t.num_rows == 1
    row = t.to_pylist()[0]
    assert row["variant_id"] == "a" and row["repeat"] == 2
    assert all(v is None for k, v in row.items() if k not in ("variant_id", "repeat"))
    assert t.column("lat_p50_ms").null_count == 1
    assert to_table([], SAMPLES_SCHEMA).num_rows == 0


def test_to_table_type_errors_are_not_silent():
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError)):
        to_table([{"repeat": "first"}], RESULT_SCHEMA)


def test_write_rows_read_folder_roundtrip(tmp_path):
    folder = tmp_path / "results"
    a = [_ok("mb-fp32", r, 1.0 + r) for r in range(3)]
    b = [_ok("mb-bf16", 0, 0.5, precision="bf16", gpu_exclusive=True)]
    pa_ = write_rows(a, folder / "mb-fp32.parquet")
    pb = write_rows(b, folder / "mb-bf16.parquet")
    assert pa_ == folder / "mb-fp32.parquet" and pb.exists()
    assert pq.read_schema(pa_).equals(RESULT_SCHEMA)
    df = read_folder(folder, RESULT_SCHEMA)
    assert list(df.columns) == RESULT_SCHEMA.names
    assert len(df) == 4
    # part files are read in name order: mb-bf16 before mb-fp32
    assert df["variant_id"].tolist() == ["mb-bf16", "mb-fp32", "mb-fp32", "mb-fp32"]
    assert df["lat_p50_ms"].tolist() == [0.5, 1.0, 2.0, 3.0]
    assert df["repeat"].tolist() == [0, 0, 1, 2]
    assert df["params"].tolist() == [1_500_000] * 4
    assert df["gpu_exclusive"].tolist()[0] is True and pd.isna(df["gpu_exclusive"].tolist()[1])
    assert df["error"].isna().all()
    # training rows with their own schema
    write_rows([{"model": "mb", "epoch": 1, "train_loss": 2.1}], tmp_path / "training" / "mb.parquet",
               TRAINING_SCHEMA)
    tr = read_folder(tmp_path / "training", TRAINING_SCHEMA)
    assert list(tr.columns) == TRAINING_SCHEMA.names and tr["train_loss"].tolist() == [2.1]


def test_read_folder_empty_or_missing(tmp_path):
    for folder in (tmp_path / "missing", tmp_path):
        df = read_folder(folder, RESULT_SCHEMA)
        assert df.empty and list(df.columns) == RESULT_SCHEMA.names


def test_write_atomic_replaces_and_leaves_no_temp(tmp_path):
    path = tmp_path / "deep" / "x.parquet"
    t1 = to_table([{"variant_id": "one"}], RESULT_SCHEMA)
    t2 = to_table([{"variant_id": "two"}, {"variant_id": "three"}], RESULT_SCHEMA)
    write_atomic(t1, path)
    assert os.listdir(path.parent) == ["x.parquet"]
    write_atomic(t2, path)
    assert os.listdir(path.parent) == ["x.parquet"]
    assert pq.read_table(path).column("variant_id").to_pylist() == ["two", "three"]
    # a failed write leaves the previous file whole and no temp file behind
    with pytest.raises(Exception):
        write_atomic("not a table", path)
    assert os.listdir(path.parent) == ["x.parquet"]
    assert pq.read_table(path).column("variant_id").to_pylist() == ["two", "three"]


def _run_dir(tmp_path):
    run = tmp_path / "runs" / "unit"
    for vid, p50s, extra in [("mb-fp32", [1.0, 3.0, 2.0], {}),
                             ("mb-bf16", [0.9, 0.7, 0.8], dict(precision="bf16", memory_format="channels_last"))]:
        write_rows([_ok(vid, r, p, **extra) for r, p in enumerate(p50s)], run / "results" / f"{vid}.parquet")
    write_rows([dict(sweep="unit", variant_id="mb-fp16-graph", model="mb", precision="fp16",
                     memory_format="contiguous", compile="none", cuda_graph=True, bn_fold=False, status="error",
                     error="RuntimeError: boom")], run / "results" / "mb-fp16-graph.parquet")
    write_rows([dict(sweep="unit", model="mb", arch="mobilenet_v3_small_cifar", status="ok", epoch=e, epochs=2,
                     train_loss=2.0 - e / 2, top1_pct=40.0 + e) for e in (1, 2)],
               run / "training" / "mb.parquet", TRAINING_SCHEMA)
    return run


def test_merge_and_summarize(tmp_path):
    run = _run_dir(tmp_path)
    out = merge(run)
    assert out == {"results": run / "results.parquet", "training": run / "training.parquet",
                   "csv": run / "final_table.csv"}
    assert pq.read_schema(out["results"]).equals(RESULT_SCHEMA)
    assert pq.read_schema(out["training"]).equals(TRAINING_SCHEMA)
    res = pd.read_parquet(out["results"])
    assert len(res) == 7
    tr = pd.read_parquet(out["training"])
    assert tr["epoch"].tolist() == [1, 2] and tr["top1_pct"].tolist() == [41.0, 42.0]
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]

    s = summarize(res)
    assert len(s) == 3
    by = s.set_index("variant_id")
    assert by.loc["mb-fp32", "lat_p50_ms"] == 2.0          # median of 1, 3, 2
    assert by.loc["mb-bf16", "lat_p50_ms"] == pytest.approx(0.8)
    assert by.loc["mb-fp32", "lat_mean_ms"] == pytest.approx(2.2)
    assert by.loc["mb-fp32", "lat_min_ms"] == pytest.approx(0.5)  # min over repeats, not median
    assert by.loc["mb-fp32", "repeats"] == 3 and by.loc["mb-bf16", "repeats"] == 3
    assert by.loc["mb-fp16-graph", "repeats"] == 0
    assert by.loc["mb-fp16-graph", "status"] == "error" and by.loc["mb-fp16-graph", "error"] == "RuntimeError: boom"
    assert pd.isna(by.loc["mb-fp16-graph", "lat_p50_ms"])
    assert by.loc["mb-fp32", "brief_id"] == "B1"
    assert s["gpu_exclusive"].tolist() == [None, None, None]  # nothing was checked (CPU): unknown, not False

    csv = pd.read_csv(out["csv"])
    assert csv["variant_id"].tolist() == s["variant_id"].tolist()
    assert csv.set_index("variant_id").loc["mb-fp32", "lat_p50_ms"] == 2.0
    assert csv["repeats"].tolist() == s["repeats"].tolist()

    # merging again (a re-run of the report) gives the same files
    merge(run)
    assert pd.read_parquet(run / "results.parquet").equals(res)


def test_summarize_gpu_exclusive_all_or_none(tmp_path):
    rows = [_ok("a", 0, 1.0, gpu_exclusive=True), _ok("a", 1, 1.0, gpu_exclusive=True),
            _ok("b", 0, 1.0, gpu_exclusive=True), _ok("b", 1, 1.0, gpu_exclusive=False),
            _ok("c", 0, 1.0, gpu_exclusive=True), _ok("c", 1, 1.0)]
    write_rows(rows, tmp_path / "r.parquet")
    s = summarize(pd.read_parquet(tmp_path / "r.parquet")).set_index("variant_id")
    assert s.loc["a", "gpu_exclusive"] == True  # noqa: E712
    assert s.loc["b", "gpu_exclusive"] == False  # noqa: E712
    assert s.loc["c", "gpu_exclusive"] == True  # noqa: E712  (unchecked repeats do not count against)


def test_merge_empty_run(tmp_path):
    out = merge(tmp_path)
    assert pd.read_parquet(out["results"]).empty
    assert list(pd.read_csv(out["csv"]).columns)[:2] == ["variant_id", "brief_id"]


# ---- the schema version (issue 26): code reads only the files it writes -------------------------------------

# The schemas' fingerprint at this SCHEMA_VERSION. A change to any table in runner/schema.py changes it: then
# bump SCHEMA_VERSION (files of the old layout are refused by name from then on) and record the new value here.
# Version 1 gained training's torch_threads and nice (issue 25) before any run folder of it was published (the
# version was an hour old, only test folders had it), so the number stayed and its fingerprint was updated.
FINGERPRINTS = {1: "1144576fb145"}


def _fingerprint() -> str:
    import hashlib

    from runner.schema import SCHEMAS
    text = ";".join(f"{name}:" + ",".join(f"{f.name}={f.type}" for f in schema)
                    for name, schema in sorted(SCHEMAS.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def test_a_schema_change_bumps_the_version():
    from runner.schema import SCHEMA_VERSION
    assert FINGERPRINTS.get(SCHEMA_VERSION) == _fingerprint(), \
        f"the Parquet schemas changed: bump SCHEMA_VERSION and record {_fingerprint()} for it in FINGERPRINTS"


def test_every_write_carries_the_version_and_reads_back(tmp_path):
    from runner.schema import SCHEMA_VERSION, read, version
    path = write_rows([_ok("mb-fp32", 0, 1.0)], tmp_path / "r.parquet")
    assert version(path) == str(SCHEMA_VERSION)
    assert read(path)["variant_id"].tolist() == ["mb-fp32"]
    frame = tmp_path / "f.parquet"  # write_frame (train-bench outputs) too
    from runner.results import write_frame
    write_frame(pd.DataFrame({"model": ["m"]}), frame)
    assert version(frame) == str(SCHEMA_VERSION)


def _old_file(path, rows, version: bytes | None = None):
    """A results file as older code wrote it: the schema of the day, with another version or none."""
    table = to_table(rows, RESULT_SCHEMA)
    if version is not None:
        table = table.replace_schema_metadata({b"cifar_runner.schema_version": version})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def test_a_file_of_another_version_is_refused_naming_file_and_version(tmp_path):
    from runner.schema import SchemaError, check, read
    none = _old_file(tmp_path / "none.parquet", [_ok("a", 0, 1.0)])
    other = _old_file(tmp_path / "other.parquet", [_ok("a", 0, 1.0)], b"0")
    with pytest.raises(SchemaError, match=r"none\.parquet: written with no schema version \(older code\); this "
                                          r"code reads only version 1\."):
        read(none)
    with pytest.raises(SchemaError) as info:
        check(other)
    assert str(info.value).startswith(f"{other}: written with schema version 0;") and "\n" not in str(info.value)


def test_an_old_part_stops_the_merge_instead_of_leaving_a_hole(tmp_path):
    """Skipped like a damaged file, an old part would leave a table that looks whole; it is refused."""
    from runner.results import SchemaError
    write_rows([_ok("a", 0, 1.0)], tmp_path / "results" / "a.parquet")
    _old_file(tmp_path / "results" / "b.parquet", [_ok("b", 0, 2.0)])
    with pytest.raises(SchemaError, match=r"results/b\.parquet"):
        merge(tmp_path)
    assert not (tmp_path / "results.parquet").exists()


def test_the_report_of_an_old_results_file_is_one_line_not_a_wrong_table(tmp_path, capsys):
    """The published reports were written by older code: `runner report` on one of their results files says
    which file and why, in one line, and writes no report.md."""
    import shutil
    from pathlib import Path

    from runner.cli import main
    published = Path(__file__).resolve().parents[1] / "reports" / "h200-1gpu-engine"
    shutil.copy(published / "results.parquet", tmp_path / "results.parquet")
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: {tmp_path / 'results.parquet'}: written with no schema version (older code); this "
                   f"code reads only version 1. Read it with the code of its commit (its rows' git_commit), or "
                   f"measure again here: a sweep's --fresh sets the old files aside.")
    assert not (tmp_path / "report.md").exists()


def test_a_resume_over_old_rows_stops_before_ray_naming_the_file(tmp_path, capsys):
    from runner.cli import main
    old = _old_file(tmp_path / "quick" / "results" / "tiny.parquet", [_ok("tiny", 0, 1.0)])
    argv = ["sweep", "--config", "variants/quick.yaml", "--data", "synthetic", "--out", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"error: {old}: written with no schema version" in err and "--fresh" in err
