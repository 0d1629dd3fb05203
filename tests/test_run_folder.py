"""A run folder that remembers its data and never contradicts itself (issue 25): the data source recorded
as it was used and reused by export / train / a resume, a no-op resume keeping the real timing section, and
`--fresh` setting the old outputs aside in one step. Real files, real Parquet; no Ray, no sweep."""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from runner import commands, env, export, guard, results
from runner.data import load
from runner.engine import run_folder
from runner.engine.steps import now
from runner.report import build_report
from variants import load_sweep

SWEEP = """
sweep: unit
data: {source: cifar10}
models:
  tiny: {arch: airbench_cifar, recipe: {epochs: 1, batch_size: 8}}
grid:
  - models: [tiny]
"""


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """An image folder of 10 classes x 2 images per split, named by a *relative* path from tmp_path."""
    monkeypatch.setenv("CIFAR_RUNNER_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"):
            (tmp_path / "imgs" / split / c).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
                    tmp_path / "imgs" / split / c / f"{i}.png")
    return "imgs"


def _spec(tmp_path, source="cifar10"):
    (tmp_path / "unit.yaml").write_text(SWEEP.replace("cifar10", source))
    return load_sweep(tmp_path / "unit.yaml")


def test_the_folder_records_the_data_it_used_and_export_and_train_reload_it(tmp_path, folder, monkeypatch):
    spec, data = _spec(tmp_path), load(folder)  # `sweep --data imgs` beside a sweep file naming cifar10
    run_dir = tmp_path / "runs" / "unit"
    run_dir.mkdir(parents=True)
    run_folder.write_meta(spec, data, run_dir, {}, now(), "", "code")
    absolute = str((tmp_path / "imgs").resolve())
    assert run_folder.resolved(spec, data)["data"]["source"] == absolute  # resolved_config.json: what was used
    assert json.loads((run_dir / "sweep.json").read_text())["data"] == \
        {"source": absolute, "root": None, "sweep_file": "cifar10"}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the relative name no longer resolves: only the record finds the folder
    # export without --data: the sweep's image folder, never a CIFAR-10 download
    x, y, source = export.sweep_test_set(run_dir, {"data_source": data.source}, {"recipe": {}}, None)
    assert x.shape == (20, 3, 32, 32) and len(y) == 20 and source == data.source
    # train (and a resume) without --data: the same folder while the sweep file still names cifar10 ...
    args = argparse.Namespace(data=None)
    assert commands._data(spec, args, run_dir).origin == absolute
    # ... and the sweep file's own source once it names another one
    assert commands._data(_spec(tmp_path, "synthetic"), args, run_dir).origin == "synthetic"


# ---- a folder that never contradicts itself ---------------------------------------------------------------

def _ok_row(vid: str, top1: float, p95: float, rep: int, spec_hash: str = "") -> dict:
    return dict(sweep="unit", variant_id=vid, brief_id=None, label=vid, model="tiny", arch="airbench_cifar",
                precision="fp32", memory_format="contiguous", compile="none", cuda_graph=False, bn_fold=False,
                status="ok", repeat=rep, top1_pct=top1, lat_mean_ms=p95 * 0.9, lat_p50_ms=p95 * 0.8, lat_p95_ms=p95,
                host_p50_ms=p95 * 0.8, host_p95_ms=p95, device="cpu", timer="host", size_mb=1.0, spec_hash=spec_hash,
                finished_at=now(), timing_order="round-robin", timing_slices=1, slice_p50s_ms=f"[{p95 * 0.8}]")


def _finished_run(tmp_path, spec, data, rows: list[dict]) -> Path:
    """A run folder as a finished invocation leaves it: part files, steps, merged files, sweep.json, report."""
    from datetime import datetime, timedelta, timezone

    from runner.engine.steps import StepLog
    from runner.results import write_rows

    run_dir = tmp_path / "runs" / "unit"
    for vid in {r["variant_id"] for r in rows}:
        write_rows([r for r in rows if r["variant_id"] == vid], run_dir / "results" / f"{vid}.parquet")
    t0 = datetime.now(timezone.utc) - timedelta(seconds=120)
    at = [(t0 + timedelta(seconds=s)).isoformat(timespec="milliseconds") for s in (1, 2, 60, 61, 100, 101)]
    steps = StepLog(run_dir)
    steps.add({"kind": "train", "name": "tiny", "start": at[1], "end": at[2], "hostname": "h"}, submitted=at[0],
              landed=at[3])
    steps.add({"kind": "time", "name": "bench:0", "start": at[3], "end": at[4], "hostname": "h"}, submitted=at[3],
              landed=at[5])
    results.merge(run_dir)
    run_folder.write_meta(spec, data, run_dir, {"gpus": 0, "nodes": 1}, t0.isoformat(), "", "code")
    build_report(run_dir)
    return run_dir


