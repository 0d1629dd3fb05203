"""Repeats timed round-robin over a group (runner/round_robin.py), in the bench task and the re-check, on the
CPU with real torch, real host locks and real Parquet; spies only record which variant each timing was."""
from __future__ import annotations

import contextlib

import numpy as np
import pandas as pd
import pytest

from runner import env, hostlock
from test_hostlock import _spy_on_cpu, _tiny_trained


@pytest.fixture(scope="module")
def trained():
    return _tiny_trained()


def _variants():
    from variants import Variant

    return (Variant("tiny", precision="fp32"), Variant("tiny", precision="fp32", memory_format="channels_last"),
            Variant("tiny", precision="fp32", bn_fold=True))


def _record_timings(monkeypatch, tmp_path, fail_on: tuple[str, int] | None = None) -> list[tuple]:
    """Every timing as (variant_id, inside a timing hold, repeats asked for, the Samples it gave), in order;
    each variant's callable is known from the prepare step that made it. `fail_on` (variant_id, n): that
    variant's n-th timing raises."""
    from runner import bench as bench_mod, tasks

    monkeypatch.setenv(hostlock.LOCK_DIR_ENV, str(tmp_path))
    owner: dict[int, str] = {}
    timings: list[tuple] = []
    in_timing: list[bool] = []
    real_timing, real_measure = hostlock.timing, bench_mod.measure
    real_prepare_one, real_prepared_callable = tasks._prepare_one, tasks._prepared_callable

    @contextlib.contextmanager
    def timing():
        with real_timing() as waited:
            in_timing.append(True)
            try:
                yield waited
            finally:
                in_timing.pop()

    def prepare_one(variant, *a, **k):
        t = real_prepare_one(variant, *a, **k)
        if isinstance(t, tasks.Timed):
            owner[id(t.fn)] = variant.variant_id
        return t

    def prepared_callable(variant, *a, **k):
        fn, x = real_prepared_callable(variant, *a, **k)
        owner[id(fn)] = variant.variant_id
        return fn, x

    def measure(fn, x, **k):
        vid = owner[id(fn)]
        if fail_on and fail_on[0] == vid and sum(t[0] == vid for t in timings) + 1 == fail_on[1]:
            timings.append((vid, bool(in_timing), k["repeats"], []))
            raise RuntimeError("boom in a repeat")
        out = real_measure(fn, x, **k)
        timings.append((vid, bool(in_timing), k["repeats"], out))
        return out

    monkeypatch.setattr(hostlock, "timing", timing)
    monkeypatch.setattr(bench_mod, "measure", measure)
    monkeypatch.setattr(tasks, "_prepare_one", prepare_one)
    monkeypatch.setattr(tasks, "_prepared_callable", prepared_callable)
    _spy_on_cpu(monkeypatch, lambda name: None)  # CPU tasks
    return timings


def _bench_group(trained, monkeypatch, tmp_path, **bench_kw):
    """The three variants' bench task under the timing recorder: (timings, ids, bench, out)."""
    from runner import tasks
    from variants import BenchSpec

    timings = _record_timings(monkeypatch, tmp_path)
    spec, ckpt, data = trained
    ids = [v.variant_id for v in _variants()]
    bench = BenchSpec(eval_batch_size=64, pair_rounds=2, **bench_kw)
    out = tasks.bench_job(list(_variants()), [], spec, ckpt, data, bench, "s", {i: i for i in ids})
    return timings, ids, bench, out


