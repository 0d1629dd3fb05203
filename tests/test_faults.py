"""Malformed input and injected faults, through the real command line (issue 12).

Each case asserts the exit code, a message that names the problem (file, key path, pid, address), and that
nothing is written where it must not be: a listing of the test's whole tmp folder before and after, where
only the run folder (and, for data, the cache) may change. The Ray cases run real local clusters on CPU:
a sweep told to `--stop-after` less time than Ray takes to start, one stopped by SIGTERM, one stopped by two
Ctrl-C, then one that finds a damaged result file, a garbage checkpoint and a stale lock, recovers, and ends with
exactly one result per planned variant (four invocations of one command on one run folder).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from runner import guard
from runner.__main__ import main
from runner.engine.control import STOPPED_EXIT
from runner.data import DataError, load
from runner.results import RESULT_SCHEMA, TRAINING_SCHEMA, write_rows
from variants import load_sweep

ROOT = Path(__file__).resolve().parent.parent

GOOD_MODELS = """
models:
  m: {arch: airbench_cifar, arch_args: {width_mult: 0.25}, recipe: {epochs: 1, batch_size: 64, train_subset: 256}}
grid: [{}]
"""


def listing(root: Path) -> dict[str, int]:
    """Every file and folder under root with its size (folders: -1), to compare before / after."""
    return {str(p.relative_to(root)): (p.stat().st_size if p.is_file() else -1) for p in sorted(root.rglob("*"))}


def changed(before: dict, after: dict) -> set[str]:
    return {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    rc = main(argv)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


# ---- 1-2. sweep files: names that become paths, meaning of every field ---------------------------------

BAD_SWEEPS = {
    # id: (yaml text, key path the message must name, words it must hold)
    "sweep-dotdot": ("sweep: ../evil\n" + GOOD_MODELS, "sweep", "not a plain name"),
    "sweep-absolute": ("sweep: /tmp/evil\n" + GOOD_MODELS, "sweep", "not a plain name"),
    "sweep-subfolder": ("sweep: a/b\n" + GOOD_MODELS, "sweep", "not a plain name"),
    "sweep-hidden": ("sweep: .hidden\n" + GOOD_MODELS, "sweep", "not a plain name"),
    "sweep-int": ("sweep: 12\n" + GOOD_MODELS, "sweep", "a string"),
    "model-slash": ("models:\n  a/b: {arch: airbench_cifar}\n", "models.a/b", "not a plain name"),
    "model-dotdot": ("models:\n  x..y: {arch: airbench_cifar}\n", "models.x..y", "not a plain name"),
    "model-parent": ("models:\n  '..': {arch: airbench_cifar}\n", "models...", "not a plain name"),
    "model-int-key": ("models:\n  5: {arch: airbench_cifar}\n", "models.5", "a string"),
    "model-space": ("models:\n  my model: {arch: airbench_cifar}\n", "models.my model", "not a plain name"),
    "model-too-long": (f"models:\n  {'m' * 150}: {{arch: airbench_cifar}}\n", "models.mmm", "at most 100"),
    "models-list": ("models: [resnet18, mobilenet]\n", "models", "expected a mapping, got list"),
    "recipe-list": ("models:\n  m: {arch: airbench_cifar, recipe: [1, 2]}\n", "models.m.recipe",
                    "expected a mapping, got list"),
    "recipe-batch-over-subset": ("models:\n  m: {arch: airbench_cifar, recipe: {batch_size: 512, "
                                 "train_subset: 100}}\n", "models.m.recipe.batch_size", "larger than train_subset"),
    "bench-warmup-negative": ("bench: {warmup: -1}\n" + GOOD_MODELS, "bench.warmup", "out of range"),
    "bench-iters-zero": ("bench: {iters: 0}\n" + GOOD_MODELS, "bench.iters", "out of range"),
    "bench-iters-int32": ("bench: {iters: 4294967296}\n" + GOOD_MODELS, "bench.iters", "out of range"),
    "bench-repeats-zero": ("bench: {repeats: 0}\n" + GOOD_MODELS, "bench.repeats", "out of range"),
    "bench-eval-batch-zero": ("bench: {eval_batch_size: 0}\n" + GOOD_MODELS, "bench.eval_batch_size",
                              "out of range"),
    "bench-cv-zero": ("bench: {cv_flag_pct: 0}\n" + GOOD_MODELS, "bench.cv_flag_pct", "out of range"),
    "bench-cv-nan": ("bench: {cv_flag_pct: .nan}\n" + GOOD_MODELS, "bench.cv_flag_pct", "out of range"),
    "bench-iters-text": ("bench: {iters: many}\n" + GOOD_MODELS, "bench.iters", "expected int"),
    "bench-list": ("bench: [1, 2]\n" + GOOD_MODELS, "bench", "expected a mapping, got list"),
    "seed-bool": ("seed: true\n" + GOOD_MODELS, "seed", "expected an integer"),
    "seed-negative": ("seed: -1\n" + GOOD_MODELS, "seed", "out of range"),
    "seed-over-int64": ("seed: 1180591620717411303424\n" + GOOD_MODELS, "seed", "out of range"),
    "exclude-mapping": ("exclude: {precision: fp16}\n" + GOOD_MODELS, "exclude", "expected a list"),
    "named-list": ("named: [B1]\n" + GOOD_MODELS, "named", "expected a mapping, got list"),
    "duplicate-model": ("models:\n  m: {arch: airbench_cifar}\n  m: {arch: resnet18_cifar}\n", "appears twice",
                        "'m'"),
    "top-level-list": ("- models\n- grid\n", "top level", "expected a mapping"),
    "data-source-empty": ("data: {source: ''}\n" + GOOD_MODELS, "data.source", "empty"),
    "data-root-int": ("data: {root: 5}\n" + GOOD_MODELS, "data.root", "a path"),
    "ids-differ-by-case": ("models:\n  A: {arch: airbench_cifar}\n  a: {arch: airbench_cifar}\ngrid: [{}]\n", "models",
                           "differ only by case"),
}


@pytest.mark.parametrize("case", sorted(BAD_SWEEPS))
def test_malformed_sweep_file_fails_before_anything_is_written(case, tmp_path, capsys):
    text, key_path, words = BAD_SWEEPS[case]
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    before = listing(tmp_path)
    rc, out, err = run_cli(["sweep", "--config", str(cfg), "--data", "synthetic", "--out", str(tmp_path / "runs")],
                           capsys)
    assert rc == 2
    assert str(cfg) in err and key_path in err and words in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1  # one line, never a traceback
    assert listing(tmp_path) == before  # no runs/ folder, nothing outside it either


def _config_paths(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    binary = tmp_path / "weights.yaml"
    binary.write_bytes(bytes(range(256)) * 4)
    folder = tmp_path / "folder.yaml"
    folder.mkdir()
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    broken = tmp_path / "broken.yaml"
    broken.write_text("models: {m: {arch: airbench_cifar\n")
    return {"binary": (binary, "not a text file"), "directory": (folder, "is a directory"),
            "missing": (tmp_path / "nope.yaml", "no such sweep file"), "empty": (empty, "missing required key"),
            "invalid-yaml": (broken, "not valid YAML")}


@pytest.mark.parametrize("case", ["binary", "directory", "missing", "empty", "invalid-yaml"])
def test_unusable_config_path_is_one_line_exit_2(case, tmp_path, capsys):
    path, words = _config_paths(tmp_path)[case]
    before = listing(tmp_path)
    for cmd in (["sweep", "--data", "synthetic", "--out", str(tmp_path / "runs")], ["list"]):
        rc, out, err = run_cli([cmd[0], "--config", str(path), *cmd[1:]], capsys)
        assert rc == 2 and str(path) in err and words in err, err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert listing(tmp_path) == before


def test_paths_stay_inside_the_run_folder(tmp_path):
    """The belt behind the load-time checks: a name that would leave its folder is refused."""
    with pytest.raises(guard.GuardError, match="outside the run folder"):
        guard.inside(tmp_path / "runs" / "s", tmp_path / "runs" / "s" / ".." / "t" / "x.parquet")
    with pytest.raises(guard.GuardError, match="not a plain name"):
        guard.run_folder(tmp_path / "runs", "../escape")
    (tmp_path / "runs" / "s").mkdir(parents=True)
    (tmp_path / "runs" / "s" / "results").symlink_to(tmp_path)  # a link out of the run folder
    spec = load_sweep(_write(tmp_path / "ok.yaml", "sweep: s\n" + GOOD_MODELS))
    with pytest.raises(guard.GuardError, match="outside the run folder"):
        guard.check_paths(spec, tmp_path / "runs" / "s")
    assert guard.run_folder(tmp_path / "runs", "s") == tmp_path / "runs" / "s"


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ---- 5. driver guards without Ray: dead address, lock held ---------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("how,address,words", [
    ("flag", "127.0.0.1:{port}", "no Ray cluster answers at 127.0.0.1:{port}"),
    ("flag", "ray://127.0.0.1:{port}", "no Ray cluster answers at 127.0.0.1:{port}"),
    # RAY_ADDRESS, which ray.init reads too, is checked when the sweep starts (the flag at parse time: test_cli)
    ("env", "not-an-address", "RAY_ADDRESS 'not-an-address': expected host:port"),
    ("env", "127.0.0.1:99999", "RAY_ADDRESS '127.0.0.1:99999': expected host:port (port 1-65535)"),   # was an OverflowError traceback (issue 27)
])
def test_dead_address_fails_in_seconds(how, address, words, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    port = _free_port()
    address = address.format(port=port)
    if how == "env":
        monkeypatch.setenv("RAY_ADDRESS", address)
    cfg = _write(tmp_path / "ok.yaml", "sweep: s\n" + GOOD_MODELS)
    before = listing(tmp_path)
    t0 = time.perf_counter()
    rc, _, err = run_cli(["sweep", "--config", str(cfg), "--data", "synthetic", "--out", str(tmp_path / "runs"),
                          *(["--address", address] if how == "flag" else [])], capsys)
    assert rc == 2 and words.format(port=port) in err, err
    assert time.perf_counter() - t0 < 15  # ray.init would retry for minutes
    import ray
    assert not ray.is_initialized()
    assert listing(tmp_path) == before


@pytest.mark.parametrize("holder", ["live-pid", "other-host"])
def test_second_sweep_on_a_locked_folder_is_refused(holder, tmp_path, capsys):
    cfg = _write(tmp_path / "ok.yaml", "sweep: s\n" + GOOD_MODELS)
    run_dir = tmp_path / "runs" / "s"
    run_dir.mkdir(parents=True)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        host = socket.gethostname() if holder == "live-pid" else "gpu-node-7"
        lock = {"pid": sleeper.pid, "host": host, "started_at": "2026-01-01T00:00:00+00:00"}
        (run_dir / guard.LOCK_NAME).write_text(json.dumps(lock))
        before = listing(tmp_path)
        rc, _, err = run_cli(["sweep", "--config", str(cfg), "--data", "synthetic", "--out", str(tmp_path / "runs")],
                             capsys)
        assert rc == 2
        assert f"pid {sleeper.pid} on host {host}" in err and "another sweep is running" in err, err
        assert listing(tmp_path) == before  # the other sweep's lock untouched, nothing written
    finally:
        sleeper.kill()
        sleeper.wait()


def test_damaged_lock_is_taken_over_and_released(tmp_path):
    (tmp_path / guard.LOCK_NAME).write_text("\x00garbage")
    lines: list[str] = []
    with guard.sweep_lock(tmp_path, log=lines.append) as me:
        assert json.loads((tmp_path / guard.LOCK_NAME).read_text())["pid"] == me["pid"] == os.getpid()
    assert any("unreadable" in line for line in lines)
    assert not (tmp_path / guard.LOCK_NAME).exists() and list(tmp_path.iterdir()) == []


# ---- 3. damaged result files: report builds from the rest -----------------------------------------------

def _ok_rows(vid: str) -> list[dict]:
    return [dict(sweep="s", variant_id=vid, model="m", arch="airbench_cifar", precision="fp32",
                 memory_format="contiguous", compile="none", cuda_graph=False, bn_fold=False, status="ok",
                 repeat=r, top1_pct=90.0, lat_mean_ms=1.0, lat_p50_ms=1.0, lat_p95_ms=1.1, lat_p99_ms=1.2,
                 lat_std_ms=0.01, lat_min_ms=0.9, host_p50_ms=1.0, timer="host", size_mb=1.0, device="cpu",
                 timing_order="round-robin", timing_slices=1, slice_p50s_ms="[1.0]")
            for r in range(3)]


def _sweep_folder(root: Path) -> Path:
    run_dir = root / "runs" / "s"
    for vid in ("m-fp32-a", "m-fp32-b", "m-fp32-c"):
        write_rows(_ok_rows(vid), run_dir / "results" / f"{vid}.parquet", RESULT_SCHEMA)
    write_rows([dict(sweep="s", model="m", status="ok", epoch=1, epochs=1, top1_pct=90.0)],
               run_dir / "training" / "m.parquet", TRAINING_SCHEMA)
    return run_dir


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("damage", ["truncated-result", "garbage-result", "foreign-parquet", "empty-result",
                                    "truncated-training"])
def test_report_builds_from_the_rest_and_names_the_damaged_file(damage, tmp_path, capsys):
    run_dir = _sweep_folder(tmp_path)
    bad = run_dir / ("training/m.parquet" if damage == "truncated-training" else "results/m-fp32-b.parquet")
    if damage.startswith("truncated"):
        _truncate(bad)
    elif damage == "garbage-result":
        bad.write_bytes(b"PAR1 this is not parquet")
    elif damage == "empty-result":
        bad.write_bytes(b"")
    else:  # a valid Parquet file of another table: it would read as all-null rows
        pq.write_table(pa.table({"something": [1, 2]}), bad)
    before = listing(tmp_path)
    rc, out, err = run_cli(["report", str(run_dir)], capsys)
    assert rc == 0 and "report.md" in out
    assert str(bad) in err and "skipped" in err and "Traceback" not in err
    merged = pd.read_parquet(run_dir / "results.parquet")
    expect = {"m-fp32-a", "m-fp32-b", "m-fp32-c"} if damage == "truncated-training" else {"m-fp32-a", "m-fp32-c"}
    assert set(merged["variant_id"]) == expect and len(merged) == 3 * len(expect)  # no loss, no duplicate
    assert bad.exists()  # report never deletes the user's files
    assert all(k.startswith("runs/s/") for k in changed(before, listing(tmp_path)))


@pytest.mark.parametrize("damage", ["results.parquet", "sweep.json"])
def test_report_on_a_damaged_merged_file_is_exit_2(damage, tmp_path, capsys):
    run_dir = tmp_path / "runs" / "pub"
    run_dir.mkdir(parents=True)
    write_rows(_ok_rows("m-fp32-a"), run_dir / "results.parquet", RESULT_SCHEMA)
    if damage == "results.parquet":
        _truncate(run_dir / damage)
    else:
        (run_dir / damage).write_text('{"name": "pub", ')
    before = listing(tmp_path)
    rc, _, err = run_cli(["report", str(run_dir)], capsys)
    assert rc == 2 and "cannot build the report" in err and "Traceback" not in err, err
    assert listing(tmp_path) == before


# ---- 4. data: content-keyed cache, damaged archives and images -----------------------------------------

def _png(path: Path, colour: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), colour).save(path)


def _tree(root: Path) -> Path:
    from runner.data import CLASSES
    for split in ("train", "test"):
        for i, c in enumerate(CLASSES):
            _png(root / split / c / "001.png", (i * 20, 100, 200 - i * 20))
    return root


def _pack(tree: Path, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        with tarfile.open(dest / f"{split}.tar.xz", "w:xz") as t:
            t.add(tree / split, arcname=split)
    return dest


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "cache"
    monkeypatch.setenv("CIFAR_RUNNER_CACHE", str(d))
    return d


@pytest.mark.parametrize("damage", ["truncated-archive", "garbage-archive", "missing-test-archive",
                                    "text-as-png", "truncated-png"])
def test_damaged_data_is_named_without_traceback(damage, tmp_path, cache, capsys):
    tree = _tree(tmp_path / "tree")
    if damage.endswith("archive"):
        source = _pack(tree, tmp_path / "packed")
        bad = source / ("test.tar.xz" if damage == "missing-test-archive" else "train.tar.xz")
        if damage == "truncated-archive":
            _truncate(bad)
        elif damage == "garbage-archive":
            bad.write_bytes(b"\xfd7zXZ\x00" + os.urandom(200))
        else:
            bad.unlink()
    else:
        source = tree
        bad = tree / "train" / "cat" / "002.png"
        if damage == "text-as-png":
            bad.write_text("this is not an image")
        else:
            _png(bad, (1, 2, 3))
            _truncate(bad)
    cfg = _write(tmp_path / "ok.yaml", "sweep: s\n" + GOOD_MODELS)
    rc, _, err = run_cli(["sweep", "--config", str(cfg), "--data", str(source), "--out", str(tmp_path / "runs")],
                         capsys)
    assert rc == 2 and str(bad) in err and "Traceback" not in err, err
    assert not (tmp_path / "runs").exists()
    # no half-unpacked tree left in the cache for a later run to take as whole
    assert not list(cache.glob("unpacked-*")) and not list(cache.glob(".unpacked-*"))


def test_cache_follows_content_not_names(tmp_path, cache):
    tree = _tree(tmp_path / "tree")
    first = load(str(tree))
    img = tree / "train" / "cat" / "001.png"
    size = img.stat().st_size
    _png(img, (0, 0, 0))  # edited in place, padded back to the same size
    data = img.read_bytes()
    assert len(data) <= size
    img.write_bytes(data + b"\x00" * (size - len(data)))
    second = load(str(tree))
    assert img.stat().st_size == size and second.source != first.source  # decoded again: new checksum
    # a damaged decoded-cache file is only a cache: decoded again, no crash
    for npz in cache.glob("decoded-*.npz"):
        npz.write_bytes(b"garbage")
    assert load(str(tree)).source == second.source


def test_replaced_archive_is_unpacked_again(tmp_path, cache):
    packed = _pack(_tree(tmp_path / "a"), tmp_path / "packed")
    first = load(str(packed))
    tree_b = _tree(tmp_path / "b")
    _png(tree_b / "test" / "dog" / "001.png", (9, 9, 9))
    _pack(tree_b, packed)  # same names, new content
    second = load(str(packed))
    assert second.source != first.source
    assert len(list(cache.glob("unpacked-*"))) == 2 and not list(cache.glob(".unpacked-*"))


def test_task_error_cause_of_plain_exceptions():
    assert guard.task_error_cause(ValueError("bad value")) == "ValueError: bad value"
    assert guard.task_error_cause(KeyError("k")) == "KeyError: 'k'"
    with pytest.raises(DataError):
        load(str(Path("/nonexistent/data")))


# ---- 3 + 5. real local Ray clusters: signals, damaged files, stale lock, task errors --------------------

FAULT_SWEEP = """
sweep: fault
bench: {warmup: 2, iters: 10, repeats: 3, eval_batch_size: 64, processes: 1, recheck: -1}  # no twins, no re-check
# phase: test_sweep_e2e has them, and each is one more process to start
train: {per_gpu: 2}             # on a GPU machine both train at once (a CPU: one per CPU)
models:
  tiny:
    arch: airbench_cifar
    arch_args: {width_mult: 0.25}
    recipe: {epochs: 1, batch_size: 64, lr: 0.05, train_subset: 256, test_subset: 64}
  broken:                       # more images per batch than the data has: training fails inside its task
    arch: shufflenet_v2_x0_5_cifar
    recipe: {epochs: 1, batch_size: 4096, test_subset: 64}