def _section(text: str, title: str) -> str:
    return text[text.index(f"## {title}"):].split("\n## ")[0]


def test_an_interrupted_fresh_leaves_the_new_folder_and_the_old_one_whole_in_previous(tmp_path):
    spec, data = _spec(tmp_path, "synthetic"), load("synthetic")
    run_dir = _finished_run(tmp_path, spec, data, [_ok_row("tiny-a", 91.0, 2.0, r) for r in range(3)])
    old_report = (run_dir / "report.md").read_text()
    assert "**`tiny-a`, tiny-a**" in _section(old_report, "Chosen model") and (run_dir / "acc_vs_latency.png").exists()
    (run_dir / guard.LOCK_NAME).write_text("{}")  # the sweep's lock stays where the sweep holds it
    run_folder.set_aside(run_dir, lambda _: None)  # sweep --fresh, then Ctrl-C before anything landed:
    run_folder.close(run_dir, False, lambda _: None, spec=spec, data=data, cluster={}, started=now(),
                     shortened_note="", code="code", worked=False)
    assert len(pd.read_parquet(run_dir / "results.parquet")) == 0
    new_report = (run_dir / "report.md").read_text()  # rebuilt from the 0 rows beside it: nothing is chosen
    assert "tiny-a" not in new_report and "Nothing finished" in new_report and "**Interrupted" in new_report
    assert not (run_dir / "acc_vs_latency.png").exists() and (run_dir / guard.LOCK_NAME).exists()
    (old,) = (run_dir / "previous").iterdir()
    assert (old / "report.md").read_text() == old_report and len(pd.read_parquet(old / "results.parquet")) == 3
    assert {p.name for p in old.iterdir()} >= {"results", "steps", "sweep.json", "final_table.csv",
                                              "acc_vs_latency.png"}


def test_a_fresh_move_cut_short_is_finished_by_the_next_invocation(tmp_path):
    spec, data = _spec(tmp_path, "synthetic"), load("synthetic")
    run_dir = _finished_run(tmp_path, spec, data, [_ok_row("tiny-a", 91.0, 2.0, r) for r in range(3)])
    before = {p.name for p in run_dir.iterdir()}
    staging = run_dir / "previous" / f"{run_folder.STAGING}20260101T000000"
    staging.mkdir(parents=True)
    (run_dir / "report.md").rename(staging / "report.md")  # killed after set_aside's first move
    assert run_folder.cut_short(run_dir)
    run_folder.set_aside(run_dir, lambda _: None)  # what the next invocation does first, --fresh or not
    assert not run_folder.cut_short(run_dir) and [p.name for p in run_dir.iterdir()] == ["previous"]
    assert {p.name for p in (run_dir / "previous" / "20260101T000000").iterdir()} == before


def test_a_no_op_resume_keeps_the_real_timing_section(tmp_path):
    """Running a finished sweep again leaves the report's timing as the real run measured it, and starts no
    Ray: what a local cluster would have is known without one (runner.sweep.local_devices)."""
    from runner.sweep import local_devices, run_sweep, variant_hash

    spec, data = _spec(tmp_path, "synthetic"), load("synthetic")
    spec = dataclasses.replace(spec, bench=dataclasses.replace(spec.bench, recheck=-1))
    (v,) = spec.variants
    done = variant_hash(v, spec.model(v.model), spec.bench, data.source, env.code_digest())
    # The rows as this machine would have timed them: a CPU row does not stand for a GPU machine's
    here = local_devices()
    device = {"device": "cuda", "gpu_name": here["gpu_kinds"][0], "timer": "cuda_event"} if here["gpus"] else {}
    rows = [{**_ok_row(v.variant_id, 91.0, 2.0, r, done), **device} for r in range(3)]
    run_dir = _finished_run(tmp_path, spec, data, rows)
    before = (run_dir / "report.md").read_text()
    timing = _section(before, "Where the time went")
    assert "2 steps" in timing and "120 s of wall time" in timing
    lines: list[str] = []
    report = run_sweep(spec, data, run_dir, log=lines.append)
    assert any("resuming: 1 variant(s) already measured" in line for line in lines)
    assert "nothing left to run: every variant, twin and re-check is on disk (Ray not started)" in lines, lines
    assert not any("starting Ray" in line for line in lines)
    after = report.read_text()
    assert _section(after, "Where the time went") == timing
    assert after.splitlines()[2] == before.splitlines()[2]  # the header's wall time: still the real run's
    meta = json.loads((run_dir / "sweep.json").read_text())
    assert len(meta["noop_runs"]) == 1 and "previous_runs" not in meta
