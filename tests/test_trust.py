"""Issue 9's building blocks on CPU: paired decisions, padded evaluation, the fold check, agreement, flags."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn

from runner import agreement, decisions, evaluate, optimize, pairs
from variants import Variant


# ---- paired decisions on synthetic samples ----------------------------------------------------------

def test_parent_is_the_last_applied_optimisation_undone():
    v = Variant("m", precision="fp16", memory_format="channels_last", cuda_graph=True, bn_fold=True)
    p, axis = pairs.parent_of(v)
    assert axis == "bn_fold" and p.variant_id == "m-fp16-cl-eager-graph"
    assert pairs.parent_of(Variant("m")) == (None, None)
    planned = pairs.plan([v, p, Variant("m", precision="fp16")])
    assert [(a.variant_id, b.variant_id) for a, b, _ in planned] == [("m-fp16-cl-eager-graph", v.variant_id)]


def test_a_consistent_gain_is_kept_and_noise_is_not():
    rng = np.random.default_rng(0)
    drift = rng.normal(0, 0.3, 10)                      # drift shared by both sides of each round
    parent = list(3.0 + drift)
    faster = list(3.0 + drift - 0.05 + rng.normal(0, 0.005, 10))
    same = list(3.0 + drift + rng.normal(0, 0.02, 10))
    keep = pairs.verdict(parent, faster, acc_delta_pts=0.0)
    assert keep["decision"] == "keep" and keep["gain_ms"] == pytest.approx(0.05, abs=0.01)
    assert keep["sign_p"] < 0.01 and keep["noise_ms"] < 0.02   # drift cancels in the paired differences
    assert pairs.verdict(parent, same, 0.0)["decision"] == "drop (no measurable gain)"
    assert pairs.verdict(faster, parent, 0.0)["decision"] == "slower"
    assert pairs.verdict(parent, faster, -1.0)["decision"] == "drop (accuracy)"
    # Unpaired, the same numbers would be swamped: the drift's spread is 6x the gain.
    assert np.ptp(parent) > 6 * 0.05


def test_sign_test_is_exact():
    assert pairs.sign_test_p(10, 0) == pytest.approx(2 / 1024)
    assert pairs.sign_test_p(5, 5) == 1.0
    assert pairs.sign_test_p(9, 1) == pytest.approx(2 * 11 / 1024)


# ---- evaluation: padded last batch, batch-1 agreement ----------------------------------------------

class StaticShape(nn.Module):
    """Accepts one batch size only, as a captured CUDA graph does."""
    def __init__(self, batch: int):
        super().__init__()
        self.batch = batch
        self.fc = nn.Linear(3 * 32 * 32, 10)

    def forward(self, x):
        if x.shape[0] != self.batch:
            raise ValueError(f"graph captured for batch {self.batch}, got {x.shape[0]}")
        return self.fc(x.flatten(1))


def test_last_batch_is_padded_and_padding_is_dropped():
    images = np.random.default_rng(0).integers(0, 255, (70, 3, 32, 32), dtype=np.uint8)
    model = StaticShape(32).eval()
    cast = lambda x: x  # noqa: E731
    logits = evaluate.predict(model, images, torch.device("cpu"), 32, cast)
    assert logits.shape == (70, 10)
    plain = nn.Sequential(nn.Flatten(), model.fc).eval()
    with torch.no_grad():
        ref = plain(evaluate.normalized(images, torch.device("cpu")))
    assert torch.allclose(logits, ref, atol=1e-5)
    ones = evaluate.predict_one_by_one(StaticShape(1).eval().requires_grad_(False), torch.zeros(1, 3, 32, 32),
                                       images[:5], torch.device("cpu"), cast)
    assert ones.shape == (5, 10)


def test_top1_and_relative_error():
    logits = torch.tensor([[0.0, 2.0], [3.0, 1.0]])
    assert evaluate.top1(logits, np.array([1, 1])) == 50.0
    assert evaluate.max_rel_err(logits + 0.03, logits) == pytest.approx(0.01)


# ---- BN folding checked numerically -------------------------------------------------------------------

def _conv_bn():
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8192, 10))
    with torch.no_grad():
        m[1].running_mean.uniform_(-1, 1)
        m[1].running_var.uniform_(0.5, 2)
        m[1].weight.uniform_(0.5, 2)
    return m.eval()


def test_fold_error_is_rounding_for_a_correct_fold():
    x = torch.randn(16, 3, 32, 32)
    assert optimize.fold_error(_conv_bn(), x) < 1e-5


def test_fold_error_catches_a_wrong_fold(monkeypatch):
    """A fold that drops the BN's shift (a broken fuse) is far over the stated bound."""
    from runner.engine import rows as tasks

    real_fold = optimize.fold_batchnorm

    def broken_fold(model):
        folded, n = real_fold(model)
        for m in folded.modules():
            if isinstance(m, nn.Conv2d) and m.bias is not None:
                m.bias.data.zero_()
        return folded, n
    monkeypatch.setattr(optimize, "fold_batchnorm", broken_fold)
    assert optimize.fold_error(_conv_bn(), torch.randn(16, 3, 32, 32)) > tasks.FOLD_REL_ERR_MAX


