"""One sweep end to end through a real local Ray cluster, on small synthetic data (CPU, or the GPU where there is
one: the same assertions, with what differs by device said where it differs).

Checks the spine: YAML -> Ray train / distill / bench tasks -> Parquet rows as they land -> merged files
-> report; a model that fails to train becomes error rows while the rest goes on; what a second run
would resume.
"""
from __future__ import annotations

import re

import pandas as pd
import pytest
import torch

from runner import timeline

pytestmark = pytest.mark.slow
GPU = torch.cuda.is_available()  # the sweep runs on the GPU when there is one: graphs run, CUDA events time


@pytest.fixture
def sweep_run(tiny_sweep):
    """The session's sweep (tests/conftest.py: TINY_SWEEP): a real local Ray cluster, synthetic data."""
    return tiny_sweep


def test_every_variant_ends_as_a_row(sweep_run):
    spec, _, run_dir, _, lines = sweep_run
    df = pd.read_parquet(run_dir / "results.parquet")
    assert set(df["variant_id"]) == {v.variant_id for v in spec.variants}
    status = df.groupby("variant_id")["status"].first()
    assert status["tiny-fp32-nchw-eager"] == "ok"
    assert status["tiny_kd-fp32-nchw-eager"] == "ok"
    assert status["tiny-fp32-nchw-eager-graph"] == ("ok" if GPU else "skipped")  # no CUDA graph on a CPU
    broken = df[df["model"] == "broken"].iloc[0]
    assert broken["status"] == "error"
    assert "training of model 'broken' failed" in broken["error"] and "batch_size 4096 is larger" in broken["error"]
    # Progress: one line per landed task: 3 trainings + every variant, then the pairs and the re-checks.
    landed = [re.search(r"\b(?:train|bench|pair|twin|recheck):\S+", l).group(0) for l in lines if l.startswith("[")]
    assert sum(t.startswith(("train:", "bench:")) for t in landed) == 3 + len(spec.variants)
    assert any(t.startswith("pair:") for t in landed) and any(t.startswith("recheck:") for t in landed)
    # Trainings all land before the first benchmark starts (phases), so no timing shares the host with one.
    kinds = [t.split(":")[0] for t in landed]
    assert max(i for i, k in enumerate(kinds) if k == "train") < min(i for i, k in enumerate(kinds) if k == "bench")


def test_one_benchmark_actor_per_phase_and_fresh_training_processes(sweep_run):
    """Trainings run in processes of their own (a process that trained times eager code ~1.5x slower); every
    variant of the bench phase is timed by the one long-lived actor of this one-node cluster, and the
    second process (twin) and the re-check each by a new one."""
    _, _, run_dir, _, _ = sweep_run
    bench = pd.read_parquet(run_dir / "results.parquet").query("status == 'ok'").drop_duplicates("variant_id")
    train = pd.read_parquet(run_dir / "training.parquet").dropna(subset=["pid"]).drop_duplicates("model")
    rechecks = pd.read_parquet(run_dir / "rechecks.parquet").query("status == 'ok'")
    assert len(bench) >= 4 and bench["pid"].nunique() == 1
    twins = pd.read_parquet(run_dir / "twins.parquet").query("status == 'ok'")
    assert set(twins["variant_id"]) == set(bench["variant_id"])  # every measured variant in a second process
    assert rechecks["pid"].nunique() == 1 and twins["pid"].nunique() == 1
    assert len(set(rechecks["pid"]) | set(twins["pid"]) | set(bench["pid"])) == 3  # three processes
    assert not set(train["pid"]) & (set(bench["pid"]) | set(rechecks["pid"]))


def test_recheck_times_in_reverse_order(sweep_run):
    """The witness prepares the variants in the opposite order to the bench actor: a number that depended on
    what the process had done before would disagree there."""
    _, _, run_dir, _, _ = sweep_run
    bench = pd.read_parquet(run_dir / "results.parquet").query("status == 'ok'").drop_duplicates("variant_id")
    rechecks = pd.read_parquet(run_dir / "rechecks.parquet").query("status == 'ok'")
    order_recheck = list(rechecks.sort_values("started_at")["variant_id"])
    assert len(order_recheck) >= 2
    b = bench.set_index("variant_id").loc[order_recheck]
    assert list(b.sort_values("started_at").index) == order_recheck[::-1]