grid:
  - models: [tiny]
    precision: [fp32]          # bf16 convolutions on this CPU: 150-170 ms a call against 4-14 ms in fp32
    memory_format: [contiguous, channels_last]
    bn_fold: [off, on]
  - models: [broken]
"""


def _start(root: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen([sys.executable, "-m", "runner", "sweep", "--config", str(root / "fault.yaml"),
                             "--data", "synthetic", "--out", str(root / "runs"), *extra], cwd=root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _run_until(proc: subprocess.Popen, marker: str | None, signals: list[int], timeout: float = 240):
    """Read the sweep's output; once a line matches the regex `marker`, send `signals` (0.5 s apart).
    The deadline holds whether or not the sweep prints: lines are read by a thread, and past `timeout`
    the sweep gets a SIGINT (it merges what landed) and, 60 s later, a SIGKILL.
    Returns (exit code, output, the driver's child processes seen while it ran)."""
    import queue
    import threading

    lines, children, sent = [], set(), False
    q: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [q.put(line) for line in proc.stdout] + [q.put(None)], daemon=True).start()
    deadline = time.monotonic() + timeout
    while True:
        try:
            line = q.get(timeout=max(0.1, min(1.0, deadline - time.monotonic())))
        except queue.Empty:
            line = ""
        if line is None:
            break
        if line:
            lines.append(line)
        children |= _descendants(proc.pid)
        if marker and not sent and line and re.search(marker, line):
            for s in signals:
                proc.send_signal(s)
                time.sleep(0.5)
            sent = True
        if time.monotonic() > deadline:
            lines.append(f"[test: no end after {timeout:.0f} s: SIGINT]\n")
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
            break
    return proc.wait(timeout=60), "".join(lines), children