def test_the_bench_task_times_repeats_round_robin(trained, tmp_path, monkeypatch):
    timings, ids, bench, out = _bench_group(trained, monkeypatch, tmp_path, warmup=1, iters=5, repeats=3, slices=1)
    assert [t[0] for t in timings] == ids * 3                     # v1 v2 v3 v1 v2 v3 v1 v2 v3
    assert all(inside and repeats == 1 for _, inside, repeats, _ in timings)  # one repeat per timing hold
    for vid in ids:
        rows, raw = out["bench"][vid]
        assert rows[0]["status"] == "ok" and [r["repeat"] for r in rows] == [0, 1, 2]
        # each row is its own repeat, in order: the p50 of the samples that timing gave
        mine = [s for v, _, _, got in timings if v == vid for s in got]
        assert [r["lat_p50_ms"] for r in rows] == [float(np.percentile(s.lat_ms, 50)) for s in mine]
        assert len(raw) == 3 * bench.iters and rows[0]["host_wait_s"] >= 0
        assert rows[0]["timed_at"] >= rows[0]["started_at"] and rows[0]["nvml_samples"] == 0  # no GPU: none read
        assert rows[0]["nvml_note"] == "no GPU: NVML not read"


def test_a_repeat_that_raises_makes_an_error_row_and_the_others_go_on(trained, tmp_path, monkeypatch):
    from runner import tasks
    from variants import BenchSpec

    group = _variants()
    ids = [v.variant_id for v in group]
    timings = _record_timings(monkeypatch, tmp_path, fail_on=(ids[1], 2))
    spec, ckpt, data = trained
    bench = BenchSpec(warmup=1, iters=5, repeats=3, eval_batch_size=64, pair_rounds=2, slices=1)
    out = tasks.bench_job(list(group), [(group[0], group[1]), (group[0], group[2])], spec, ckpt, data, bench,
                          "s", {i: i for i in ids})
    assert [t[0] for t in timings] == ids + ids + [ids[0], ids[2]]  # v2 drops out of the third round
    rows, raw = out["bench"][ids[1]]
    assert len(rows) == 1 and rows[0]["status"] == "error" and raw == []
    assert "RuntimeError: boom in a repeat" in rows[0]["error"] and rows[0]["finished_at"]
    for vid in (ids[0], ids[2]):
        rows, _ = out["bench"][vid]
        assert [r["status"] for r in rows] == ["ok"] * 3
    assert [p["variant_id"] for p in out["pairs"]] == [ids[2]]  # no pair with the failed side


def test_the_recheck_times_its_repeats_round_robin_in_reverse(trained, tmp_path, monkeypatch):
    """bench.repeats repeats, round-robin in the reverse of the bench order; a variant that cannot be prepared
    (a CUDA graph on the CPU) is an error row and the others are timed; rows write with RECHECK_SCHEMA."""
    from runner import results, tasks
    from variants import BenchSpec, Variant

    timings = _record_timings(monkeypatch, tmp_path)
    _, ckpt, _ = trained
    a, b, c = _variants()
    graph = Variant("tiny", precision="fp32", cuda_graph=True)
    group = [a, graph, b, c]
    bench = BenchSpec(warmup=1, iters=7, repeats=3, eval_batch_size=64, slices=1)
    rows = tasks.recheck_job(group, ckpt, bench)
    order = [c.variant_id, b.variant_id, a.variant_id]
    assert [r["variant_id"] for r in rows] == [c.variant_id, b.variant_id, graph.variant_id, a.variant_id]
    assert [t[0] for t in timings] == order * 3 and all(t[1] and t[2] == 1 for t in timings)
    by_id = {r["variant_id"]: r for r in rows}
    assert by_id[graph.variant_id]["status"] == "error" and by_id[graph.variant_id]["error"]
    for vid in order:
        r = by_id[vid]
        samples = [s for v, _, _, got in timings if v == vid for s in got]
        p50s = [float(np.percentile(s.lat_ms, 50)) for s in samples]  # each repeat's row p50 (runner/bench.stats)
        assert r["status"] == "ok" and r["recheck_repeats"] == 3 and r["recheck_slices"] == 1
        # the median over repeats, as runner/results.summarize makes the in-sweep p50
        assert r["recheck_p50_ms"] == float(np.median(p50s)) == pd.Series(p50s).median()
        assert r["recheck_p95_ms"] == float(np.median([np.percentile(s.lat_ms, 95) for s in samples]))
        assert r["recheck_host_p50_ms"] == float(np.median([np.percentile(s.host_ms, 50) for s in samples]))
        assert r["recheck_cv_pct"] == pytest.approx(100 * np.std(p50s, ddof=1) / np.mean(p50s))
        assert r["started_at"] <= r["finished_at"]
    for r in rows:
        results.write_rows([r], tmp_path / "rechecks" / f"{r['variant_id']}.parquet", results.RECHECK_SCHEMA)
    df = results.read_folder(tmp_path / "rechecks", results.RECHECK_SCHEMA)
    assert sorted(df.loc[df["status"] == "ok", "recheck_repeats"]) == [3, 3, 3]


