"""A hostile machine (issue 27): a full disk, a read-only file system, Parquet files whose metadata is a bomb.

Each case ends in one line on stderr naming the path and the cause, exit 2, no traceback, and the run folder
as it was: the earlier part files, results.parquet and report.md whole and readable, no temp file left.

- A full disk, without privileges: the verbs run in a child process whose RLIMIT_FSIZE is N bytes, with
  SIGXFSZ ignored, so that a write past N bytes fails with EFBIG as it would on a full disk.
- A read-only file system, without privileges: a folder bind-mounted read-only in new user and mount
  namespaces (unshare(1)), so a write fails with EROFS. (On this machine /sys answers EPERM and /proc/sys
  ENOENT, and no read-only mount belongs to the project.) Skipped, saying why, where the kernel allows none.

The child runs several verbs through runner.__main__.main (one import of torch per child, not per verb); real
files, real Parquet, real torch, no Ray cluster (the sweep fails before it would start one).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_hostile import _exportable, _row, _run_folder, one_line, run_cli

from runner import schema
from runner.__main__ import main
from runner.results import RESULT_SCHEMA, check_folder, read_folder, to_table, write_rows

ROOT = Path(__file__).resolve().parent.parent

# Runs each case [argv, RLIMIT_FSIZE bytes or 0, environment]; prints [exit status, stderr] per case.
DRIVER = r"""
import contextlib, io, json, os, resource, signal, sys, traceback
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit a write fails with EFBIG, as on a full disk
from runner.__main__ import main
NONE = resource.RLIM_INFINITY
out = []
for argv, limit, env in json.loads(sys.argv[1]):
    saved = dict(os.environ)
    os.environ.update(env)
    err = io.StringIO()
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit or NONE, NONE))
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = main(argv)
        except BaseException:
            rc = None
            traceback.print_exc()
    resource.setrlimit(resource.RLIMIT_FSIZE, (NONE, NONE))
    os.environ.clear()
    os.environ.update(saved)
    out.append([rc, err.getvalue()])
