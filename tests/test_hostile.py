"""Hostile input and a hostile machine (issue 27): resource bombs in a sweep file, a file system that says no,
links planted in a run folder, files that lie. Each case ends in one line naming the problem and the right
exit status, never a traceback or a hang; real files, real Parquet, real torch (no Ray: these are the
driver's reads and writes). The fuzz test drives the sweep-file loader with generated YAML for a few seconds.
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import stat
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from runner.__main__ import main
from runner.results import merge, write_rows
from variants import SpecError, load_sweep

ROOT = Path(__file__).resolve().parent.parent
MODELS = "models: {m: {arch: airbench_cifar}}\n"


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    rc = main(argv)
    return rc, capsys.readouterr().err


def one_line(err: str) -> bool:
    return "Traceback" not in err and len(err.strip().splitlines()) == 1


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang


@pytest.fixture
def deadline():
    """`deadline(s)` arms SIGALRM: a loader that hangs raises Hang in the test instead of stopping the suite."""
    before = signal.signal(signal.SIGALRM, _alarm)
    yield lambda s: signal.setitimer(signal.ITIMER_REAL, s)
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, before)


# ---- 1. a size and depth budget for every file the project reads ---------------------------------------

def _laughs(levels: int = 9) -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


BOMBS = {
    # id: (text, words the one line holds). Before: > 40 s or MemoryError, RecursionError, a traceback.
    "laughs-in-name": (_laughs().replace("a8: &a8", "sweep: &a8") + MODELS, "aliases are expanded"),
    "laughs-in-label": (MODELS + "grid: [{}]\n" + _laughs() + "named: {B1: {model: m, label: *a8}}\n",
                        "aliases are expanded"),
    "laughs-in-data": (_laughs().replace("a8: &a8", "data: &a8") + MODELS, "aliases are expanded"),
    "deep-flow-list": ("sweep: " + "[" * 20000 + "]" * 20000 + "\n" + MODELS, "nest"),
    "deep-block-list": ("sweep:\n  " + "- " * 20000 + "x\n" + MODELS, "nest"),
    "self-alias": ("sweep: &x [1, *x]\n" + MODELS, "names no complete node"),
    "undefined-alias": ("sweep: *nowhere\n" + MODELS, "names no complete node"),
    "repeated-axis": (MODELS + "grid: [{precision: &p [fp32, fp32, fp32, fp32, fp32, fp32, fp32, fp32], "
                      "memory_format: &f [contiguous, contiguous, contiguous, contiguous, contiguous], "
                      "compile: [none, none, none, none, none, none, none, none, none, none, none]}]\n", None),
    "huge-arch-grid": ("models: {f: {arch: fastnet_cifar, arch_grid: {"   # 24,000 models, each built on the meta device
                       f"stem_width: {list(range(8, 28))}, kernel_size: [1, 3, 5, 7, 9, 11], "
                       f"logit_scale: {[i / 100 for i in range(1, 21)]}, "
                       f"widths: {[[w] * 3 for w in range(8, 18)]}}}}}}}\n",
                       "more than 20,000 models"),
}


@pytest.mark.parametrize("case", sorted(BOMBS))
def test_yaml_bombs_end_in_one_line(case, tmp_path, capsys, deadline):
    text, words = BOMBS[case]
    cfg = tmp_path / "bomb.yaml"
    cfg.write_text(text)
    deadline(10)
    t0 = time.perf_counter()
    rc, err = run_cli(["list", "--config", str(cfg)], capsys)
    assert time.perf_counter() - t0 < 5
    if words is None:  # repeats of one value are one value: it loads, with one variant
        assert rc == 0 and len(load_sweep(cfg).variants) == 1
        return
    assert rc == 2 and str(cfg) in err and words in err and one_line(err), err
    assert len(err) < 700


def test_an_endless_config_is_read_only_up_to_its_cap(capsys, deadline):
    deadline(10)
    rc, err = run_cli(["list", "--config", "/dev/zero"], capsys)
    assert rc == 2 and "/dev/zero" in err and "larger than" in err and one_line(err), err


def test_aliases_within_the_budget_still_load(tmp_path):
    cfg = tmp_path / "ok.yaml"
    cfg.write_text("models:\n  a: {arch: airbench_cifar, recipe: &r {epochs: 1, batch_size: 64}}\n"
                   "  b: {arch: airbench_cifar, recipe: *r}\ngrid: [{}]\n")
    spec = load_sweep(cfg)
    assert [m.recipe.epochs for m in spec.models] == [1, 1] and len(spec.variants) == 2


def test_error_messages_quote_a_bounded_value(tmp_path):
    cfg = tmp_path / "long.yaml"
    cfg.write_text(f"seed: [{', '.join(['123456789'] * 20000)}]\n" + MODELS)
    with pytest.raises(SpecError) as e:
        load_sweep(cfg)
    assert "seed" in str(e.value) and len(str(e.value)) <= SpecError.MAX_CHARS
    cfg.write_text('models: {"a\\nb\\rc": {arch: airbench_cifar}}\n')  # a key with line breaks
    with pytest.raises(SpecError) as e:
        load_sweep(cfg)
    assert len(str(e.value).splitlines()) == 1


def test_run_folder_json_has_a_budget(tmp_path, capsys):
    """sweep.json nested 10**5 deep was a RecursionError; one that never ends was read until memory ran out."""
    run = _run_folder(tmp_path, [_row("a")])
    (run / "sweep.json").write_text("[" * 100_000 + "]" * 100_000)
    rc, err = run_cli(["report", str(run)], capsys)
    assert rc == 2 and "sweep.json: JSON nested too deeply" in err and one_line(err), err
    (run / "sweep.json").unlink()
    (run / "sweep.json").symlink_to("/dev/zero")
    rc, err = run_cli(["report", str(run)], capsys)
    assert rc == 2 and "sweep.json: larger than" in err and one_line(err), err
    (run / "sweep.json").unlink()
    (run / "sweep.json").write_bytes(b"\xff\xfe{}")
    rc, err = run_cli(["report", str(run)], capsys)
    assert rc == 2 and "sweep.json: not JSON" in err and one_line(err), err


def test_a_lock_linked_to_an_endless_file_is_taken_over(tmp_path):
    from runner import guard

    (tmp_path / guard.LOCK_NAME).symlink_to("/dev/zero")
    lines: list[str] = []
    with guard.sweep_lock(tmp_path, log=lines.append) as me:
        assert json.loads((tmp_path / guard.LOCK_NAME).read_text())["pid"] == me["pid"]
    assert "unreadable" in lines[0] and not (tmp_path / guard.LOCK_NAME).exists()


# ---- 2. one error boundary for every verb: the machine says no ------------------------------------------

def test_out_naming_a_file_is_one_line(tmp_path, capsys):
    cfg = tmp_path / "s.yaml"
    cfg.write_text("sweep: s\n" + MODELS + "grid: [{}]\n")
    (tmp_path / "runs").write_text("a file, not a folder")
    rc, err = run_cli(["sweep", "--config", str(cfg), "--data", "synthetic", "--out", str(tmp_path / "runs")], capsys)
    assert rc == 2 and str(tmp_path / "runs") in err and "Not a directory" in err and one_line(err), err
    assert (tmp_path / "runs").read_text() == "a file, not a folder"


def test_data_cache_naming_a_file_is_one_line(tmp_path, capsys, monkeypatch):
    from PIL import Image

    from runner.data import CLASSES

    for split in ("train", "test"):
        for c in CLASSES:
            (tmp_path / "imgs" / split / c).mkdir(parents=True)
            Image.new("RGB", (32, 32), (9, 9, 9)).save(tmp_path / "imgs" / split / c / "0.png")
    (tmp_path / "cache").write_text("not a folder")
    monkeypatch.setenv("CIFAR_RUNNER_CACHE", str(tmp_path / "cache"))
    cfg = tmp_path / "s.yaml"
    cfg.write_text("sweep: s\n" + MODELS + "grid: [{}]\n")
    rc, err = run_cli(["train", "--config", str(cfg), "--model", "m", "--data", str(tmp_path / "imgs"),
                       "--out", str(tmp_path / "runs"), "--device", "cpu"], capsys)
    assert rc == 2 and f"{tmp_path / 'cache'}: File exists" in err and one_line(err), err  # was a traceback


def test_data_root_naming_a_file_is_one_line(tmp_path, capsys):
    """data.root is where cifar10 is downloaded to; naming a file it said 'could not download CIFAR-10' and gave
    network advice over two lines (torchvision fails on os.makedirs, before any download)."""
    (tmp_path / "root").write_text("not a folder")
    cfg = tmp_path / "s.yaml"
    cfg.write_text(f"sweep: s\ndata: {{source: cifar10, root: {tmp_path / 'root'}}}\n" + MODELS + "grid: [{}]\n")
    rc, err = run_cli(["train", "--config", str(cfg), "--model", "m", "--out", str(tmp_path / "runs"),
                       "--device", "cpu"], capsys)
    assert rc == 2 and err.strip() == f"error: {tmp_path / 'root'}: File exists", err
    assert (tmp_path / "root").read_text() == "not a folder"


def test_export_out_naming_a_file_is_one_line(tmp_path, capsys):
    run = _exportable(tmp_path)
    (tmp_path / "taken").write_text("mine")
    rc, err = run_cli(["export", "--run", str(run), "--out", str(tmp_path / "taken")], capsys)
    assert rc == 2 and str(tmp_path / "taken") in err and "File exists" in err and one_line(err), err
    assert (tmp_path / "taken").read_text() == "mine"


def test_train_summary_of_a_missing_file_says_what_is_wrong(tmp_path, capsys):
    rc, err = run_cli(["train-summary", str(tmp_path / "nope.parquet")], capsys)
    assert rc == 2 and f"{tmp_path / 'nope.parquet'}: no such file" in err and one_line(err), err
    rc, err = run_cli(["train-summary", str(tmp_path)], capsys)
    assert rc == 2 and "a folder, not a file" in err and one_line(err), err


# ---- 3. outputs are new files made in the run folder: no link followed, the umask respected ---------------

def test_report_replaces_planted_links_and_never_writes_through_them(tmp_path, capsys):
    run = _run_folder(tmp_path, [_row("a"), _row("b")])
    victims = {}
    for name in ("report.md", "final_table.csv", "results.parquet", "latency_by_variant.png"):
        victims[name] = tmp_path / f"victim-{name}"
        victims[name].write_text("precious")
        (run / name).unlink(missing_ok=True)
        (run / name).symlink_to(victims[name])
    rc, err = run_cli(["report", str(run)], capsys)
    assert rc == 0, err
    for name, victim in victims.items():
        assert victim.read_text() == "precious", name  # before: report.md and final_table.csv were overwritten
        assert not (run / name).is_symlink() and (run / name).stat().st_size > 0, name
    assert not list(run.glob(".*.tmp")) and "| `a` |" in (run / "report.md").read_text()


def test_written_files_follow_the_umask(tmp_path):
    from runner import files

    old = os.umask(0o027)
    try:
        run = _run_folder(tmp_path, [_row("a")])
        files.write_text(tmp_path / "t.txt", "x")
    finally:
        os.umask(old)
    for p in (run / "results" / "a.parquet", run / "results.parquet", run / "final_table.csv", tmp_path / "t.txt"):
        assert stat.S_IMODE(p.stat().st_mode) == 0o640, p  # before: every Parquet file was 0600


# ---- 4. files that lie ------------------------------------------------------------------------------------

def test_a_part_of_another_schema_or_owner_is_skipped_and_named(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    run = _run_folder(tmp_path, [_row("a")])
    pq.write_table(pa.table({"sweep": ["s", "s"], "variant_id": [3, 4], "status": ["ok", "ok"]}),
                   run / "results" / "b.parquet")  # before: cast and merged as variants '3' and '4'
    write_rows([_row("a", top1_pct=10.0)], run / "results" / "c.parquet")  # named c, holds a's row
    rc, err = run_cli(["report", str(run)], capsys)
    assert rc == 0
    warnings = [line for line in err.splitlines() if line.startswith("warning: skipped")]
    assert len(warnings) == 2 and "b.parquet" in warnings[0] and "variant_id is int64, not string" in warnings[0]
    assert "c.parquet" in warnings[1] and "rows of variant_id ['a'], not c" in warnings[1]
    merged = pd.read_parquet(run / "results.parquet")
    assert list(merged["variant_id"]) == ["a"] and list(merged["top1_pct"]) == [90.0]


def test_export_refuses_a_checkpoint_of_another_model(tmp_path, capsys):
    run = _exportable(tmp_path)
    ckpt = torch.load(run / "checkpoints" / "m.pt", weights_only=True)
    torch.save({**ckpt, "spec_hash": "0123456789ab"}, run / "checkpoints" / "m.pt")
    rc, err = run_cli(["export", "--run", str(run), "--out", str(tmp_path / "x")], capsys)
    assert rc == 2 and "holds model 'm' (spec 0123456789ab)" in err and one_line(err), err
    (run / "checkpoints" / "m.pt").write_bytes(b"not a checkpoint")
    rc, err = run_cli(["export", "--run", str(run), "--out", str(tmp_path / "x")], capsys)
    assert rc == 2 and "not a checkpoint this runner wrote" in err and one_line(err), err
    assert not (tmp_path / "x").exists()


def test_a_sweep_whose_every_task_failed_is_a_failed_run(tmp_path):
    from runner.commands import failed_run

    failed = _run_folder(tmp_path / "f", [_row("a", status="error"), _row("b", status="skipped")])
    assert "no variant ended ok: every task failed (1 error row(s)" in failed_run(failed)
    assert failed_run(_run_folder(tmp_path / "o", [_row("a"), _row("b", status="error")])) is None
    assert failed_run(_run_folder(tmp_path / "s", [_row("b", status="skipped")])) is None


def _row(vid: str, status: str = "ok", **kw) -> dict:
    ok = status == "ok"
    return {"sweep": "s", "variant_id": vid, "model": "m", "arch": "airbench_cifar", "precision": "fp32",
            "memory_format": "contiguous", "compile": "none", "cuda_graph": False, "bn_fold": False, "tta": "none",
            "status": status, "error": None if ok else "boom", "repeat": 0, "device": "cpu",
            "top1_pct": 90.0 if ok else None, "lat_p50_ms": 1.0 if ok else None, "lat_p95_ms": 1.2 if ok else None,
            "host_p50_ms": 1.1 if ok else None, "host_p95_ms": 1.3 if ok else None,
            "timing_order": "round-robin" if ok else None, "slice_p50s_ms": "[1.0]" if ok else None, **kw}


def _run_folder(root: Path, rows: list[dict]) -> Path:
    """A sweep folder as the sweep leaves it: one part file per variant, merged (real Parquet)."""
    run = root / "runs" / "s"
    for r in rows:
        write_rows([r], run / "results" / f"{r['variant_id']}.parquet")
    merge(run)
    return run


def _exportable(tmp_path: Path) -> Path:
    """A finished run folder of one variant with the checkpoint it was measured from (an untrained model)."""
    from runner.data import load
    from runner.train import build_model

    cfg = tmp_path / "s.yaml"
    cfg.write_text("sweep: s\ndata: {source: synthetic}\n"
                   "models: {m: {arch: airbench_cifar, arch_args: {width_mult: 0.25}}}\ngrid: [{}]\n")
    spec = load_sweep(cfg)
    m, v = spec.models[0], spec.variants[0]
    config = json.dumps({"variant": dataclasses.asdict(v), "model": dataclasses.asdict(m),
                         "bench": dataclasses.asdict(spec.bench)}, default=str, sort_keys=True)
    run = _run_folder(tmp_path, [_row(v.variant_id, config_json=config)])
    state = build_model(m.arch, dict(m.arch_args)).state_dict()
    (run / "checkpoints").mkdir()
    torch.save({"key": m.key, "arch": m.arch, "arch_args": dict(m.arch_args), "spec_hash": m.spec_hash,
                "state_dict": state, "top1_pct": 90.0, "data_source": load("synthetic").source},
               run / "checkpoints" / "m.pt")
    return run


# ---- 6. fuzz: generated YAML never gets anything but a one-line SpecError out of the loader --------------

KEYS = ["sweep", "seed", "data", "bench", "train", "models", "grid", "exclude", "named", "arch", "arch_args",
        "arch_grid", "recipe", "teacher", "model", "label", "source", "root", "epochs", "batch_size", "lr",
        "train_subset", "warmup", "iters", "repeats", "precision", "memory_format", "compile", "cuda_graph",
        "bn_fold", "tta", "per_gpu", "accuracy_bar_pct", "width_mult", "m", "B1", "airbench_cifar", "<<", "x" * 120, "a/b", "ü"]
SCALARS = ["fp32", "bf16", "fp16", "channels_last", "contiguous", "none", "default", "on", "off", "flip",
           "airbench_cifar", "resnet18_cifar", "synthetic", "m", "~", "null", ".nan", "-.inf", "0x1F", "1e400",
           "true", "2**70", "-1", "0", "1", "64", "0.05", "99999999999999999999999", '"a\\nb"', "'..'", "2001-12-14"]
TAGGED = ["!!binary aGVsbG8=", "!!python/object:os.system x", "!!set {a, b}", "!!str 5", "!!int x", "!!float 1"]


class _Gen:
    """Random YAML text in flow style (so nesting is free of indentation), with anchors and aliases placed
    anywhere, including inside the node they name, and seeded from a real sweep file's shape."""

    def __init__(self, rnd: random.Random):
        self.r, self.anchors, self.n = rnd, [], 0

    def scalar(self) -> str:
        r = self.r
        pick = r.random()
        if pick < 0.02:
            return r.choice(TAGGED)
        if pick < 0.6:
            return r.choice(SCALARS)
        if pick < 0.8:
            return str(r.choice([r.randint(-5, 5000), r.random() * 10 ** r.randint(-3, 30)]))
        chunk = "".join(chr(r.choice([r.randint(32, 126), r.randint(0, 0x2FFF)])) for _ in range(r.randint(0, 8)))
        return json.dumps(chunk * r.choice([1, 1, 10, 400]))  # control characters, unicode, long strings

    def node(self, depth: int) -> str:
        r = self.r
        if self.anchors and r.random() < 0.08:
            return "*" + r.choice(self.anchors)
        anchor = ""
        if r.random() < 0.1:
            self.n += 1
            anchor = f"&a{self.n} "
            if r.random() < 0.3:  # named before its node is complete: an alias inside it is a cycle
                self.anchors.append(f"a{self.n}")
        if depth <= 0 or r.random() < 0.35:
            text = self.scalar()
        elif r.random() < 0.5:
            text = "[" + ", ".join(self.node(depth - 1) for _ in range(r.randint(0, 6))) + "]"
        else:
            text = "{" + ", ".join(f"{k}: {self.node(depth - 1)}" for k in r.sample(KEYS, r.randint(0, 6))) + "}"
        if anchor and anchor[1:-1] not in self.anchors:
            self.anchors.append(anchor[1:-1])
        return anchor + text

    def mutate(self, value, p: float) -> str:
        """`value` (a real sweep file's structure) as flow YAML, each node replaced with probability `p`,
        each mapping losing or gaining a key now and then."""
        r = self.r
        if r.random() < p:
            return self.node(r.randint(0, 4))
        if isinstance(value, dict):
            items = [f"{json.dumps(k)}: {self.mutate(v, p)}" for k, v in value.items() if r.random() > p / 2]
            if r.random() < p:
                items.insert(r.randint(0, len(items)), f"{r.choice(KEYS)}: {self.node(r.randint(0, 4))}")
            return "{" + ", ".join(items) + "}"
        if isinstance(value, list):
            return "[" + ", ".join(self.mutate(v, p) for v in value) + "]"
        return json.dumps(value)

    def document(self, base: dict) -> str:
        """A real sweep file, mutated; now and then a bomb (deep nesting, aliases that expand 9**n times)."""
        r, self.anchors = self.r, []
        text = self.mutate(base, r.choice([0.0, 0.02, 0.05, 0.1, 0.2]))
        if r.random() < 0.05:
            depth = r.choice([70, 900, 5000])
            text = text[:-1] + f", {r.choice(KEYS)}: " + "[" * depth + "]" * r.choice([0, depth]) + "}"
        if r.random() < 0.05 and text.startswith("{"):  # its last level under a key the loader reads
            laughs = _laughs(r.randint(2, 9)).strip().splitlines()
            laughs[-1] = f"{r.choice(KEYS)}:" + laughs[-1].split(":", 1)[1]
            text = "{" + ", ".join(laughs) + ", " + text[1:]
        return text + "\n"


