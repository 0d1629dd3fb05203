"""runner/timeline.py on hand-made rows and real Parquet folders, and the phases' submission order (CPU).

The real sweep's timeline is checked in tests/test_sweep_e2e.py (its rows come from a real Ray run).
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from runner import phases, timeline
from runner.results import PAIR_SCHEMA, RECHECK_SCHEMA, RESULT_SCHEMA, TRAINING_SCHEMA, read_folder, write_rows
from variants import load_sweep

ROOT = Path(__file__).resolve().parent.parent
T0 = pd.Timestamp("2026-05-01T10:00:00", tz="UTC")


def _at(s: float) -> str:
    return (T0 + pd.Timedelta(seconds=s)).isoformat(timespec="milliseconds")


def _row(name_col: str, name: str, start: float | None, end: float, gpu: str | None = "GPU-a",
         status: str = "ok", node: str = "node1", **kw) -> dict:
    return {name_col: name, "status": status, "started_at": None if start is None else _at(start),
            "finished_at": _at(end), "gpu_uuid": gpu, "ray_node_id": node, **kw}


def _frames(**kinds: list[dict]) -> dict[str, pd.DataFrame]:
    return {k.replace("_", "-"): pd.DataFrame(rows) for k, rows in kinds.items()}


def test_one_lane_bars_busy_and_idle():
    frames = _frames(train=[_row("model", "r18", 0, 10), _row("model", "r18", 0, 10)],  # epoch rows: one task
                     bench=[_row("variant_id", "v1", 12, 20), _row("variant_id", "v2", 20.5, 25.5)])
    tasks, untimed = timeline.tasks_from_frames(frames)
    tasks = timeline.assign_lanes(tasks)
    assert list(tasks["name"]) == ["r18", "v1", "v2"] and list(tasks["kind"]) == ["train", "bench", "bench"]
    assert set(tasks["lane"]) == {"node1/GPU 0"} and untimed == {"train": 0, "bench": 0}
    stats = timeline.lane_stats(tasks)
    assert stats["busy_s"].tolist() == pytest.approx([23.0]) and stats["idle_s"].tolist() == pytest.approx([2.5])


def test_a_bench_task_draws_its_timing_and_its_checks_as_two_bars():
    """Rows with the split (runner/tasks.py: all timings, then all checks) give a bench bar to `timed_at` and a
    check bar from `checks_started_at`; a skipped row has only its bench bar; an older row one bar to its end."""
    rows = pd.DataFrame([_row("variant_id", "v1", 0, 9, timed_at=_at(2), checks_started_at=_at(5)),
                         _row("variant_id", "v2", 2, 12, timed_at=_at(4), checks_started_at=_at(9)),
                         _row("variant_id", "skip", 4, 4.5, status="skipped"),
                         _row("variant_id", "old", 20, 25)])
    tasks, untimed = timeline.tasks_from_frames({"bench": rows, "check": rows})
    bars = {(k, n): ((s - T0).total_seconds(), (e - T0).total_seconds())
            for k, n, s, e in zip(tasks["kind"], tasks["name"], tasks["start"], tasks["end"])}
    assert bars == {("bench", "v1"): (0, 2), ("bench", "v2"): (2, 4), ("bench", "skip"): (4, 4.5),
                    ("check", "v1"): (5, 9), ("check", "v2"): (9, 12), ("bench", "old"): (20, 25)}
    assert untimed == {"bench": 0, "check": 0}


def test_a_process_s_round_robin_bars_are_laid_end_to_end():
    """A bench task prepares v1..v3 (0-3 s), then times their repeats round-robin to 12 s: each row spans the
    others'. Its bars are laid end to end (the seconds per kind count the 12 s once); a task at the same time
    on another node with the same pid, and one process's bars that never overlapped, are left as they are."""
    rows = [_row("variant_id", "v1", 0, 20, timed_at=_at(10), pid=7),
            _row("variant_id", "v2", 1, 20, timed_at=_at(11), pid=7),
            _row("variant_id", "v3", 2, 20, timed_at=_at(12), pid=7),
            _row("variant_id", "bad", 2.5, 3, status="error", pid=7),   # failed to prepare, inside v1's span
            _row("variant_id", "w1", 1, 4, gpu="GPU-b", node="node2", pid=7),
            _row("variant_id", "w2", 4, 6, gpu="GPU-b", node="node2", pid=7)]
    tasks, _ = timeline.tasks_from_frames({"bench": pd.DataFrame(rows)})
    bars = {n: ((s - T0).total_seconds(), (e - T0).total_seconds())
            for n, s, e in zip(tasks["name"], tasks["start"], tasks["end"])}
    assert bars == {"bad": (0, 3), "v1": (3, 10), "v2": (10, 11), "v3": (11, 12), "w1": (1, 4), "w2": (4, 6)}
    assert timeline.seconds_by_kind(tasks) == {"bench": pytest.approx(12 + 5)}


