"""CPU smoke tests of the measurement verbs (crosscheck, exclusivity, train-bench, train-summary).

Each verb runs in-process through `runner.cli.main` with tiny settings. CPU timings here are noisy, so the tests
check that the reports are complete and sane, not that the timers agree.
"""
from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch

from runner import train_bench
from runner.cli import main
from runner.diagnostics import crosscheck, exclusivity

TINY_YAML = """
sweep: tiny
seed: 0
data: {source: synthetic}
models:
  tiny:
    arch: airbench_cifar
    arch_args: {width_mult: 0.25}
    recipe: {epochs: 1, batch_size: 64, lr: 0.1, train_subset: 128, test_subset: 64}
  tiny_kd:
    arch: airbench_cifar
    arch_args: {width_mult: 0.125}
    teacher: tiny
    recipe: {epochs: 1, batch_size: 64, lr: 0.1, train_subset: 128, test_subset: 64}
grid:
  - precision: [fp32]
"""


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback path")
def test_crosscheck_cpu_timer_fallback(tmp_path, capsys):
    out = tmp_path / "cc.json"
    # One variant keeps the test fast (the plain, unsubstituted path is covered by the unit test below).
    rc = main(["crosscheck", "--iters", "20", "--warmup", "5", "--min-run-time", "0.2",
                          "--only", "airbench_cifar", "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0
    assert "independent timer: torch" in text
    assert "ours#1 ms" in text and "indep ms" in text and "host p50 ms" in text
    assert "airbench_cifar-fp32-cl-eager-fold" in text  # the fp16 + graph variant, made CPU-runnable
    report = json.loads(out.read_text())
    # the verdict printed and stored is the one its own results give (CPU timings may agree or not)
    assert report["verdict"] == crosscheck.verdict(report["results"]) and report["verdict"] in text
    assert report["independent_timer"] == "torch"
    assert len(report["results"]) == 1
    for r in report["results"]:
        assert "error" not in r, r
        for key in ("ours_first", "ours_second"):
            assert r[key]["timer"] == "host" and len(r[key]["lat_p50_ms_per_repeat"]) == 3
            assert 0 < r[key]["lat_p50_ms"] < 10_000 and r[key]["host_p50_ms"] > 0
        assert 0 < r["independent_p50_ms"] < 10_000
        assert r["independent_method"].startswith("torch.utils.benchmark.Timer")
        assert math.isclose(r["ratio"], r["independent_p50_ms"] / r["ours_p50_ms"])
        assert r["agree"] == (abs(r["ratio"] - 1) <= 0.10)
    assert "CUDA graphs need a CUDA device" in report["results"][0]["substitution"]
    assert report["results"][0]["requested_variant_id"] == "airbench_cifar-fp16-cl-eager-graph-fold"


def test_crosscheck_variants_and_cpu_substitution():
    cpu = torch.device("cpu")
    rn, air, mb = crosscheck.DEFAULT_VARIANTS
    assert (rn.precision, rn.memory_format, rn.cuda_graph) == ("fp16", "channels_last", True)
    assert air.bn_fold and air.cuda_graph and mb.precision == "fp32" and not mb.cuda_graph
    sub, note = crosscheck.runnable_variant(air, cpu)
    assert (sub.precision, sub.cuda_graph, sub.bn_fold, sub.memory_format) == ("fp32", False, True, "channels_last")
    assert note and crosscheck.runnable_variant(mb, cpu) == (mb, "")
    assert [v.model for v in crosscheck.selected_variants("mobilenet_v3_small_cifar")] == [mb.model]
    with pytest.raises(SystemExit):
        crosscheck.selected_variants("nope")


def test_crosscheck_verdict_names_every_disagreement():
    """The verdict line is what a user reads: all agree only when every timer pair is within the tolerance."""
    rows = [{"variant_id": v, "ratio": r, "agree": abs(r - 1) <= crosscheck.AGREE_TOL}
            for v, r in (("a", 1.02), ("b", 0.95), ("c", 1.3))]
    assert crosscheck.verdict(rows[:2]) == "CROSSCHECK: all agree within 10%"
    assert crosscheck.verdict(rows) == "CROSSCHECK: DISAGREE on c (more than 10% apart)"
    failed = {"variant_id": "d", "error": "RuntimeError: boom", "agree": False}
    assert crosscheck.verdict([*rows, failed]) == "CROSSCHECK: DISAGREE on c, d (error) (more than 10% apart)"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_exclusivity_needs_gpu(tmp_path, capsys):
    out = tmp_path / "ex.json"
    assert main(["exclusivity", "--seconds", "1", "--out", str(out)]) == 0
    assert "needs a CUDA GPU" in capsys.readouterr().out
    assert not out.exists()


def test_exclusivity_verdict_logic():
    alone = {"gpu_exclusive": True, "gpu_other_pids": "", "nvml_all_pids": [1], "host_over_event": 1.1}
    loaded = {"gpu_exclusive": False, "gpu_other_pids": "42", "nvml_all_pids": [1, 42], "host_over_event": 6.0}
    assert exclusivity.verdict(alone, loaded).startswith("EXCLUSIVITY: detected")
    assert exclusivity.verdict(alone, {**loaded, "gpu_exclusive": True}).startswith("EXCLUSIVITY: NOT detected")
    assert exclusivity.verdict({**alone, "gpu_exclusive": False}, loaded).startswith("EXCLUSIVITY: NOT detected")
    assert exclusivity.verdict(alone, None).startswith("EXCLUSIVITY: NOT detected")


def test_train_bench_student_with_teacher_two_seeds(tmp_path, capsys):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY_YAML)
    out = tmp_path / "tb.parquet"
    rc = main(["train-bench", "--config", str(cfg), "--models", "tiny_kd", "--data", "synthetic",
                           "--seeds", "0,1", "--max-epochs", "1", "--device", "cpu", "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0
    assert "model" in text and "img/s" in text and "top1 %" in text
    assert "tiny (t)" in text and "top-1 over seeds" in text and " nan " not in text
    df = pd.read_parquet(out)
    # the teacher was trained once per seed, before its student, and is marked as not requested
    assert list(zip(df["model"], df["seed"])) == [("tiny", 0), ("tiny_kd", 0), ("tiny", 1), ("tiny_kd", 1)]
    assert list(df["requested"]) == [False, True, False, True]
    assert list(df["teacher"].fillna("-")) == ["-", "tiny", "-", "tiny"]
    assert {"model", "arch", "teacher", "seed", "epochs", "train_s", "wall_s", "train_img_per_s", "top1_pct",
            "log_json", "data_source", "device"} <= set(df.columns)
    assert (df["epochs"] == 1).all() and (df["train_s"] > 0).all() and (df["wall_s"] >= df["train_s"]).all()
    assert (df["train_img_per_s"] > 0).all() and (df["steady_img_per_s"] > 0).all() and df["top1_pct"].between(0, 100).all()
    assert (df["device"] == "cpu").all() and df["data_source"].str.startswith("synthetic").all()
    logs = [json.loads(s) for s in df["log_json"]]
    assert all(len(log) == 1 and log[0]["epoch"] == 1 for log in logs)
    summary = train_bench.seed_summary(df)
    assert set(summary.index) == {"tiny", "tiny_kd"} and (summary["seeds"] == 2).all()
    assert (summary["spread"] == summary["max"] - summary["min"]).all()


def test_train_bench_plan_teacher_seed_and_repeated_seeds(tmp_path):
    from variants import load_sweep
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY_YAML)
    spec = load_sweep(cfg)
    kd = [spec.model("tiny_kd")]

    def keys(order):
        return [(m.key, m.seed, requested) for m, requested, _ in order]
    # default: one teacher per student seed
    assert keys(train_bench.plan(spec, kd, [0, 1])) == [
        ("tiny", 0, False), ("tiny_kd", 0, True), ("tiny", 1, False), ("tiny_kd", 1, True)]
    # --teacher-seed 7: the teacher is trained once, every student seed learns from it
    assert keys(train_bench.plan(spec, kd, [0, 1, 2], teacher_seed=7)) == [
        ("tiny", 7, False), ("tiny_kd", 0, True), ("tiny_kd", 1, True), ("tiny_kd", 2, True)]
    # --seeds 0,0: a requested model is trained twice (run-to-run reproducibility), its teacher once
    assert keys(train_bench.plan(spec, kd, [0, 0])) == [("tiny", 0, False), ("tiny_kd", 0, True), ("tiny_kd", 0, True)]
    both = [spec.model("tiny"), spec.model("tiny_kd")]
    assert keys(train_bench.plan(spec, both, [0, 0])) == [
        ("tiny", 0, True), ("tiny_kd", 0, True), ("tiny", 0, True), ("tiny_kd", 0, True)]
    # a student listed before its (requested) teacher: the teacher is trained once per seed, not twice
    assert keys(train_bench.plan(spec, both[::-1], [0])) == [("tiny", 0, True), ("tiny_kd", 0, True)]
    # a requested teacher trained at --teacher-seed for a student is not one of the requested seeds' runs
    assert keys(train_bench.plan(spec, both, [0], teacher_seed=7)) == [
        ("tiny", 0, True), ("tiny", 7, False), ("tiny_kd", 0, True)]


@pytest.fixture(scope="module")
def teacher_seed_run(tmp_path_factory):
    """`train-bench --teacher-seed 3` for the student (3 trainings), shared by the two tests that read it."""
    root = tmp_path_factory.mktemp("train-bench")
    cfg, out = root / "tiny.yaml", root / "roundA" / "kd.parquet"
    cfg.write_text(TINY_YAML)
    rc = main(["train-bench", "--config", str(cfg), "--models", "tiny_kd", "--data", "synthetic", "--seeds", "0,1",
               "--teacher-seed", "3", "--device", "cpu", "--out", str(out)])
    return rc, out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback path")
def test_train_bench_teacher_seed_records_the_teacher(teacher_seed_run):
    rc, out = teacher_seed_run
    assert rc == 0
    df = pd.read_parquet(out)
    assert list(zip(df["model"], df["seed"])) == [("tiny", 3), ("tiny_kd", 0), ("tiny_kd", 1)]
    students = df[df["model"] == "tiny_kd"]
    teacher_top1 = df.loc[df["model"] == "tiny", "top1_pct"].item()
    assert (students["teacher_seed"] == 3).all() and (students["teacher_top1_pct"] == teacher_top1).all()


def test_train_bench_unknown_model(tmp_path, capsys):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY_YAML)
    assert main(["train-bench", "--config", str(cfg), "--models", "nope", "--out", str(tmp_path / "x.parquet")]) == 2
    assert "models there: tiny, tiny_kd" in capsys.readouterr().err


def test_crosscheck_triton_api_variants(monkeypatch):
    """Both do_bench APIs (new `return_mode`, old `quantiles`) give a median; no GPU needed with a fake."""
    testing = pytest.importorskip("triton.testing")
    calls = []

    def new_api(fn, warmup=25, rep=100, grad_to_none=None, quantiles=None, return_mode="mean"):
        fn()
        calls.append(return_mode)
        return 1.5

    def old_api(fn, warmup=25, rep=100, grad_to_none=None, quantiles=None, fast_flush=True):
        fn()
        calls.append(quantiles)
        return [2.5]

    fn = lambda x: x + 1  # noqa: E731
    monkeypatch.setattr(testing, "do_bench", new_api)
    assert crosscheck.triton_median_ms(fn, torch.zeros(1), warmup_ms=1, rep_ms=1) == (
        1.5, "triton.testing.do_bench(return_mode='median')")
    monkeypatch.setattr(testing, "do_bench", old_api)
    assert crosscheck.triton_median_ms(fn, torch.zeros(1), warmup_ms=1, rep_ms=1)[0] == 2.5
    assert calls == ["median", [0.5]]


def test_exclusivity_child_plumbing():
    """wait_ready / stop_load on harmless children (the real load needs a GPU); the load code compiles."""
    import subprocess
    import sys

    compile(exclusivity.LOAD_CODE, "<load>", "exec")
    ok = subprocess.Popen([sys.executable, "-c", "import time; print('ready', flush=True); time.sleep(60)"],
                          stdout=subprocess.PIPE, text=True)
    try:
        assert exclusivity.wait_ready(ok, timeout_s=30)
    finally:
        assert exclusivity.stop_load(ok) is not None
    assert ok.poll() is not None
    dead = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"], stdout=subprocess.PIPE, text=True)
    assert not exclusivity.wait_ready(dead, timeout_s=30)
    assert exclusivity.stop_load(dead) == 3


def test_train_all_reports_every_finished_training(tmp_path):
    from runner.data import synthetic
    from variants import load_sweep
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY_YAML)
    spec = load_sweep(cfg)
    seen: list[list[str]] = []
    order = train_bench.plan(spec, [spec.model("tiny_kd")], [0])
    rows = train_bench.train_all(spec, order, synthetic(), torch.device("cpu"),
                                 on_row=lambda rows: seen.append([r["model"] for r in rows]))
    assert seen == [["tiny"], ["tiny", "tiny_kd"]]       # after each training, all rows so far
    assert [r["model"] for r in rows] == ["tiny", "tiny_kd"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback path")
def test_train_summary_merges_rounds_and_tabulates(teacher_seed_run, tmp_path, capsys):
    from runner import train_summary
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY_YAML)
    outs = [teacher_seed_run[1], tmp_path / "roundB" / "twice.parquet"]
    assert teacher_seed_run[0] == 0
    assert main(["train-bench", "--config", str(cfg), "--models", "tiny", "--data", "synthetic", "--seeds", "0,0",
                             "--device", "cpu", "--out", str(outs[1])]) == 0
    capsys.readouterr()
    merged, md = tmp_path / "training.parquet", tmp_path / "tables.md"
    assert main(["train-summary", *map(str, outs), "--merged-out", str(merged), "--markdown-out", str(md)]) == 0
    text = capsys.readouterr().out
    df = pd.read_parquet(merged)
    assert len(df) == 5 and set(df["round"]) == {"roundA", "roundB"} and set(df["job"]) == {"kd", "twice"}
    s = train_summary.summarize(df)
    assert list(zip(s["job"], s["model"], s["seeds"])) == [("kd", "tiny", "3"), ("kd", "tiny_kd", "0,1"),
                                                           ("twice", "tiny", "0,0")]
    twice = s[s["job"] == "twice"].iloc[0]
    assert twice["same_seed_repeats"] == 1 and twice["top1_spread"] == 0.0   # CPU: the same seed, the same result
    kd = s[s["model"] == "tiny_kd"].iloc[0]
    vals = df.loc[df["model"] == "tiny_kd", "top1_pct"]
    assert kd["top1_mean"] == pytest.approx(vals.mean()) and kd["teacher"] == "tiny"
    assert "tiny (teacher)" in text and "tiny_kd <- tiny" in text and md.read_text() == text
    assert text.count("\n") == 2 + 3                                          # header, rule, three rows


def test_train_summary_bad_inputs_fail_cleanly(tmp_path, capsys):
    from runner import train_summary
    assert main(["train-summary", str(tmp_path / "missing.parquet")]) == 2
    assert "missing.parquet" in capsys.readouterr().err
    other = tmp_path / "results.parquet"
    pd.DataFrame({"variant_id": ["x"], "p50_ms": [1.0]}).to_parquet(other)
    assert main(["train-summary", str(other)]) == 2
    err = capsys.readouterr().err
    assert "results.parquet: not a train_bench output" in err and "model" in err


def test_train_summary_refuses_a_train_bench_output_of_older_code(tmp_path, capsys):
    """The published rounds (reports/h200-training/) were written before files carried a schema version: their
    tables are read with the code of their commit, and this one says so in one line."""
    import shutil
    from pathlib import Path

    round2 = Path(__file__).resolve().parents[1] / "reports" / "h200-training" / "round2"
    published = sorted(round2.glob("*.parquet"))
    old = Path(shutil.copy(published[0], tmp_path / published[0].name))
    assert main(["train-summary", str(old)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {old}: written with no schema version") and "\n" not in err