def test_ok_rows_carry_measurements_and_provenance(sweep_run):
    spec, data, run_dir, _, _ = sweep_run
    df = pd.read_parquet(run_dir / "results.parquet")
    ok = df[df["status"] == "ok"]
    assert set(ok.groupby("variant_id")["repeat"].count()) == {3}
    for col in ["lat_mean_ms", "lat_p50_ms", "lat_p95_ms", "host_p50_ms", "size_mb", "top1_pct"]:
        assert (ok[col] > 0).all(), col
    assert (ok["lat_p95_ms"] >= ok["lat_p50_ms"]).all()
    assert (ok["timer"] == ("cuda_event" if GPU else "host")).all()
    assert (ok["device"] == ("cuda" if GPU else "cpu")).all()
    assert ok["torch_version"].notna().all() and ok["git_commit"].notna().all()
    assert ok["data_source"].str.startswith(data.source).all()  # plus the recipe's subset, when one is used
    samples = pd.read_parquet(run_dir / "samples" / "tiny-fp32-nchw-eager.parquet")
    row = ok[ok["variant_id"] == "tiny-fp32-nchw-eager"]
    # every call of every kept slice (iters / slices calls each); a slow round's slices are replaced, so at
    # least `slices` per repeat
    bench = spec.bench
    per_slice = bench.iters // bench.slices
    assert bench.iters % bench.slices == 0 and per_slice >= 2
    assert len(samples) == per_slice * row["timing_slices"].sum() and (row["timing_slices"] >= bench.slices).all()


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
    assert "| B2 |" in text and "| D1 |" in text and ("NVIDIA" if GPU else "CPU only") in text
    assert "3 repeats each, spread round-robin over the re-checked variants of a group, each repeat in 5 slices" in text


def test_trainings_run_at_the_drivers_priority_with_a_thread_per_cpu(sweep_run):
    """Every training process ran at nice 0, as the driver (Ray's default of 15 let any other program on a
    shared host come first), and on a CPU with one torch thread per CPU its task held: one, as trainings
    share the node."""
    _, _, run_dir, _, _ = sweep_run
    ok = pd.read_parquet(run_dir / "training.parquet").query("status == 'ok'")
    assert set(ok["model"]) == {"tiny", "tiny_kd"}
    assert (ok["nice"] == 0).all()
    if not GPU:
        assert (ok["torch_threads"] == 1).all()


def test_steps_account_for_the_work_and_timings_run_alone(sweep_run):
    """The step log has every kind of work, the failed training as an error step, and no step of ours ran on
    the host while a timing did (the driver's gate); the report's time breakdown comes from it."""
    _, _, run_dir, report, _ = sweep_run
    steps = timeline.read_steps(run_dir)
    assert {"train", "start", "load", "prepare", "time", "pairs", "check", "profile", "recheck"} <= set(steps["kind"])
    assert (steps.query("kind == 'train' and name == 'broken'")["status"] == "error").all()
    ok = steps.dropna(subset=["start", "end"])
    assert (ok["submitted"] <= ok["start"] + pd.Timedelta("1s")).all() and (ok["end"] <= ok["landed"]).all()
    bench = ok[ok["kind"] != "train"]
    for _, t in bench[bench["kind"] == "time"].iterrows():
        others = bench.drop(t.name)
        assert not ((others["start"] < t["end"]) & (others["end"] > t["start"])).any(), t["name"]
    text = report.read_text()
    assert (run_dir / "timeline.png").exists() and "## Where the time went" in text and "| time |" in text