def test_rows_without_start_are_counted_not_drawn():
    old = pd.DataFrame([{"variant_id": "old", "status": "ok", "finished_at": _at(3), "gpu_uuid": "GPU-a"}])
    frames = {"bench": old, "pair": pd.DataFrame([_row("variant_id", "p", None, 5), _row("variant_id", "q", 1, 2)])}
    tasks, untimed = timeline.tasks_from_frames(frames)
    assert list(tasks["name"]) == ["q"] and untimed == {"bench": 1, "pair": 1}
    assert timeline.tasks_from_frames({})[0].empty


def test_error_rows_are_drawn_hatched(tmp_path):
    frames = _frames(bench=[_row("variant_id", "ok1", 0, 4), _row("variant_id", "bad", 4, 5, status="error"),
                            _row("variant_id", "skip", 5, 5, status="skipped")])
    tasks = timeline.assign_lanes(timeline.tasks_from_frames(frames)[0])
    fig = timeline.draw(tasks, timeline.lane_stats(tasks), tmp_path / "t.png")
    hatched = [p for p in fig.axes[0].patches if p.get_hatch() == "//"]
    assert len(fig.axes[0].patches) == 3 and len(hatched) == 2  # the skipped one too: 0 s drawn as a sliver
    assert (tmp_path / "t.png").stat().st_size > 0


def test_gpu_lanes_per_node_and_cpu_tasks_packed_into_slots():
    frames = _frames(bench=[_row("variant_id", "a", 0, 5, gpu="GPU-2", node="n1xxxxxx", hostname="h"),
                            _row("variant_id", "b", 0, 5, gpu="GPU-1", node="n1xxxxxx", hostname="h"),
                            _row("variant_id", "c", 0, 5, gpu="GPU-9", node="n2yyyyyy", hostname="h")],
                     train=[_row("model", "m1", 0, 4, gpu=None, node="n3zzzzzz"),
                            _row("model", "m2", 1, 3, gpu=None, node="n3zzzzzz"),
                            _row("model", "m3", 4, 6, gpu=None, node="n3zzzzzz")])
    tasks = timeline.assign_lanes(timeline.tasks_from_frames(frames)[0]).set_index("name")
    # Two node ids on one hostname (a local multi-node cluster): the label tells them apart.
    assert tasks.loc["b", "lane"] == "h:n1xxxx/GPU 0" and tasks.loc["a", "lane"] == "h:n1xxxx/GPU 1"
    assert tasks.loc["c", "lane"] == "h:n2yyyy/GPU 0"
    # m2 overlaps m1 (one CPU each): its own slot; m3 starts when m1 ends and reuses slot 0.
    assert tasks.loc[["m1", "m2", "m3"], "lane"].tolist() == ["n3zzzzzz/CPU slot 0", "n3zzzzzz/CPU slot 1",
                                                               "n3zzzzzz/CPU slot 0"]


def test_cpu_only_sweep_one_lane_per_node_or_pid(tmp_path):
    frames = _frames(bench=[_row("variant_id", "a", 0, 2, gpu=None, hostname="vm"),
                            _row("variant_id", "b", 2, 3, gpu=None, hostname="vm"),
                            _row("variant_id", "c", 0, 1, gpu=None, node=None, pid=42)])
    tasks = timeline.assign_lanes(timeline.tasks_from_frames(frames)[0]).set_index("name")
    assert tasks["lane"].to_dict() == {"a": "vm/CPU", "b": "vm/CPU", "c": "pid 42/CPU"}
    timeline.draw(tasks.reset_index(), timeline.lane_stats(tasks.reset_index()), tmp_path / "t.png")


