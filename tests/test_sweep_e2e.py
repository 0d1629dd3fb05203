"""One sweep end to end through a real local Ray cluster, on small synthetic data (CPU).

Checks the spine: YAML -> Ray train / distill / bench tasks -> Parquet rows as they land -> merged files
-> report; a model that fails to train becomes error rows while the rest goes on; a second run resumes.
"""
from __future__ import annotations

import re

import pandas as pd
import pytest

from runner import phases, timeline
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
  broken:                       # more images per batch than the data has: training fails inside its task
    arch: shufflenet_v2_x0_5_cifar
    recipe: {epochs: 1, batch_size: 4096, test_subset: 128}
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
    assert "training of model 'broken' failed" in broken["error"] and "batch_size 4096 is larger" in broken["error"]
    # Progress: one line per landed task: 3 trainings + every variant, then the pairs and the re-checks.
    landed = [re.search(r"\b(?:train|bench|pair|recheck):\S+", l).group(0) for l in lines if l.startswith("[")]
    assert sum(t.startswith(("train:", "bench:")) for t in landed) == 3 + len(spec.variants)
    assert any(t.startswith("pair:") for t in landed) and any(t.startswith("recheck:") for t in landed)
    # Trainings all land before the first benchmark starts (phases), so no timing shares the host with one.
    kinds = [t.split(":")[0] for t in landed]
    assert max(i for i, k in enumerate(kinds) if k == "train") < min(i for i, k in enumerate(kinds) if k == "bench")


def test_every_task_ran_in_its_own_process(sweep_run):
    """A reused worker that had trained timed eager ~1.5x slower on an H200: every task gets a fresh one.
    A bench task measures one group (a model's variants of one precision), so its variants share a pid
    and no other group or training has it; the re-check of a group runs in yet another process."""
    spec, _, run_dir, _, _ = sweep_run
    bench = pd.read_parquet(run_dir / "results.parquet")
    bench = bench[bench["status"] == "ok"].drop_duplicates("variant_id")
    train = pd.read_parquet(run_dir / "training.parquet").dropna(subset=["pid"]).drop_duplicates("model")
    rechecks = pd.read_parquet(run_dir / "rechecks.parquet").dropna(subset=["pid"])
    by_id = {v.variant_id: v for v in spec.variants}
    bench["group"] = [phases.group_key(by_id[i]) for i in bench["variant_id"]]
    pid_groups = bench.groupby("pid")["group"].nunique()
    assert (pid_groups == 1).all() and bench.groupby("group")["pid"].nunique().eq(1).all()
    pids = list(bench["pid"].unique()) + list(train["pid"]) + list(rechecks["pid"].unique())
    assert len(pids) == len(set(pids)) and len(bench) >= 3 and len(train) >= 2 and len(rechecks) >= 1
    # Each of those processes ran the worker setup hook first, and its rows say when (runner/startup.py).
    for rows in (bench, train, rechecks):
        started = pd.to_datetime(rows["worker_started_at"], utc=True, format="ISO8601")
        ready = pd.to_datetime(rows["worker_ready_at"], utc=True, format="ISO8601")
        assert started.notna().all() and (started <= ready).all()
        assert (ready <= pd.to_datetime(rows["started_at"], utc=True, format="ISO8601")).all()
    assert "**Task start-up.**" in (run_dir / "report.md").read_text()


def test_recheck_times_a_group_in_reverse_order(sweep_run):
    """The witness sees each group's variants in the opposite order to the bench task: a number that
    depended on what ran before it in the process would disagree there."""
    spec, _, run_dir, _, _ = sweep_run
    bench = pd.read_parquet(run_dir / "results.parquet").drop_duplicates("variant_id")
    rechecks = pd.read_parquet(run_dir / "rechecks.parquet")
    for pid, r in rechecks[rechecks["status"] == "ok"].groupby("pid"):
        if len(r) < 2:
            continue
        order_recheck = list(r.sort_values("started_at")["variant_id"])
        b = bench.set_index("variant_id").loc[order_recheck]
        assert list(b.sort_values("started_at").index) == order_recheck[::-1], pid
        return
    pytest.fail("no group with two or more re-checked variants")


def test_ok_rows_carry_measurements_and_provenance(sweep_run):
    _, data, run_dir, _, _ = sweep_run
    df = pd.read_parquet(run_dir / "results.parquet")
    ok = df[df["status"] == "ok"]
    assert set(ok.groupby("variant_id")["repeat"].count()) == {3}
    for col in ["lat_mean_ms", "lat_p50_ms", "lat_p95_ms", "host_p50_ms", "size_mb", "top1_pct"]:
        assert (ok[col] > 0).all(), col
    assert (ok["lat_p95_ms"] >= ok["lat_p50_ms"]).all()
    assert (ok["host_wait_s"] >= 0).all()  # every timing went through the host lock (runner/hostlock.py)
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
    assert "3 repeats each, spread round-robin over the re-checked variants of a group, each repeat in 5 slices" in text


