"""The engine's rules on CPU, without Ray: an actor's program order, the driver's host gate, the assignment
of models to actors, and the one timing path (rows, pairs and re-checks from the same slices)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from runner.engine import program, rows
from runner.engine.program import HostGate, Step
from variants import BenchSpec, Variant


def _v(model="m", **axes):
    return Variant(model, **axes)


def _kinds(steps):
    return [s.kind for s in steps]


def test_program_times_every_variant_of_a_stage_before_checking_any_and_profiles_last():
    eager, graph, comp = _v(), _v(cuda_graph=True), _v(compile="default")
    steps = program.bench_program(["m"], [eager, graph, comp], [], slices=2)
    kinds = _kinds(steps)
    assert kinds[0] == "load" and kinds[-1] == "profile"
    assert kinds.count("profile") == 1 and kinds.count("time") == 4  # 2 slices x 2 stages
    last_time = max(i for i, k in enumerate(kinds) if k == "time")
    # no timing after any profile, and none between a stage's first check and the next stage's prepare
    stage_of = [s.stage for s in steps]
    for i, k in enumerate(kinds):
        if k == "finish":
            later_same_stage = [j for j in range(i, len(steps)) if stage_of[j] == stage_of[i] and kinds[j] == "time"]
            assert not later_same_stage
    assert last_time < kinds.index("profile")
    # eager (non-compiling) stage before the compiling one: no eager timing follows a compile
    assert [s.stage for s in steps if s.kind == "prepare"] == ["m", "m", "m compiling"]


def test_a_compiled_child_s_parent_is_timed_again_in_its_stage_for_the_pair():
    parent, child = _v(precision="fp16"), _v(precision="fp16", compile="default")
    steps = program.bench_program(["m"], [parent, child], [(parent, child)], slices=1)
    comp_time = [s for s in steps if s.kind == "time" and s.stage == "m compiling"]
    assert comp_time and set(comp_time[0].args[0]) == {parent.variant_id, child.variant_id}
    pairs = [s for s in steps if s.kind == "pairs"]
    assert len(pairs) == 1 and pairs[0].stage == "m compiling"
    assert pairs[0].args[0] == ((parent.variant_id, child.variant_id),)


def test_a_parent_from_an_earlier_invocation_is_prepared_without_a_row():
    parent, child = _v(precision="fp16"), _v(precision="fp16", compile="default")
    steps = program.bench_program(["m"], [child], [(parent, child)], slices=1)
    aux = [s for s in steps if s.kind == "prepare" and len(s.args) == 3]
    assert len(aux) == 1 and aux[0].args[0] is parent and aux[0].args[2] is True and aux[0].ids == ()


def test_recheck_program_reverses_the_order_and_only_times():
    vs = [_v(), _v(precision="fp16"), _v(memory_format="channels_last")]
    steps = program.bench_program(["m"], vs, [(vs[0], vs[1])], slices=2, recheck=True)
    assert set(_kinds(steps)) == {"load", "prepare", "time", "more", "recheck_rows"}
    assert [s.args[0] for s in steps if s.kind == "prepare"] == vs[::-1]


def test_gate_lets_a_timing_run_only_alone_on_its_host_and_never_starves_it():
    g = HostGate()
    g.started("h1", "prepare")
    g.new_round()
    assert not g.may_start("h1", "time")          # another step of ours runs on h1
    assert not g.may_start("h1", "prepare")       # a timing waits: no new work starts beside it
    assert g.may_start("h2", "prepare") and g.may_start("h2", "time")  # other hosts are independent
    g.ended("h1", "prepare")
    g.new_round()
    assert g.may_start("h1", "time")
    g.started("h1", "time")
    assert g.timing_on("h1") and not g.may_start("h1", "check") and not g.may_start("h1", "time")
    g.ended("h1", "time")
    g.new_round()
    assert g.may_start("h1", "check") and not g.timing_on("h1")


def test_assign_balances_longest_first_and_rotates_for_the_recheck():
    costs = {"a": 10.0, "b": 6.0, "c": 5.0, "d": 1.0}
    first = program.assign(costs, 2)
    assert sorted(sum(costs[k] for k in g) for g in first) == [11.0, 11.0]
    assert program.assign(costs, 2, rotate=1) == first[::-1]  # every model on the other GPU
    assert program.assign(costs, 1) == [["a", "b", "c", "d"]]
    assert program.assign({"a": 1.0}, 3)[0] == ["a"]


def test_rows_pairs_and_rechecks_come_from_the_same_slices():
    bench = BenchSpec(warmup=1, iters=6, repeats=3, slices=2)
    rng = np.random.default_rng(0)
    slices = [rows.Slice("m", r, s * 3 + r, rng.normal(2.0, 0.01, 3), rng.normal(2.1, 0.01, 3), "host")
              for s in range(2) for r in range(3)]
    base = {"variant_id": "m-fp32", "sweep": "t"}
    out, raw = rows.latency_rows(base, slices, bench)
    assert [r["repeat"] for r in out] == [0, 1, 2] and len(raw) == 3 * 6
    for r in out:  # each repeat's row: its two slices, their p50s in time order
        mine = [s for s in slices if s.repeat == r["repeat"]]
        assert json.loads(r["slice_p50s_ms"]) == pytest.approx([float(np.median(s.lat_ms)) for s in mine])
        assert r["lat_p50_ms"] == pytest.approx(float(np.median(np.concatenate([s.lat_ms for s in mine]))))
    again = rows.recheck_row("m-fp32", slices, bench, {})
    assert again["recheck_p50_ms"] == pytest.approx(float(np.median([r["lat_p50_ms"] for r in out])))
    assert rows.slice_sizes(10, 3) == [4, 3, 3] and sum(rows.slice_sizes(500, 7)) == 500


def test_step_is_hashable_plain_data():
    s = Step("time", (("a",), 0, "m"), "m", ("a",))
    assert s.timing and not Step("prepare").timing


# ---- the actor itself, in this process (no Ray): one timing path from prepare to rows, pairs and profile ----

@pytest.fixture(scope="module")
def worker():
    import torch

    from runner.data import synthetic
    from runner.engine.worker import BenchWorker
    from runner.train import build_model
    from variants import TrainSpec

    spec = TrainSpec(key="m", arch="airbench_cifar", arch_args=(("width_mult", 0.125),))
    model = build_model(spec.arch, dict(spec.arch_args))
    ckpt = {"arch": spec.arch, "arch_args": dict(spec.arch_args), "state_dict": model.state_dict(),
            "data_source": "synthetic", "top1_pct": 10.0}
    vs = [_v(), _v(precision="bf16"), _v(bn_fold=True)]
    bench = BenchSpec(warmup=1, iters=4, repeats=3, slices=2, eval_batch_size=32)
    w = BenchWorker("t", bench, {v.variant_id: "h" for v in vs})
    w.load("m", spec, ckpt, synthetic(n_train=32, n_test=48))
    torch.manual_seed(0)
    return w, vs


def test_the_actor_times_pairs_checks_and_profiles_from_one_set_of_slices(worker):
    w, (fp32, bf16, fold) = worker
    for v in (fp32, bf16, fold):
        assert w.prepare(v, "m")[0] is None  # held, no row yet
    ids = tuple(v.variant_id for v in (fp32, bf16, fold))
    for s in range(2):
        w.time(ids, s, "m")
    done, (want, steps) = 2, w.more(ids, "m", 2)[0]
    while steps and done < 8:  # as the driver does: a slow host round (it happens on any host) is timed again
        assert set(want) <= set(ids)  # without target_pct `more` only replaces slow rounds
        for s in range(done, done + steps):
            w.time(want, s, "m")
        done, (want, steps) = done + steps, w.more(ids, "m", done + steps)[0]
    pairs, _ = w.pairs(((fp32.variant_id, bf16.variant_id),), "m")
    assert len(pairs) == 1 and pairs[0]["rounds"] == len(json.loads(pairs[0]["child_p50s_ms"]))
    assert pairs[0]["rounds"] == len([x for x in w.live[bf16.variant_id].slices if x.stage == "m"])
    (out, raw), step = w.finish(fold.variant_id)
    assert step["kind"] == "check" and [r["repeat"] for r in out] == [0, 1, 2]
    assert all(r["status"] == "ok" and r["fold_max_rel_err"] < 1e-3 and r["top1_pct"] is not None for r in out)
    kept = sum(r["timing_slices"] for r in out)  # 2 slices x 3 repeats, more where a slow round was replaced
    assert kept >= 6 and out[0]["slices_timed"] >= kept and out[0]["stop_reason"] == "planned"
    assert len(raw) == kept * 2  # every call of every kept slice: 4 iters in 2 slices
    assert out[0]["lat_p50_lo_ms"] <= out[0]["lat_p50_ms"] * 1.5  # 6 slices: an interval exists
    prof, _ = w.profile(ids)
    assert set(prof) == set(ids) and all("breakdown_note" in p for p in prof.values())
    assert not w.live  # the actor lets its variants go after its last step


def test_an_unsupported_variant_is_a_skipped_row_and_drops_out_of_timing(worker):
    w, _ = worker
    graph = _v(cuda_graph=True)
    w.hashes[graph.variant_id] = "h"
    (rows_, raw), _ = w.prepare(graph, "m")
    assert rows_[0]["status"] == "skipped" and "CUDA" in rows_[0]["error"] and raw == []
    assert w.time((graph.variant_id,), 0, "m")[1]["kind"] == "time"
    assert w.finish(graph.variant_id)[0] is None


def test_a_cpu_actor_times_on_the_threads_its_bench_asks_for():
    """`bench.cpu_threads` sets a CPU actor's torch threads; 0 leaves them at one per CPU Ray gave the actor
    (outside Ray, as they were)."""
    import torch

    from runner.engine.worker import BenchWorker

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        BenchWorker("t", BenchSpec(cpu_threads=1), {})
        assert torch.get_num_threads() == 1
        torch.set_num_threads(2)
        BenchWorker("t", BenchSpec(), {})
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