def _folder(tmp_path: Path) -> Path:
    write_rows([{"sweep": "s", "model": "r18", "status": "ok", "epoch": e, "gpu_uuid": "GPU-a", "pid": 1,
                 "started_at": _at(0), "finished_at": _at(30)} for e in (1, 2)],
               tmp_path / "training.parquet", TRAINING_SCHEMA)
    write_rows([{"sweep": "s", "model": "kd", "status": "ok", "epoch": 1, "gpu_uuid": "GPU-b",
                 "started_at": _at(-3600), "finished_at": _at(-3500)}],  # an earlier invocation's, reused
               tmp_path / "training2.parquet", TRAINING_SCHEMA)
    pd.concat([pd.read_parquet(tmp_path / n) for n in ("training.parquet", "training2.parquet")]).to_parquet(
        tmp_path / "training.parquet")
    write_rows([{"sweep": "s", "variant_id": v, "status": "ok", "repeat": r, "gpu_uuid": g, "hostname": "h",
                 "started_at": _at(s), "finished_at": _at(s + 8)}
                for v, g, s in (("v1", "GPU-a", 31), ("v2", "GPU-b", 31)) for r in range(3)],
               tmp_path / "results.parquet", RESULT_SCHEMA)
    write_rows([{"variant_id": "v2", "parent_id": "v1", "status": "error", "gpu_uuid": "GPU-a",
                 "started_at": _at(40), "finished_at": _at(41)}], tmp_path / "pairs.parquet", PAIR_SCHEMA)
    (tmp_path / "sweep.json").write_text(json.dumps({"started_at": _at(-20), "wall_s": 70.0}))
    return tmp_path  # no rechecks.parquet: a missing file is no bars


def test_section_from_a_folder(tmp_path):
    run = _folder(tmp_path)
    lines = timeline.section(run, tmp_path / "out")
    text = "\n".join(lines)
    assert lines[0] == "## Where the time went" and (tmp_path / "out" / "timeline.png").exists()
    assert "4 tasks ran from the first start to the last end in 41.0 s" in text and "70.0 s" in text
    assert "| train | 1 | 30.0 |" in text and "| bench | 2 | 16.0 |" in text and "| pair | 1 | 1.0 |" in text
    # GPU-a's node is named by its bench rows (training rows carry no hostname); GPU-b has only benches here.
    assert "| h/GPU 0 | 3 | 39.0 | 2.0 | 95 |" in text and "| h/GPU 1 | 1 | 8.0 | 33.0 | 20 |" in text
    assert "1 task(s) of earlier invocations" in text  # kd, from an hour before this invocation


def test_section_on_rows_from_before_started_at(tmp_path):
    published = ROOT / "reports" / "h200-latency-first"  # rows written before the column existed
    lines = timeline.section(published, tmp_path)
    assert lines[:2] == ["## Where the time went", ""] and "No timeline" in lines[2]
    assert not (tmp_path / "timeline.png").exists()
    assert timeline.section(tmp_path / "empty", tmp_path) == []


def test_part_files_without_started_at_still_read(tmp_path):
    worker = ["worker_started_at", "worker_ready_at"]  # appended last: older files keep their layout
    for schema in (TRAINING_SCHEMA, PAIR_SCHEMA):
        assert schema.names[-3:] == ["started_at", *worker]
    assert RECHECK_SCHEMA.names[-6:] == ["started_at", "recheck_repeats", "recheck_cv_pct", *worker,
                                         "recheck_slices"]
    newer = ["started_at", "host_wait_s", "timed_at", "checks_started_at", "timing_order", *worker,
             "timing_slices", "slice_p50s_ms"]
    assert RESULT_SCHEMA.names[-9:] == newer
    older = pa.schema([f for f in RESULT_SCHEMA if f.name not in newer])
    write_rows([{"sweep": "s", "variant_id": "v", "status": "ok"}], tmp_path / "r" / "v.parquet", older)
    df = read_folder(tmp_path / "r", RESULT_SCHEMA)
    assert list(df.columns) == RESULT_SCHEMA.names and len(df) == 1
    assert df["started_at"].isna().all() and df["host_wait_s"].isna().all() and df["timing_order"].isna().all()