def test_sliced_repeats_run_slice_major_and_join_in_order(trained, tmp_path, monkeypatch):
    """Each repeat in 3 slices (7 calls: 3, 2, 2), spread over the task: for each slice, for each repeat,
    every variant. A repeat's row is over its slices' samples joined; its slice p50s are in the row."""
    import json

    from runner import round_robin

    timings, ids, bench, out = _bench_group(trained, monkeypatch, tmp_path, warmup=5, iters=7, repeats=2, slices=3)
    assert [t[0] for t in timings] == ids * (3 * 2) and all(t[1] and t[2] == 1 for t in timings)
    assert [len(t[3][0].lat_ms) for t in timings] == [3] * 6 + [2] * 12  # slice sizes, slice-major
    assert round_robin.slice_sizes(7, 3) == [3, 2, 2] and round_robin.slice_sizes(6, 3) == [2, 2, 2]
    for vid in ids:
        rows, raw = out["bench"][vid]
        mine = [got[0] for v, _, _, got in timings if v == vid]  # in time order: (s0 r0) (s0 r1) (s1 r0) ...
        for r, row in enumerate(rows):
            pieces = mine[r::2]
            joined = np.concatenate([p.lat_ms for p in pieces])
            assert row["lat_p50_ms"] == float(np.percentile(joined, 50)) and row["timing_slices"] == 3
            assert json.loads(row["slice_p50s_ms"]) == [float(np.median(p.lat_ms)) for p in pieces]
        assert len(raw) == 2 * bench.iters


def test_a_repeat_with_more_slices_than_calls_is_refused_when_the_file_loads(tmp_path):
    from variants import SpecError, load_sweep

    p = tmp_path / "s.yaml"
    p.write_text("bench: {iters: 4, slices: 5}\nmodels: {m: {arch: resnet18_cifar}}\ngrid: [{}]\n")
    with pytest.raises(SpecError, match="bench.slices.*more than bench.iters"):
        load_sweep(p)


def test_gpu_summary_pools_every_repeat_s_samples():
    def monitor(*samples, note=None):
        m = env.GpuMonitor("GPU-x")
        m.samples, m.note = list(samples), note
        return m

    def sample(clock, temp, pids="", excl=True):
        return {"sm_clock_mhz": clock, "temp_c": temp, "gpu_other_pids": pids, "gpu_exclusive": excl,
                "driver_version": "570"}

    first = monitor(sample(1980, 40), sample(1755, 52))
    second = monitor(sample(1800, 61, pids="12,7", excl=False), sample(1900, 45))
    s = env.gpu_summary([first, second])
    assert s == {"nvml_note": None, "nvml_samples": 4, "gpu_exclusive": False, "gpu_other_pids": "12,7",
                 "sm_clock_mhz_before": 1980, "sm_clock_mhz_after": 1900, "sm_clock_mhz_min": 1755,
                 "sm_clock_mhz_max": 1980, "temp_c_before": 40, "temp_c_after": 45, "temp_c_max": 61,
                 "driver_version": "570"}
    assert env.gpu_summary([first]) == first.summary()
    off = [monitor(note="no GPU: NVML not read") for _ in range(3)]
    assert env.gpu_summary(off) == {"nvml_note": "no GPU: NVML not read", "gpu_exclusive": None, "nvml_samples": 0}
