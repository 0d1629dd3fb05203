"""One sweep end to end through a real local Ray cluster, on small synthetic data (CPU).

Checks the spine: YAML -> Ray train / distill / bench tasks -> Parquet rows as they land -> merged files
-> report; a model that fails to train becomes error rows while the rest goes on; a second run resumes.
"""
from __future__ import annotations

import pandas as pd
import pytest

from runner.data import synthetic
from runner.sweep import run_sweep
from variants import load_sweep

pytestmark = pytest.mark.slow

SWEEP = """
sweep: e2e
bench: {warmup: 3, iters: 20, repeats: 3, eval_batch_size: 64}
models:
  tiny:
    arch: airbench_cifar
    arch_args: {width_mult: 0.25}
    recipe: {epochs: 1, batch_size: 64, lr: 0.05, train_subset: 256, test_subset: 128}
  tiny_kd:
    arch: airbench_cifar
    arch_args: {width_mult: 0.25}
    teacher: tiny
    recipe: {epochs: 1, batch_size: 64, lr: 0.05, train_subset: 256, test_subset: 128}
  broken:                       # the builder rejects this argument: training fails inside its task
    arch: shufflenet_v2_x0_5_cifar
    arch_args: {no_such_argument: 1}
    recipe: {epochs: 1, batch_size: 64, train_subset: 256, test_subset: 128}
grid:
  - models: [tiny]
    precision: [fp32, bf16]
    bn_fold: [off, on]
  - models: [tiny]
    cuda_graph: [on]            # no GPU here: a skipped row with the reason
named:
  B2: {model: tiny, precision: fp32, label: "tiny fp32"}
  D1: {model: tiny_kd, precision: fp32, label: "distilled"}
  B1: {model: broken, precision: fp32}
"""


@pytest.fixture(scope="module")
def sweep_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    cfg = root / "e2e.yaml"
    cfg.write_text(SWEEP)
    spec = load_sweep(cfg)
    data = synthetic(n_train=256, n_test=128)
    lines: list[str] = []
    report = run_sweep(spec, data, root / "runs" / "e2e", log=lines.append)
    return spec, data, root / "runs" / "e2e", report, lines


def test_every_variant_ends_as_a_row(sweep_run):
    spec, _, run_dir, _, lines = sweep_run
    df = pd.read_parquet(run_dir / "results.parquet")
    assert set(df["variant_id"]) == {v.variant_id for v in spec.variants}
    status = df.groupby("variant_id")["status"].first()
    assert status["tiny-fp32-nchw-eager"] == "ok"
    assert status["tiny_kd-fp32-nchw-eager"] == "ok"
    assert status["tiny-fp32-nchw-eager-graph"] == "skipped"
    broken = df[df["model"] == "broken"].iloc[0]
    assert broken["status"] == "error"
    assert "training of model 'broken' failed" in broken["error"] and "no_such_argument" in broken["error"]
    # Progress: one line per landed task (3 trainings + every variant).
    assert sum(1 for l in lines if l.startswith("[")) == 3 + len(spec.variants)


def test_ok_rows_carry_measurements_and_provenance(sweep_run):
    _, data, run_dir, _, _ = sweep_run
    df = pd.read_parquet(run_dir / "results.parquet")
    ok = df[df["status"] == "ok"]
    assert set(ok.groupby("variant_id")["repeat"].count()) == {3}
    for col in ["lat_mean_ms", "lat_p50_ms", "lat_p95_ms", "host_p50_ms", "size_mb", "top1_pct"]:
        assert (ok[col] > 0).all(), col
    assert (ok["lat_p95_ms"] >= ok["lat_p50_ms"]).all()
    assert (ok["timer"] == "host").all() and (ok["device"] == "cpu").all()
    assert ok["torch_version"].notna().all() and ok["git_commit"].notna().all()
    assert ok["data_source"].str.startswith(data.source).all()  # plus the recipe's subset, when one is used
    # bf16 stores half the bytes of fp32 (all but BN's int64 step counters, a few bytes).
    size = ok.groupby("variant_id")["size_mb"].first()
    assert size["tiny-bf16-nchw-eager"] == pytest.approx(size["tiny-fp32-nchw-eager"] / 2, rel=1e-3)
    samples = pd.read_parquet(run_dir / "samples" / "tiny-fp32-nchw-eager.parquet")
    assert len(samples) == 3 * 20


def test_training_rows_and_merged_outputs(sweep_run):
    _, _, run_dir, report, _ = sweep_run
    tr = pd.read_parquet(run_dir / "training.parquet")
    last = tr.sort_values("epoch").groupby("model").last()
    assert last.loc["tiny", "status"] == "ok" and last.loc["tiny_kd", "teacher"] == "tiny"
    assert last.loc["broken", "status"] == "error"
    assert (run_dir / "checkpoints" / "tiny.pt").exists()
    csv = pd.read_csv(run_dir / "final_table.csv")
    assert "tiny-fp32-nchw-eager" in set(csv["variant_id"])
    text = report.read_text()
    assert "| B2 |" in text and "| D1 |" in text and "CPU only" in text


def test_rerun_resumes_and_keeps_finished_rows(sweep_run):
    spec, data, run_dir, _, _ = sweep_run
    before = pd.read_parquet(run_dir / "results.parquet")
    lines: list[str] = []
    run_sweep(spec, data, run_dir, log=lines.append)
    after = pd.read_parquet(run_dir / "results.parquet")
    done = (before["status"].isin(["ok", "skipped"])).groupby(before["variant_id"]).all().sum()
    assert any(f"resuming: {done} variant(s) already finished" in l for l in lines)
    assert any("reusing checkpoint of tiny" in l for l in lines) is False  # tiny's variants are all done
    ok_before = before[before["status"] == "ok"].set_index(["variant_id", "repeat"])["finished_at"]
    ok_after = after[after["status"] == "ok"].set_index(["variant_id", "repeat"])["finished_at"]
    assert ok_after.loc[ok_before.index].equals(ok_before)  # finished rows untouched
    assert not any("train:tiny " in l or l.endswith("train:tiny") for l in lines)