def _proc_stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time) of a live process, from /proc; None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), int(fields[19])


def _descendants(root: int) -> set[tuple[int, int]]:
    """(pid, start time) of every process below `root`: Ray's GCS, raylet, agents and workers."""
    parents = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and (st := _proc_stat(int(d.name))):
            parents[int(d.name)] = st
    found, frontier = set(), {root}
    while frontier:
        kids = {pid for pid, (ppid, _) in parents.items() if ppid in frontier}
        found |= {(pid, parents[pid][1]) for pid in kids}
        frontier = kids
    return found


def _gone(children: set, timeout: float = 20) -> list:
    """The driver's children still alive (same pid, same start time) after up to `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [(pid, t) for pid, t in children if (st := _proc_stat(pid)) and st[1] == t]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.5)


@pytest.fixture(scope="module")
def fault_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    _write(root / "fault.yaml", FAULT_SWEEP)
    run_dir = root / "runs" / "fault"
    spec = load_sweep(root / "fault.yaml")
    out = {"root": root, "run_dir": run_dir, "spec": spec}
    listings = [listing(root)]

    # 0. a deadline shorter than Ray's start: nothing is submitted, and the stop says how to go on
    out["stopped"] = _run_until(_start(root, "--stop-after", "0.01"), None, [])
    out["stopped_meta"] = json.loads((run_dir / "sweep.json").read_text())
    merged = run_dir / "results.parquet"
    out["stopped_rows"] = len(pd.read_parquet(merged)) if merged.exists() else 0
    listings.append(listing(root))

    # 1. SIGTERM as the bench phase starts its actor (seconds of importing: a window no machine's speed closes):
    # the trainings and the failed model's error row have landed
    out["term"] = _run_until(_start(root), r"^-- bench phase:", [signal.SIGTERM])
    out["term_rows"] = pd.read_parquet(run_dir / "results.parquet")
    listings.append(listing(root))

    # 2. a stale lock of a dead process; two Ctrl-C once the first bench line (the failed model's) is printed
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run_dir / guard.LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(),
                                                       "started_at": "2026-01-01T00:00:00+00:00"}))
    out["int"] = _run_until(_start(root), "bench:", [signal.SIGINT, signal.SIGINT])
    out["int_rows"] = pd.read_parquet(run_dir / "results.parquet")
    listings.append(listing(root))

    # 3. a damaged result file (Parquet cut short, where a variant's part goes) and a damaged checkpoint, then
    # run to the end
    out["damaged_result"] = run_dir / "results" / "tiny-fp32-nchw-eager.parquet"
    shutil.copyfile(run_dir / "results.parquet", out["damaged_result"])
    _truncate(out["damaged_result"])
    out["ckpt"] = run_dir / "checkpoints" / "tiny.pt"
    out["ckpt"].parent.mkdir(parents=True, exist_ok=True)
    out["ckpt"].write_bytes(b"not a checkpoint at all")
    out["full"] = _run_until(_start(root), None, [])
    listings.append(listing(root))
    out["listings"] = listings
    return out


@pytest.mark.slow
def test_a_stopped_sweep_says_so_and_the_same_command_finishes_it(fault_runs):
    rc, text, _ = fault_runs["stopped"]
    assert rc == STOPPED_EXIT, text
    assert "stopped at the --stop-after deadline in the train phase, 2 task(s) not started" in text
    assert "Run the same command again" in text and "Traceback" not in text
    assert fault_runs["stopped_meta"]["interrupted"] is True
    assert fault_runs["stopped_rows"] == 0
    # ... and the same command (three more invocations) finishes it: test_resume_recovers_damaged_files_...


def test_a_signal_during_the_clean_up_only_says_so():
    """The first Ctrl-C or SIGTERM stops a sweep (KeyboardInterrupt into its `finally`); once that clean-up has
    begun, a signal only says so. Raised there, a Ctrl-C as the last result landed cut the merge short and
    ended in a traceback from Ray's shutdown."""
    lines: list[str] = []
    with guard.handle_signals(log=lines.append):
        guard.cleaning_up()
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGTERM)
    assert [line.split(":")[0] for line in lines] == ["SIGINT", "SIGTERM"]
    assert all("already shutting down; please wait" in line for line in lines)
    with guard.handle_signals(log=lines.append):  # the next sweep: its first signal stops it again
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGTERM)
    assert "SIGTERM: stopping the sweep" in lines[-1] and guard.interrupted_exit_code() == 143


