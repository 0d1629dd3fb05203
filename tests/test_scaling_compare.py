"""runner/scaling.py: one sweep on different numbers of GPUs compared. Wall time summed over invocations,
tasks placed on one clock with resumed invocations end to end, a lane per GPU, speed-up and efficiency
against the run with the fewest GPUs, unfair comparisons named; on real Parquet files. A published run of older
code is refused by name."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from runner import scaling
from runner.cli import main

ROOT = Path(__file__).resolve().parents[1]
T0 = pd.Timestamp("2026-11-30T10:00:00Z")
CONFIG = {"name": "default", "bench": {"iters": 500}}


def _at(seconds: float) -> str:
    return (T0 + pd.Timedelta(seconds=seconds)).isoformat(timespec="milliseconds")


def _write_run(path: Path, gpus: int, invocations: list[tuple[float, float]], train: list[tuple],
               bench: list[tuple], config: dict = CONFIG) -> Path:
    """A sweep folder: sweep.json with its invocations ((start s, wall s), oldest first) and a step log of
    trainings (model, gpu, start s, end s) and timings (variant, gpu, start s, end s)."""
    from runner.engine.steps import StepLog

    path.mkdir(parents=True)
    (start, wall), *older = invocations[::-1]
    sweep = {"name": "default", "config": config, "git_commit": "abc", "data_source": "synthetic",
             "cluster": {"gpus": gpus, "nodes": 1, "gpu_kinds": ["H200"]}, "started_at": _at(start)[:19] + "+00:00",
             "wall_s": wall, "previous_runs": [{"started_at": _at(s)[:19] + "+00:00", "wall_s": w} for s, w in older[::-1]]}
    (path / "sweep.json").write_text(json.dumps(sweep))
    log = StepLog(path)
    for kind, rows in (("train", train), ("time", bench)):
        for name, gpu, s, e in rows:
            log.add({"kind": kind, "name": name, "start": _at(s), "end": _at(e), "gpu_uuid": gpu, "hostname": "vm",
                     "node": "n1", "pid": 1}, submitted=_at(s), landed=_at(e))
    return path


@pytest.fixture
def two_runs(tmp_path):
    # one GPU, cut after 100 s and resumed 1000 s later for 50 s more
    one = _write_run(tmp_path / "one-gpu", 1, [(0, 100), (1000, 50)],
                     train=[("a", "GPU-a", 5, 60)], bench=[("a-fp16", "GPU-a", 1010, 1020)])
    # two GPUs, one invocation of 80 s
    two = _write_run(tmp_path / "two-gpus", 2, [(0, 80)],
                     train=[("a", "GPU-a", 2, 50), ("b", "GPU-b", 2, 70)],
                     bench=[("a-fp16", "GPU-b", 71, 75)])
    return one, two


def test_wall_time_sums_invocations_and_tasks_sit_on_one_clock(two_runs):
    one = scaling.load_run(two_runs[0])
    assert one.wall_s == 150 and len(one.invocations) == 2
    bench = one.tasks[one.tasks["kind"] == "time"].iloc[0]
    # started 10 s into the second invocation, which begins where the first one's 100 s end
    assert bench["x0"] == pytest.approx(110) and bench["x1"] == pytest.approx(120)
    train = one.tasks[one.tasks["kind"] == "train"].iloc[0]
    assert train["x0"] == pytest.approx(5) and train["x1"] == pytest.approx(60)


def test_one_lane_per_gpu_named_by_its_host(two_runs):
    two = scaling.load_run(two_runs[1])
    assert sorted(two.tasks["lane"].unique()) == ["vm GPU 0", "vm GPU 1"]


def test_speed_up_and_efficiency_against_the_fewest_gpus(two_runs):
    lines = scaling.section([scaling.load_run(p) for p in two_runs])
    row = next(line for line in lines if line.startswith("| `two-gpus`"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[5:9] == ["80", "1.88x", "0.53", "94%"]  # 150 / 80; 80 / 150; 1.875 / 2
    assert any("share their sweep settings" in line for line in lines)
    busy = next(line for line in lines if line.startswith("| `one-gpu`") and "%" in line and "x |" not in line)
    assert busy.endswith("| 43% |")  # 55 s training + 10 s timing of 150 s wall


def test_runs_of_different_sweeps_are_called_unfair(tmp_path, two_runs):
    other = _write_run(tmp_path / "other", 2, [(0, 60)], train=[("a", "GPU-a", 1, 30)], bench=[],
                       config={**CONFIG, "bench": {"iters": 100}})
    text = "\n".join(scaling.section([scaling.load_run(two_runs[0]), scaling.load_run(other)]))
    assert "Not a like-for-like comparison" in text and "sweep settings" in text


def test_the_verb_writes_the_table_and_the_timelines(two_runs, tmp_path):
    out = tmp_path / "out"
    assert main(["scaling", str(two_runs[0]), str(two_runs[1]), "--out", str(out)]) == 0
    assert "1.88x" in (out / "scaling.md").read_text()
    assert (out / "scaling_timeline.png").stat().st_size > 10_000


def test_a_folder_that_is_not_a_sweep_is_named(tmp_path, two_runs, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["scaling", str(two_runs[0]), str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "empty: no sweep.json" in capsys.readouterr().err


def test_a_published_run_of_older_code_is_refused_in_one_line(tmp_path, two_runs, capsys):
    """reports/h200-1gpu-engine was written by older code (its steps carry no schema version): it is read with
    the code of its commit, and this code says so, naming the file, instead of drawing what it half-reads."""
    published = ROOT / "reports" / "h200-1gpu-engine"
    assert main(["scaling", str(two_runs[0]), str(published), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"error: {published / 'steps'}/")
    assert "written with no schema version" in err and "reads only version" in err
    assert not (tmp_path / "o" / "scaling.md").exists()