def test_prepare_counts_folded_layers():
    p = optimize.prepare(_conv_bn(), Variant("m", bn_fold=True), torch.device("cpu"))
    assert p.folded_layers == 1
    assert optimize.prepare(_conv_bn(), Variant("m"), torch.device("cpu")).folded_layers == 0


# ---- agreement, flags, the chosen model ---------------------------------------------------------------

def _summary():
    return pd.DataFrame([
        {"variant_id": "a", "brief_id": "B1", "status": "ok", "cuda_graph": False, "compile": "none",
         "lat_p50_ms": 2.0, "lat_p95_ms": 2.2, "host_p50_ms": 2.05, "host_p95_ms": 2.3, "top1_pct": 86.0},
        {"variant_id": "b", "brief_id": None, "status": "ok", "cuda_graph": True, "compile": "none",
         "lat_p50_ms": 0.100, "lat_p95_ms": 0.110, "host_p50_ms": 0.40, "host_p95_ms": 0.45, "top1_pct": 90.0},
        {"variant_id": "c", "brief_id": None, "status": "ok", "cuda_graph": True, "compile": "none",
         "lat_p50_ms": 0.150, "lat_p95_ms": 0.160, "host_p50_ms": 0.17, "host_p95_ms": 0.18, "top1_pct": 89.0},
        {"variant_id": "d", "brief_id": None, "status": "error", "cuda_graph": False, "compile": "none",
         "lat_p50_ms": None, "lat_p95_ms": None, "host_p50_ms": None, "host_p95_ms": None, "top1_pct": None},
    ])


def test_chosen_on_what_a_caller_waits():
    # b has the lowest event p95 but a caller waits 0.45 ms for it; c is what a caller gets fastest.
    assert decisions.choose_id(_summary(), 85.0) == "c"


def test_recheck_sample_has_named_chosen_and_random_rows():
    s = _summary()
    assert decisions.recheck_sample(s, 0, 85.0) == ["a", "c"]
    assert sorted(decisions.recheck_sample(s, 5, 85.0)) == ["a", "b", "c"]   # never an error row
    assert decisions.recheck_sample(s, -1, 85.0) == []


def test_agreement_uses_graph_and_eager_tolerances():
    rechecks = pd.DataFrame([{"variant_id": "a", "status": "ok", "recheck_p50_ms": 1.85},    # eager, 8% off
                             {"variant_id": "c", "status": "ok", "recheck_p50_ms": 0.140}])  # graph, 7% off
    t = agreement.agreement(_summary(), rechecks).set_index("variant_id")
    assert bool(t.loc["a", "within"]) and not bool(t.loc["c", "within"])
    assert t.loc["c", "ratio"] == pytest.approx(0.150 / 0.140)
    flags = agreement.flags(_summary().iloc[2].to_dict(), {"c"})
    assert "re-check disagrees" in flags
    assert "host >> event" in agreement.flags(_summary().iloc[1].to_dict(), set())
    assert agreement.flags(_summary().iloc[0].to_dict(), set()) == ""