def test_a_sweep_stopped_in_its_recheck_phase_has_only_its_rechecks_left(sweep_run, copy_of):
    """What the next invocation runs, as run_sweep asks it (runner/engine/resume.py): with the re-check rows gone
    (a sweep stopped in its re-check phase), every measured variant stays done, only the failed model's variant
    is pending, and exactly the re-checked variants are due again, from checkpoints on disk. (The re-check phase
    itself runs through Ray in the session sweep; resuming through Ray: test_faults.)"""
    from runner import env, sweep
    from runner.engine import resume
    spec, data, shared, _, _ = sweep_run
    run_dir = copy_of(shared)
    here = {"gpus": 1, "gpu_kinds": [torch.cuda.get_device_name(0)]} if GPU else {"gpus": 0}
    hashes = {v.variant_id: sweep.variant_hash(v, spec.model(v.model), spec.bench, data.source, env.code_digest())
              for v in spec.variants}
    status = pd.read_parquet(run_dir / "results.parquet").groupby("variant_id")["status"].first()
    checked = set(pd.read_parquet(run_dir / "rechecks.parquet")["variant_id"])
    assert len(checked) >= 2 and resume.witnesses_due(spec, run_dir) == {}  # the finished sweep: nothing due
    for part in (run_dir / "rechecks").glob("*.parquet"):
        part.unlink()
    lines: list[str] = []
    pending = resume.pending(spec, run_dir, hashes, here, lines.append)
    assert {v.variant_id for v in pending} == set(status[status == "error"].index) == {"broken-fp32-nchw-eager"}
    assert lines == [f"resuming: {len(spec.variants) - 1} variant(s) already measured by this code on this kind "
                     f"of device in {run_dir}, 1 to run (--fresh measures everything again)"]
    due = resume.witnesses_due(spec, run_dir)
    assert set(due) == {"rechecks"} and set(due["rechecks"]) == checked  # no twin: those are all still there
    assert resume.witnesses_runnable(spec, run_dir)  # their model's checkpoint is there


def test_rows_from_other_code_are_measured_again(sweep_run, monkeypatch):
    """Resume keys carry a digest of the project's code: a row measured by other code does not count as done
    (the same comparison run_sweep makes before it submits anything)."""
    from runner import env, sweep
    from runner.engine import resume
    spec, data, run_dir, _, _ = sweep_run
    ok = pd.read_parquet(run_dir / "results.parquet").query("status == 'ok'")
    assert set(ok["code_digest"]) == {env.code_digest()}  # the digest of the code the workers ran
    here = {"gpus": 1, "gpu_kinds": [torch.cuda.get_device_name(0)]} if GPU else {"gpus": 0}
    elsewhere = {"gpus": 0} if GPU else {"gpus": 1, "gpu_kinds": ["H200"]}
    done = resume.finished_rows(run_dir, here)

    def finished(code: str) -> set[str]:
        return {v.variant_id for v in spec.variants
                if done.get(v.variant_id) == sweep.variant_hash(v, spec.model(v.model), spec.bench, data.source, code)}

    assert set(ok["variant_id"]) <= finished(env.code_digest())
    assert finished("0123456789ab") == set()  # other code: every variant is measured again
    assert resume.finished_rows(run_dir, elsewhere).keys() <= \
        {v for v, s in pd.read_parquet(run_dir / "results.parquet").groupby("variant_id")["status"].first().items()
         if s == "skipped"}  # a CPU row does not stand for a GPU one, nor a GPU row for a CPU one


def test_report_has_the_trust_sections(sweep_run):
    _, _, run_dir, report, _ = sweep_run
    text = report.read_text()
    for heading in ("## In-sweep vs re-check", "## Decisions (keep / drop)", "## Numerical checks and flags",
                    "## Accuracy vs latency: the Pareto front"):
        assert heading in text, heading
    assert "Paired: parent and variant were timed in the same round-robin rounds" in text
    assert "**The host's rounds.**" in text  # tiny's fp32 task timed two variants round-robin
    ok = pd.read_parquet(run_dir / "results.parquet").query("status == 'ok'")
    assert (ok["timing_order"] == "round-robin").all()
    pairs = pd.read_parquet(run_dir / "pairs.parquet")
    # channels_last and fold are the two optimisations with a measured parent in the sweep file
    assert {"tiny-fp32-cl-eager", "tiny-fp32-nchw-eager-fold"} <= set(pairs["variant_id"])
    assert (pairs["status"] == "ok").all()
    rechecks = pd.read_parquet(run_dir / "rechecks.parquet")
    assert {"tiny-fp32-nchw-eager", "tiny_kd-fp32-nchw-eager"} <= set(rechecks["variant_id"])  # the named rows
    ok = pd.read_parquet(run_dir / "results.parquet").query("status == 'ok'")
    assert (ok["b1_agree_pct"] >= 99).all() and ok["path_max_rel_err"].notna().all()
    fold = ok[ok["bn_fold"]]
    assert (fold["fold_max_rel_err"] < 1e-4).all() and (fold["folded_layers"] > 0).all()