def test_fuzz_sweep_loader(tmp_path, deadline):
    base = yaml.safe_load((ROOT / "variants" / "quick.yaml").read_text())
    gen, cfg = _Gen(random.Random(27)), tmp_path / "fuzz.yaml"
    loaded = refused = 0
    t0 = time.perf_counter()
    for i in range(3000):
        spent = time.perf_counter() - t0  # about 4 s; at least 150 cases unless the machine is very slow (9 s)
        if (spent > 4 and i >= 150) or spent > 9:
            break
        text = gen.document(base)
        cfg.write_text(text, encoding="utf-8", errors="surrogatepass")
        deadline(5)  # a case that hangs fails the test, naming the text
        try:
            load_sweep(cfg)
            loaded += 1
        except SpecError as e:
            msg = str(e)
            assert str(cfg) in msg and len(msg.splitlines()) == 1 and len(msg) <= SpecError.MAX_CHARS, msg
            refused += 1
        except Hang:
            pytest.fail(f"case {i} hangs:\n{text[:2000]}")
        except Exception as e:  # noqa: BLE001 - what the test exists to find
            pytest.fail(f"case {i}: {type(e).__name__}: {str(e)[:300]}\n{text[:2000]}")
        finally:
            deadline(0)
    n = loaded + refused  # both outcomes common: the loader's checks are reached, not only the parser's
    assert n >= 50 and refused > 0.3 * n and loaded > 0.05 * n, (loaded, refused)