def test_rechecks_of_older_code_are_refused_by_name(tmp_path):
    """Re-checks written by older code (before `recheck_repeats` existed, and before files had a schema
    version) are not read as rows of one repeat: the part reader and the report's name the file. Rows of this
    code say how they were timed."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from runner import report_trust, results

    older = pa.schema([f for f in results.RECHECK_SCHEMA if f.name not in ("recheck_repeats", "recheck_cv_pct")])
    rows = [{"variant_id": "a", "status": "ok", "recheck_p50_ms": 1.85},
            {"variant_id": "c", "status": "ok", "recheck_p50_ms": 0.140}]
    (tmp_path / "rechecks").mkdir()
    pq.write_table(results.to_table(rows[:1], older), tmp_path / "rechecks" / "a.parquet")  # as older code did
    with pytest.raises(results.SchemaError, match=r"rechecks/a\.parquet: written with no schema version"):
        results.read_folder(tmp_path / "rechecks", results.RECHECK_SCHEMA)
    pq.write_table(results.to_table(rows, older), tmp_path / "rechecks.parquet")  # its merged file
    with pytest.raises(results.SchemaError, match=r"rechecks\.parquet: .*reads only version"):
        report_trust.read(tmp_path, "rechecks")

    new_rows = [{**r, "recheck_repeats": 3, "recheck_cv_pct": 1.2, "recheck_slices": 1} for r in rows]
    results.write_rows(new_rows, tmp_path / "rechecks.parquet", results.RECHECK_SCHEMA)
    table = agreement.agreement(_summary(), report_trust.read(tmp_path, "rechecks"))
    text = "\n".join(report_trust.recheck_section(table, True))
    assert "3 repeats each, spread round-robin" in text and "median over repeats" in text
    assert "1 of 2 agree" in text


def test_the_recheck_text_says_how_its_repeats_were_spread():
    from runner.report_trust import _recheck_repeats

    plain = pd.DataFrame({"recheck_repeats": [3, 3], "recheck_slices": [1, 1]})
    assert "hit at most one repeat" in _recheck_repeats(plain)
    sliced = pd.DataFrame({"recheck_repeats": [3, 3], "recheck_slices": [5, 5]})
    text = _recheck_repeats(sliced)
    assert text.startswith("3 repeats each") and "each repeat in 5 slices spread over the task" in text


def _cpu_checks(wrap, on_forward=None) -> dict:
    """runner.engine.rows.checks on a CPU, a small conv net, 150 synthetic test images in batches of 64;
    `wrap(fn1)` is the timed batch-1 callable the checks get, `on_forward(batch)` sees each eval batch."""
    from runner.data import synthetic
    from runner.engine import rows
    from variants import BenchSpec, Recipe, TrainSpec

    cpu = torch.device("cpu")
    model = _conv_bn()
    prepared = optimize.prepare(model, Variant("m"), cpu)
    fn1, x1, _ = prepared.callable_for(1)
    if on_forward is not None:
        forward = prepared.forward
        object.__setattr__(prepared, "forward", lambda x: on_forward(x.shape[0]) or forward(x))
    spec = TrainSpec(key="m", arch="airbench_cifar", recipe=Recipe(test_subset=150))
    return rows.checks(model, prepared, wrap(fn1), x1, synthetic(n_train=64, n_test=150), spec,
                       BenchSpec(eval_batch_size=64), cpu, Variant("m"))


def test_cpu_checks_make_fewer_calls():
    """On a CPU the batch-1 agreement runs AGREE_IMAGES_CPU calls (each one is slow there), on the test
    subset's first images, and still compares every one of them with the eval callable's predictions; the
    accuracy pass makes no warm-up calls (each would be a whole batch)."""
    from runner.engine import rows

    calls, batches = [], []
    out = _cpu_checks(lambda fn1: lambda x: calls.append(x.shape[0]) or fn1(x), batches.append)
    assert rows.AGREE_IMAGES_CPU < rows.AGREE_IMAGES
    assert calls == [1] * rows.AGREE_IMAGES_CPU
    assert batches == [64, 64, 64]  # 150 images in batches of 64 (the last padded), and nothing more
    assert out["b1_agree_pct"] == 100.0 and out["top1_pct"] is not None and "check_error" not in out


def test_a_batch_1_path_that_sometimes_answers_wrong_is_an_error_row():
    """The timed callable must give the eval callable's answers: one that is wrong on 1 call in 10 (as a race in
    a kernel would be) makes the row an error, whatever its accuracy and logit error say."""
    calls = []

    def racy(fn1):
        def call(x):
            calls.append(1)
            y = fn1(x)
            return -y if len(calls) % 10 == 0 else y  # the lowest logit becomes the highest
        return call
    out = _cpu_checks(racy)
    assert out["b1_agree_pct"] <= 90.0 and out["top1_pct"] is not None
    assert "the timed batch-1 path predicts other classes than the evaluation" in out["check_error"]