def test_the_section_reports_what_host_exclusivity_cost(tmp_path):
    rows = [{"sweep": "s", "variant_id": v, "status": "ok", "repeat": r, "host_wait_s": w,
             "started_at": "2026-01-01T00:00:00.000+00:00", "finished_at": "2026-01-01T00:00:05.000+00:00"}
            for v, w in (("a", 1.5), ("b", 4.0)) for r in range(3)]
    write_rows(rows, tmp_path / "results.parquet", RESULT_SCHEMA)
    text = "\n".join(timeline.section(tmp_path, tmp_path))
    assert "Benchmarks waited 5.5 s in all (longest 4.0 s, 2 variants)" in text


# ---- submission order -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def default_spec():
    return load_sweep(ROOT / "variants" / "default.yaml")


def test_trainings_longest_chain_first(default_spec):
    order = [m.key for m in phases.train_order(list(default_spec.models))]
    cost = {m.key: phases.train_cost(m) for m in default_spec.models}
    # resnet18 alone trains shorter than shufflenet, but with its student it is the longest chain.
    assert cost["resnet18"] < cost["shufflenet"] < cost["resnet18"] + cost["mobilenet_kd"]
    assert order[0] == "resnet18" and order[-1] == "airbench"
    chain = {k: cost[k] + (cost["mobilenet_kd"] if k == "resnet18" else 0.0) for k in order}
    assert [chain[k] for k in order] == sorted(chain.values(), reverse=True)


def test_a_student_starts_only_after_its_teacher_and_before_shorter_ready_ones(default_spec):
    """Slots handed out one at a time (2 GPUs): the student is never submitted before its teacher lands,
    and once it is ready it goes before any training of lower priority still waiting."""
    queue = phases.train_order(list(default_spec.models))
    by_key = {m.key: m for m in queue}
    assert phases.next_training(queue, set()).key == "resnet18"
    waiting = [m for m in queue if m.key not in ("resnet18", "shufflenet")]  # both GPUs busy with these
    assert phases.next_training(waiting, {"shufflenet"}).key != "mobilenet_kd"  # teacher still training
    first_after_teacher = phases.next_training(waiting, {"resnet18"})
    assert first_after_teacher.key in ("mobilenet", "mobilenet_kd")  # the two longest ready chains
    rest = [m for m in waiting if m is not first_after_teacher]
    assert phases.next_training(rest, {"resnet18"}).key in ("mobilenet", "mobilenet_kd")
    assert by_key["airbench"] is phases.next_training([by_key["airbench"]], set())


def test_benches_longest_expected_first_within_each_sub_phase(default_spec):
    spec = default_spec
    jobs = [(phases.compiles(v), phases.bench_cost(spec, v), v, None) for v in spec.variants]
    order = [j[2] for j in phases.ordered(jobs)]
    eager = [v for v in order if not v.cuda_graph and v.compile == "none"]
    # Eager variants of the models with the slowest calls lead; graphed airbench ones come last.
    assert {spec.model(v.model).arch for v in order[:3]} <= {"mobilenet_v3_small_cifar", "shufflenet_v2_x1_0_cifar"}
    assert order.index(eager[-1]) < min(order.index(v) for v in order if v.cuda_graph and v.model == "airbench")
    # Equal costs keep the YAML's order (a stable sort), so the submission order is reproducible.
    same = [v for v in order if phases.bench_cost(spec, v) == phases.bench_cost(spec, order[0])]
    assert same == [v for v in spec.variants if v in same]


def test_unknown_arch_gets_the_default_cost():
    assert phases._arch_cost("my_new_net") == phases.DEFAULT_COST
    assert phases._arch_cost("shufflenet_v2_x0_5_cifar") == phases.ARCH_COST["shufflenet_v2"]


def test_the_longest_compile_goes_first_among_compiling_groups(default_spec):
    """On 2x H200 the MobileNetV3 inductor group (~55 s of compiling) started last of three and ran alone."""
    spec = default_spec
    groups = phases.groups([v for v in spec.variants if phases.compiles(v)])
    costs = {phases.group_name(k): phases.bench_cost(spec, *g) + phases.compile_cost(spec, *g)
             for k, g in groups.items()}
    assert max(costs, key=costs.get) == "mobilenet-fp16-compiling"
    assert phases.compile_cost(spec, *[v for v in spec.variants if not phases.compiles(v)]) == 0