@pytest.mark.slow
def test_sigterm_stops_cleanly_with_143(fault_runs):
    rc, text, children = fault_runs["term"]
    assert rc == 143, text
    assert "SIGTERM: stopping the sweep" in text and "interrupted (exit 143)" in text
    assert "Traceback" not in text
    rows = fault_runs["term_rows"]
    # what landed before the signal is merged: the failed model's error row (tiny's checkpoint: run 2 reuses it)
    assert "broken-fp32-nchw-eager" in set(rows["variant_id"]) and not rows.duplicated(["variant_id", "repeat"]).any()
    assert not (fault_runs["run_dir"] / guard.LOCK_NAME).exists()
    assert children and not _gone(children), "Ray processes left running after SIGTERM"


@pytest.mark.slow
def test_second_ctrl_c_does_not_cut_the_cleanup_short(fault_runs):
    rc, text, children = fault_runs["int"]
    assert rc == 130, text
    assert "taking over a stale lock" in text and "no longer running" in text
    assert "reusing checkpoint of tiny" in text  # trained by run 1 before its SIGTERM: not lost
    assert "SIGINT: stopping the sweep" in text and "SIGINT: already shutting down" in text
    assert "Traceback" not in text
    before, after = fault_runs["term_rows"], fault_runs["int_rows"]
    assert set(before["variant_id"]) <= set(after["variant_id"])  # nothing landed earlier was lost
    assert not after.duplicated(["variant_id", "repeat"]).any()
    assert not (fault_runs["run_dir"] / guard.LOCK_NAME).exists()
    assert children and not _gone(children), "Ray processes left running after two Ctrl-C"