print(json.dumps(out))
"""


def _made(folder: Path) -> Path:
    folder.mkdir(parents=True)
    return folder


def drive(cases: list, cache: Path, prefix: tuple[str, ...] = ()) -> list[tuple[int, str]]:
    env = {**os.environ, "CIFAR_RUNNER_CACHE": str(cache)}  # never the user's own cache
    proc = subprocess.run([*prefix, sys.executable, "-c", DRIVER, json.dumps(cases)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"the child died (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    return [tuple(r) for r in json.loads(proc.stdout.strip().splitlines()[-1])]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(folder: Path) -> list[Path]:
    """Temp files (files.write_new, the lock) and temp folders (files.write_by_name) anywhere under `folder`."""
    return [p for p in folder.rglob(".*") if p.name.endswith(".tmp") or p.is_dir()]


def _grown(run: Path, n: int = 30) -> None:
    """More variants landed since the last merge: the next one writes a larger results.parquet."""
    for i in range(n):
        write_rows([_row(f"v{i:02d}", repeat=r) for r in range(3)], run / "results" / f"v{i:02d}.parquet")


def _archives(folder: Path) -> Path:
    """An image-folder copy as train.tar.xz + test.tar.xz, one noise image (~3 KB as PNG) per class."""
    import tarfile

    import numpy as np
    from PIL import Image

    from runner.data import CLASSES

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in CLASSES:
            (folder / split / c).mkdir(parents=True)
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / split / c / "0.png")
        with tarfile.open(folder / f"{split}.tar.xz", "w:xz") as t:
            t.add(folder / split, arcname=split)
        shutil.rmtree(folder / split)
    return folder


SWEEP = "sweep: s\nmodels: {m: {arch: airbench_cifar}}\ngrid: [{}]\n"
TINY = ("sweep: tiny\ndata: {source: synthetic}\nmodels: {t: {arch: airbench_cifar, arch_args: {width_mult: 0.125}, "
        "recipe: {epochs: 1, batch_size: 32, train_subset: 32, test_subset: 32}}}\ngrid: [{}]\n")


# ---- a full disk ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def full_disk(tmp_path_factory):
    """Every case in one child; before the fixes: report and sweep said 'error: File too large' (no path),
    train ended in a RuntimeError traceback (torch.save's 'unexpected pos') and export aborted (exit 134)."""
    root = tmp_path_factory.mktemp("full")
    report_run = _run_folder(root / "report", [_row("a"), _row("b")])
    assert main(["report", str(report_run)]) == 0  # report.md and its figures, as a finished sweep leaves them
    _grown(report_run)
    sweep_root = root / "sweep"
    sweep_run = _run_folder(sweep_root, [_row("m-fp32-contiguous-none")])  # a finished earlier invocation
    (sweep_root / "s.yaml").write_text(SWEEP)
    (root / "tiny.yaml").write_text(TINY)
    export_run = _exportable(_made(root / "export"))
    before = {p: snapshot(p) for p in (report_run, sweep_run, export_run)}
    sweep = ["sweep", "--config", str(sweep_root / "s.yaml"), "--data", "synthetic", "--out", str(sweep_root / "runs")]
    train = ["train", "--config", str(root / "tiny.yaml"), "--model", "t", "--out", str(root / "trained"),
             "--device", "cpu"]
    export = ["export", "--run", str(export_run), "--out", str(root / "exported"), "--data", "synthetic"]
    unpack = [*train, "--data", str(_archives(root / "tars"))]  # an image-folder copy as archives
    cases = {  # name: [argv, bytes a file may have, environment]; the comment: the write that fails
        "report": [["report", str(report_run)], 4096, {}],  # the merge's first: results.parquet, ~56 KB
        "sweep-lock": [sweep, 64, {}],                      # the lock, ~150 bytes
        "sweep-config": [sweep, 512, {}],                   # then resolved_config.json, ~1.3 KB
        "train": [train, 4096, {}],                         # the checkpoint, torch.save
        "export": [export, 4096, {}],                       # model.pt2, torch.export.save
        "unpack": [unpack, 1024, {"CIFAR_RUNNER_CACHE": str(root / "unpacked")}],  # the first image
    }
    results = dict(zip(cases, drive(list(cases.values()), root / "cache")))
    return {"root": root, "results": results, "before": before,
            "runs": {"report": report_run, "sweep": sweep_run, "export": export_run}}


def test_full_disk_during_reports_merge(full_disk):
    run = full_disk["runs"]["report"]
    rc, err = full_disk["results"]["report"]
    assert rc == 2 and err.strip() == f"error: {run / 'results.parquet'}: File too large", err
    assert snapshot(run) == full_disk["before"][run]  # results.parquet, report.md, csv: the earlier ones
    assert not leftovers(run)
    assert len(read_folder(run / "results", RESULT_SCHEMA)) == 2 + 30 * 3  # every part whole, none lost
    assert set(pd.read_parquet(run / "results.parquet")["variant_id"]) == {"a", "b"}
    assert "| `a` |" in (run / "report.md").read_text()


@pytest.mark.parametrize("case,name", [("sweep-lock", ".sweep.lock"), ("sweep-config", "resolved_config.json")])
def test_full_disk_during_a_sweeps_writes(full_disk, case, name):
    run = full_disk["runs"]["sweep"]
    rc, err = full_disk["results"][case]
    assert rc == 2 and err.strip() == f"error: {run / name}: File too large", err
    assert snapshot(run) == full_disk["before"][run]  # the earlier rows, merged files and report as they were
    assert not leftovers(run) and not (run / ".sweep.lock").exists()  # the lock was let go


def test_full_disk_while_train_saves_its_checkpoint(full_disk):
    out = full_disk["root"] / "trained" / "tiny" / "train" / "t.pt"
    rc, err = full_disk["results"]["train"]
    assert rc == 2 and err.strip() == f"error: {out}: File too large", err  # was a RuntimeError traceback
    assert not out.exists() and not leftovers(out.parent)


def test_full_disk_during_export(full_disk):
    out = full_disk["root"] / "exported"
    rc, err = full_disk["results"]["export"]
    assert rc == 2 and err.strip() == f"error: {out / 'model.pt2'}: File too large", err  # was an abort
    assert list(out.iterdir()) == []
    run = full_disk["runs"]["export"]
    assert snapshot(run) == full_disk["before"][run]


def test_full_disk_while_the_data_archives_are_unpacked(full_disk):
    cache = full_disk["root"] / "unpacked"
    rc, err = full_disk["results"]["unpack"]
    # was "train.tar.xz cannot be unpacked (OSError: [Errno 27] File too large); it looks truncated or damaged:
    # copy it again": the archive was whole, the disk full
    assert rc == 2 and err.startswith(f"error: {cache}/unpacked-") and err.strip().endswith(": File too large"), err
    assert one_line(err) and list(cache.iterdir()) == []  # no half tree a later run could take as whole


# ---- a read-only file system --------------------------------------------------------------------------------

def readonly(folder: Path) -> tuple[str, ...]:
    """A command prefix that runs its command with `folder` read-only; pytest.skip where none can be made."""
    script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'
    prefix = ("unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script, str(folder))
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1) to make a read-only file system with")
    probe = subprocess.run([*prefix, "mkdir", str(folder / "probe")], capture_output=True, text=True, timeout=60)
    if "Read-only file system" not in probe.stderr:
        pytest.skip(f"no read-only file system can be made here without privileges: {probe.stderr.strip()[:200]}")
    return prefix


@pytest.fixture(scope="module")
def read_only(tmp_path_factory):
    from PIL import Image

    from runner.data import CLASSES

    root = tmp_path_factory.mktemp("ro")
    ro = root / "ro"
    run = _run_folder(ro, [_row("m-fp32-contiguous-none")])
    (root / "s.yaml").write_text(SWEEP)
    (root / "cifar.yaml").write_text(f"data: {{source: cifar10, root: {ro / 'cifar'}}}\n" + SWEEP)
    export_run = _exportable(_made(root / "rw"))
    for split in ("train", "test"):
        for c in CLASSES:
            (root / "imgs" / split / c).mkdir(parents=True)
            Image.new("RGB", (32, 32), (9, 9, 9)).save(root / "imgs" / split / c / "0.png")
    prefix = readonly(ro)
    before = snapshot(ro)
    sweep = ["sweep", "--config", str(root / "s.yaml"), "--data", "synthetic"]
    export = ["export", "--run", str(export_run), "--out", str(ro / "exported"), "--data", "synthetic"]
    train = ["train", "--config", str(root / "s.yaml"), "--model", "m", "--data", str(root / "imgs"),
             "--out", str(root / "rw" / "runs"), "--device", "cpu"]
    cifar = ["train", "--config", str(root / "cifar.yaml"), "--model", "m", "--out", str(root / "rw" / "runs"),
             "--device", "cpu"]  # the sweep file's data: cifar10, downloaded into data.root
    cases = {
        "sweep-new": [sweep + ["--out", str(ro / "new")], 0, {}],
        "sweep-resume": [sweep + ["--out", str(ro / "runs")], 0, {}],
        "report": [["report", str(run)], 0, {}],
        "export": [export, 0, {}],
        "data-cache": [train, 0, {"CIFAR_RUNNER_CACHE": str(ro / "cache")}],
        "data-root": [cifar, 0, {}],
    }
    results = dict(zip(cases, drive(list(cases.values()), root / "cache", prefix)))
    return {"ro": ro, "run": run, "results": results, "before": before}


@pytest.mark.parametrize("case,where", [
    ("sweep-new", "new"),                    # --out: the folder it would make
    ("sweep-resume", "runs/s/.sweep.lock"),  # a run folder that is there: its lock
    ("report", "runs/s/results.parquet"),    # the merge's first write
    ("export", "exported"),                  # export --out
    ("data-cache", "cache"),                 # CIFAR_RUNNER_CACHE, where the decoded images go
    ("data-root", "cifar"),                  # data.root, where cifar10 is downloaded to (before any download)
])
def test_read_only_file_system_is_one_line(read_only, case, where):
    rc, err = read_only["results"][case]
    assert rc == 2 and err.strip() == f"error: {read_only['ro'] / where}: Read-only file system", err
    assert snapshot(read_only["ro"]) == read_only["before"]


# ---- a Parquet footer over the cap ---------------------------------------------------------------------------

def _bomb(path: Path, rows: list[dict], pad: int = 3 << 20) -> Path:
    """A part file of this code in every way (schema, version, owner) but a key-value metadata entry of `pad`
    bytes: its footer (metadata) is over 7 MB (pyarrow keeps the entry twice), all parsed into memory on a read."""
    table = schema.stamp(to_table(rows, RESULT_SCHEMA))
    pq.write_table(table.replace_schema_metadata({**table.schema.metadata, b"pad": b"x" * pad}), path)
    assert schema.MAX_FOOTER < int.from_bytes(path.read_bytes()[-8:-4], "little")
    return path


def _cap_words(path: Path) -> str:
    return f"{path}: Parquet metadata of "


def test_published_footers_are_far_under_the_cap():
    """The cap's comment in runner/schema.py: the largest footer among reports/ was 56,458 bytes."""
    sizes = {p: schema.footer_size(p) for p in ROOT.glob("reports/**/*.parquet")}
    assert sizes and max(sizes.values()) < schema.MAX_FOOTER / 50, max(sizes.items(), key=lambda kv: kv[1])


def test_a_part_with_a_footer_over_the_cap_is_skipped_by_report_and_resume(tmp_path, capsys):
    run = _run_folder(tmp_path, [_row("a")])
    bomb = _bomb(run / "results" / "b.parquet", [_row("b")])
    assert pq.read_table(bomb).num_rows == 1  # without the cap it is read and merged like any part
    rc, err = run_cli(["report", str(run)], capsys)
    warnings = [line for line in err.splitlines() if line.startswith("warning: skipped")]
    assert rc == 0 and len(warnings) == 1 and _cap_words(bomb) in warnings[0], err
    assert f"over the cap of {schema.MAX_FOOTER:,}" in warnings[0] and "Traceback" not in err
    assert list(pd.read_parquet(run / "results.parquet")["variant_id"]) == ["a"]
    check_folder(run)  # a resume's reads before Ray: the part is not ours to refuse, it is re-run
    assert list(read_folder(run / "results", RESULT_SCHEMA)["variant_id"]) == ["a"]
    assert bomb.exists()  # never deleted: the user's file


@pytest.mark.parametrize("verb", ["report", "export", "train-summary"])
def test_a_merged_file_with_a_footer_over_the_cap_is_one_line(verb, tmp_path, capsys):
    run = tmp_path / "pub"
    run.mkdir()
    bomb = _bomb(run / "results.parquet", [_row("a")])
    argv = {"report": ["report", str(run)], "export": ["export", "--run", str(run), "--out", str(tmp_path / "x")],
            "train-summary": ["train-summary", str(bomb)]}[verb]
    rc, err = run_cli(argv, capsys)
    assert rc == 2 and _cap_words(bomb) in err and one_line(err), err
    assert sorted(p.name for p in run.iterdir()) == ["results.parquet"] and not (tmp_path / "x").exists()


def test_a_file_that_is_not_parquet_is_named_before_pyarrow_reads_it(tmp_path):
    path = tmp_path / "x.parquet"
    for data, words in ((b"PAR1", "not a Parquet file (4 bytes)"),
                        (b"PAR1" + b"\0" * 64, "not a Parquet file (it does not end in PAR1")):
        path.write_bytes(data)
        with pytest.raises(schema.FileError, match=re.escape(f"{path}: {words}")):
            schema.read(path)
    pq.write_table(pa.table({"a": [1]}), path)
    assert 0 < schema.footer_size(path) < 4096