def test_timeline_matches_the_rows(sweep_run):
    """Every task row with a start is one bar of its kind; nothing overlaps a timing task (phases)."""
    _, _, run_dir, report, _ = sweep_run
    tasks, untimed, _ = timeline.load(run_dir)
    expected = set()
    for kind, name, key, start, _ in timeline.SOURCES:
        rows = pd.read_parquet(run_dir / name) if (run_dir / name).exists() else pd.DataFrame()
        assert rows.empty or rows[start].notna().any(), name
        expected |= {(kind, n) for n in rows.loc[rows[start].notna(), key]} if len(rows) else set()
    assert set(zip(tasks["kind"], tasks["name"])) == expected and len(tasks) == len(expected)
    assert {"train", "bench", "pair", "check", "re-check"} <= set(tasks["kind"])
    # The training that failed inside its task and the variants it took along have only the driver's row.
    assert untimed["train"] == 1 and untimed["bench"] == sum(v.model == "broken" for v in sweep_run[0].variants)
    assert tasks["gpu_uuid"].isna().all() and tasks["lane"].str.contains("/CPU").all()
    for _, t in tasks[tasks["kind"] != "train"].iterrows():  # a benchmark takes every CPU of its node
        others = tasks.drop(t.name)
        assert not ((others["start"] < t["end"]) & (others["end"] > t["start"])).any(), t["name"]
    stats = timeline.lane_stats(tasks)
    span = (tasks["end"].max() - tasks["start"].min()).total_seconds()
    assert ((stats["busy_s"] + stats["idle_s"]) - span).abs().max() < 1e-6
    assert (run_dir / "timeline.png").exists() and "## Where the time went" in report.read_text()


def test_rerun_resumes_and_keeps_finished_rows(sweep_run):
    spec, data, run_dir, _, _ = sweep_run
    before = pd.read_parquet(run_dir / "results.parquet")
    lines: list[str] = []
    run_sweep(spec, data, run_dir, log=lines.append)
    after = pd.read_parquet(run_dir / "results.parquet")
    done = (before["status"].isin(["ok", "skipped"])).groupby(before["variant_id"]).all().sum()
    assert any(f"resuming: {done} variant(s) already measured" in l for l in lines)
    assert any("reusing checkpoint of tiny" in l for l in lines) is False  # tiny's variants are all done
    ok_before = before[before["status"] == "ok"].set_index(["variant_id", "repeat"])["finished_at"]
    ok_after = after[after["status"] == "ok"].set_index(["variant_id", "repeat"])["finished_at"]
    assert ok_after.loc[ok_before.index].equals(ok_before)  # finished rows untouched
    assert not any("train:tiny " in l or l.endswith("train:tiny") for l in lines)


def test_rows_from_other_code_are_measured_again(sweep_run, monkeypatch):
    """Resume keys carry a digest of the project's code: a row measured by other code does not count."""
    spec, data, run_dir, _, _ = sweep_run
    from runner import env
    real = env.code_digest()
    before = pd.read_parquet(run_dir / "results.parquet").query("status == 'ok'")
    assert set(before["code_digest"]) == {real}  # the digest of the code the workers ran
    monkeypatch.setattr(env, "code_digest", lambda: "0123456789ab")  # the driver now runs "other" code
    lines: list[str] = []
    run_sweep(spec, data, run_dir, log=lines.append)
    assert not any(l.startswith("resuming:") for l in lines)
    after = pd.read_parquet(run_dir / "results.parquet").query("status == 'ok'")
    assert set(after["variant_id"]) == set(before["variant_id"])
    assert (after.groupby("variant_id")["finished_at"].first() > before.groupby("variant_id")["finished_at"].first()).all()


def test_report_has_the_trust_sections(sweep_run):
    _, _, run_dir, report, _ = sweep_run
    text = report.read_text()
    for heading in ("## In-sweep vs re-check", "## Decisions (keep / drop)", "## Numerical checks and flags",
                    "## Accuracy vs latency: the Pareto front"):
        assert heading in text, heading
    assert "Paired: parent and variant were prepared in one task" in text
    assert "**The host's rounds.**" in text  # tiny's fp32 task timed two variants round-robin
    ok = pd.read_parquet(run_dir / "results.parquet").query("status == 'ok'")
    assert (ok["timing_order"] == "round-robin").all()
    pairs = pd.read_parquet(run_dir / "pairs.parquet")
    # bf16 and fold are the two optimisations with a measured parent in the sweep file above
    assert {"tiny-bf16-nchw-eager", "tiny-fp32-nchw-eager-fold"} <= set(pairs["variant_id"])
    assert (pairs["status"] == "ok").all()
    rechecks = pd.read_parquet(run_dir / "rechecks.parquet")
    assert {"tiny-fp32-nchw-eager", "tiny_kd-fp32-nchw-eager"} <= set(rechecks["variant_id"])  # the named rows
    ok = pd.read_parquet(run_dir / "results.parquet").query("status == 'ok'")
    assert (ok["b1_agree_pct"] >= 99).all() and ok["path_max_rel_err"].notna().all()
    fold = ok[ok["bn_fold"]]
    assert (fold["fold_max_rel_err"] < 1e-4).all() and (fold["folded_layers"] > 0).all()