@pytest.mark.slow
def test_resume_recovers_damaged_files_and_ends_with_one_row_per_variant(fault_runs):
    rc, text, _ = fault_runs["full"]
    spec, run_dir = fault_runs["spec"], fault_runs["run_dir"]
    assert rc == 0, text
    assert f"skipped {fault_runs['damaged_result']}" in text  # named, then re-run
    assert f"checkpoint {fault_runs['ckpt']} does not load" in text and "retraining tiny" in text
    df = pd.read_parquet(run_dir / "results.parquet")
    assert set(df["variant_id"]) == {v.variant_id for v in spec.variants}
    per = df.groupby("variant_id").agg(n=("repeat", "size"), status=("status", "first"))
    assert (per.loc[per["status"] == "ok", "n"] == 3).all() and (per.loc[per["status"] != "ok", "n"] == 1).all()
    assert not df.duplicated(["variant_id", "repeat"]).any()
    assert len(list((run_dir / "results").glob("*.parquet"))) == len(spec.variants)
    # the real cause, not Ray's wrapper, on the console and first in the error rows
    assert "error   train:broken  ValueError:" in text and "batch_size 4096 is larger" in text
    broken = df[df["model"] == "broken"].iloc[0]
    first = broken["error"].splitlines()[0]
    assert first.startswith("training of model 'broken' failed: ValueError:") and "batch_size 4096" in first
    tr = pd.read_parquet(run_dir / "training.parquet")
    assert tr[tr["model"] == "broken"]["error"].iloc[0].startswith("ValueError:")
    import torch
    ckpt = torch.load(fault_runs["ckpt"], weights_only=True)  # retrained and saved again
    assert ckpt["spec_hash"] == spec.model("tiny").spec_hash
    # the interrupted invocations' times are kept: the report's wall time is the sum of all four
    meta = json.loads((run_dir / "sweep.json").read_text())
    assert meta["interrupted"] is False and [r["interrupted"] for r in meta["previous_runs"]] == [True] * 3
    assert all(r["wall_s"] > 0 for r in meta["previous_runs"])


@pytest.mark.slow
def test_fault_runs_write_only_inside_the_run_folder(fault_runs):
    listings = fault_runs["listings"]
    for before, after in zip(listings, listings[1:]):
        outside = [k for k in changed(before, after) if not k.startswith("runs")]
        assert outside == []
        assert all(k == "runs" or k.startswith("runs/fault") for k in changed(before, after))


@pytest.mark.parametrize("value", ["[]", "[fp32, fp16]"])
def test_named_row_takes_one_value_per_axis(tmp_path, value):
    from variants import SpecError, load_sweep
    cfg = tmp_path / "named.yaml"
    cfg.write_text("models: {m: {arch: airbench_cifar}}\n"
                   f"named: {{B1: {{model: m, precision: {value}}}}}\n")
    with pytest.raises(SpecError, match=r"named\.B1\.precision: expected one value"):
        load_sweep(cfg)
