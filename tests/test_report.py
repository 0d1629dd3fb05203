"""runner/report.py on a small hand-made sweep folder (real Parquet files, no GPU, no Ray)."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from runner.decisions import UNJUDGED, decide, parent_key
from runner.report import build_report
from runner.results import TRAINING_SCHEMA, write_rows

BRIEF_IDS = ["B1", "B2", "O1", "O2", "O3", "D1"]

# (variant_id, brief_id, model, precision, memory_format, compile, cuda_graph, top1, p50 per repeat)
OK_VARIANTS = [
    ("mb-fp32", "B1", "mbv3", "fp32", "contiguous", "none", False, 86.0, [1.00, 1.01, 0.99]),
    # clearly faster than its parent mb-fp32, same accuracy within 0.5 pts: keep
    ("mb-fp16", None, "mbv3", "fp16", "contiguous", "none", False, 85.9, [0.70, 0.71, 0.69]),
    # within the repeat noise of its parent mb-fp16: drop (no measurable gain)
    ("mb-fp16-cl", None, "mbv3", "fp16", "channels_last", "none", False, 85.9, [0.71, 0.72, 0.69]),
    # much faster but loses 1.9 pts (and falls under the 85% bar): drop (accuracy), never chosen
    ("mb-fp16-graph", None, "mbv3", "fp16", "contiguous", "none", True, 84.0, [0.30, 0.31, 0.30]),
    ("rn-fp32", "B2", "resnet18", "fp32", "contiguous", "none", False, 93.0, [2.00, 2.02, 2.01]),
]


def _row(vid, bid, model, prec, mf, comp, graph, top1, rep, p50, **kw):
    row = dict(sweep="unit", variant_id=vid, brief_id=bid, label=f"{model} {prec} {mf} {comp}"
               + (" graph" if graph else ""), model=model, arch=model, precision=prec, memory_format=mf,
               compile=comp, cuda_graph=graph, bn_fold=False, status="ok", repeat=rep, top1_pct=top1,
               top1_drift_pts=0.0, lat_mean_ms=p50 * 1.05, lat_p50_ms=p50, lat_p90_ms=p50 * 1.1,
               lat_p95_ms=p50 * 1.2, lat_p99_ms=p50 * 1.4, lat_std_ms=0.01, lat_min_ms=p50 * 0.9,
               host_p50_ms=p50 + 0.05, timer="cuda_event", warmup=200, iters=1000, unstable=False,
               compile_s=0.0, size_mb=6.0 if model == "mbv3" else 42.7, device="cuda:0", gpu_name="NVIDIA H200",
               gpu_uuid="GPU-1" if model == "mbv3" else "GPU-2", gpu_exclusive=True, driver_version="570.1", torch_version="2.11.0",
               cuda_version="12.8", cudnn_version="91000", ray_version="2.60.0", hostname="node1",
               git_commit="abc123", data_source="cifar10-jpeg sha256:ab12",
               timing_order="round-robin", timing_slices=1, slice_p50s_ms=json.dumps([p50]))
    row.update(kw)
    return row


def _result_rows():
    rows = [_row(vid, bid, model, prec, mf, comp, graph, top1, rep, p50)
            for vid, bid, model, prec, mf, comp, graph, top1, p50s in OK_VARIANTS
            for rep, p50 in enumerate(p50s)]
    rows.append(dict(sweep="unit", variant_id="rn-fp16-compile", model="resnet18", precision="fp16",
                     memory_format="contiguous", compile="max-autotune", cuda_graph=False, bn_fold=False,
                     status="error", error="RuntimeError: inductor exploded\nTraceback (most recent call last):"))
    rows.append(dict(sweep="unit", variant_id="mb-int8", model="mbv3", precision="int8",
                     memory_format="contiguous", compile="none", cuda_graph=False, bn_fold=False,
                     status="skipped", error="int8 is not supported on this device"))
    return rows


def _training_rows():
    return [dict(sweep="unit", model=m, arch=m, teacher=None, status="ok", epoch=e, epochs=2, top1_pct=acc + e,
                 train_s=10.0 * (e + 1), train_img_per_s=5000.0)
            for m, acc in [("mbv3", 83.0), ("resnet18", 90.0)] for e in (1, 2)]


@pytest.fixture
def run_dir(tmp_path):
    write_rows(_result_rows(), tmp_path / "results.parquet")
    write_rows(_training_rows(), tmp_path / "training.parquet", TRAINING_SCHEMA)
    (tmp_path / "sweep.json").write_text(json.dumps(dict(
        name="unit-sweep", shortened=True, shortened_note="epochs capped at 2; a shortened run",
        data_source="cifar10-jpeg folder sha256:ab12 (JPEG q75 copy)", started_at="2026-05-01T10:00:00",
        finished_at="2026-05-01T10:30:00", wall_s=1800.0,
        cluster=dict(gpus=2, nodes=1, gpu_names=["NVIDIA H200", "NVIDIA H200"]), config={},
        accuracy_bar_pct=85.0)))
    return tmp_path


def _section(text: str, title: str) -> str:
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    return text[start:] if end < 0 else text[start:end]


def test_report_content(run_dir):
    path = build_report(run_dir)
    assert path == run_dir / "report.md"
    text = path.read_text()
    assert text.startswith("# ") and "unit-sweep" in text.splitlines()[0]
    assert "**Warning: shortened run (epochs capped at 2; a shortened run)" in text
    assert "proxy for the official" in text
    assert "NVIDIA H200 x2" in text
    tried = _section(text, "What was tried")
    # One line per kind of change; every decided variant is counted once, kept or not.
    rows = [l for l in tried.splitlines() if l.startswith("| ") and not l.startswith("| Change")]
    decided = decide(pd.read_parquet(run_dir / "results.parquet")).dropna(subset=["axis"])
    assert rows and sum(int(l.split("|")[2]) for l in rows) == (decided["decision"] != UNJUDGED).sum()

    brief = _section(text, "The brief's table")
    ids = [line.split("|")[1].strip() for line in brief.splitlines() if line.startswith("| ")][1:]
    assert ids == BRIEF_IDS
    assert "| ID | Variant | Acc. (%) | Mean lat. (ms) | p95 lat. (ms) | Size (MB) |" in brief
    assert brief.count("not in this sweep") == 4
    b1 = next(line for line in brief.splitlines() if line.startswith("| B1 "))
    assert "86.00" in b1 and "1.050" in b1 and "1.200" in b1  # median of mean / p95 over the 3 repeats

    chosen = _section(text, "Chosen model")
    assert "**`mb-fp16`" in chosen  # fastest at >= 85%, although mb-fp16-graph (84%) is faster
    assert "Runner-up: `mb-fp16-cl`" in chosen
    assert "under the bar: `mb-fp16-graph`" in chosen

    dec = _section(text, "Decisions (keep / drop)")
    assert "| `mb-fp16` | mb-fp32 | precision: fp32 -> fp16 |" in dec
    assert "drop (no measurable gain)" in dec and "drop (accuracy)" in dec

    every = _section(text, "All variants")
    for vid in ["mb-fp32", "rn-fp16-compile", "mb-int8"]:
        assert f"`{vid}`" in every
    assert "RuntimeError: inductor exploded" in every and "Traceback" not in every
    assert "int8 is not supported on this device" in every

    train = _section(text, "Training")
    assert "| mbv3 |" in train and "| 2/2 |" in train and "85.00" in train

    for png in ["acc_vs_latency.png", "latency_by_variant.png"]:
        assert (run_dir / png).stat().st_size > 1000
        assert f"]({png})" in text
    env = _section(text, "Environment")
    assert "distinct GPU UUIDs: 2" in env and "cuda_event" in env and "200" in env


def test_decide_directly(run_dir):
    results = pd.read_parquet(run_dir / "results.parquet")
    d = decide(results).set_index("variant_id")
    assert d.loc["mb-fp16", "decision"] == "keep"
    assert d.loc["mb-fp16", "gain_ms"] == pytest.approx(0.30)
    assert d.loc["mb-fp16", "noise_ms"] == pytest.approx(0.02)
    assert d.loc["mb-fp16-cl", "parent_id"] == "mb-fp16"
    assert d.loc["mb-fp16-cl", "decision"] == "drop (no measurable gain)"
    assert d.loc["mb-fp16-graph", "parent_id"] == "mb-fp16"
    assert d.loc["mb-fp16-graph", "decision"] == "drop (accuracy)"
    assert d.loc["mb-fp16-graph", "acc_delta_pts"] == pytest.approx(-1.9)
    assert d.loc["mb-fp32", "decision"].startswith("baseline")
    assert "rn-fp16-compile" not in d.index and "mb-int8" not in d.index  # only ok variants are judged


def test_slower_and_parent_order():
    rows = [_row("a", None, "m", "fp32", "contiguous", "none", False, 90.0, i, p) for i, p in
            enumerate([1.0, 1.01, 1.0])]
    rows += [_row("b", None, "m", "fp32", "channels_last", "none", False, 90.0, i, p) for i, p in
             enumerate([1.5, 1.51, 1.5])]
    d = decide(pd.DataFrame(rows)).set_index("variant_id")
    assert d.loc["b", "decision"] == "slower"
    # bn_fold is the last axis applied, so it is the one undone first.
    key, axis = parent_key(pd.Series(dict(model="m", precision="fp16", memory_format="channels_last",
                                          compile="default", cuda_graph=True, bn_fold=True)))
    # (tta is stacked after bn_fold; a row without the column counts as tta "none")
    assert axis == "bn_fold" and key == ("m", "none", False, True, "default", "channels_last", "fp16")


def test_empty_results(tmp_path):
    write_rows([], tmp_path / "results.parquet")
    write_rows([], tmp_path / "training.parquet", TRAINING_SCHEMA)
    text = build_report(tmp_path).read_text()  # no sweep.json either
    assert "Nothing finished" in text
    assert text.count("not in this sweep") == 6
    assert "No plots" in text and not (tmp_path / "acc_vs_latency.png").exists()
    assert decide(pd.read_parquet(tmp_path / "results.parquet")).empty


def test_all_errors_on_cpu(tmp_path):
    rows = [r for r in _result_rows() if r["status"] != "ok"]
    rows[0]["device"] = "cpu"
    write_rows(rows, tmp_path / "results.parquet")
    out = tmp_path / "out"
    text = build_report(tmp_path, out_dir=out).read_text()  # training.parquet missing too
    assert (out / "report.md").exists()
    assert "Nothing finished" in text and "2 variant(s) errored or were skipped" in text
    assert "CPU only: latencies are CPU timings, not GPU latency" in text
    assert "No variant reached the 85.0% accuracy bar" in text
    assert "inductor exploded" in text


def test_a_variant_whose_parent_was_not_measured_is_neither_kept_nor_dropped(run_dir):
    # mb-fp16 missing: its children mb-fp16-cl and mb-fp16-graph have nothing to be judged against
    # (reports/h200-fused-narrow: 16 such rows were once counted "dropped / slower")
    rows = [r for r in _result_rows() if r["variant_id"] != "mb-fp16"]
    write_rows(rows, run_dir / "results.parquet")
    text = build_report(run_dir).read_text()
    assert _section(text, "Decisions").count(UNJUDGED) == 2
    assert "## What was tried" not in text  # nothing was judged, so nothing was tried and dropped
