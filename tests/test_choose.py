"""The chosen model (runner/decisions.choose): accuracy bar first, then latency; a tie on accuracy never goes
to the slower variant, in the report and in `export` alike (issue 25). Real Parquet files, no Ray."""
from __future__ import annotations

import json

import pandas as pd

from runner import decisions, export
from runner.report import build_report
from runner.results import RESULT_SCHEMA, summarize, to_table, write_rows


def _row(vid: str, top1: float, p95: float, rep: int = 0) -> dict:
    return dict(sweep="unit", variant_id=vid, brief_id=None, label=vid, model="mbv3", arch="mbv3", precision="fp32",
                memory_format="contiguous", compile="none", cuda_graph=False, bn_fold=False, status="ok", repeat=rep,
                top1_pct=top1,
                lat_mean_ms=p95 * 0.9, lat_p50_ms=p95 * 0.8, lat_p95_ms=p95, host_p50_ms=p95 * 0.8, host_p95_ms=p95,
                device="cpu", timer="host", size_mb=6.0, config_json="{}", timing_order="round-robin",
                timing_slices=1, slice_p50s_ms=json.dumps([p95 * 0.8]))


# Every row at 9.40% (as on the quick CPU sweep that chose the 81.6 ms variant), listed slow first.
TIED = [("mb-bf16-cl", 9.40, 81.6), ("mb-fp32", 9.40, 35.6), ("mb-fp32-cl", 9.40, 50.2)]


def _run_dir(tmp_path, variants, bar=85.0):
    write_rows([_row(v, a, p, rep) for v, a, p in variants for rep in range(3)], tmp_path / "results.parquet")
    (tmp_path / "sweep.json").write_text(json.dumps({"name": "unit", "accuracy_bar_pct": bar}))
    return tmp_path


def test_a_tie_on_accuracy_under_the_bar_goes_to_the_fastest(tmp_path):
    run = _run_dir(tmp_path, TIED)
    pick = decisions.choose(summarize(pd.read_parquet(run / "results.parquet")), 85.0)
    assert pick["chosen"] is None and pick["most_accurate"]["variant_id"] == "mb-fp32"
    row, why = export.pick(run, None)  # what `export` writes without --variant
    assert row["variant_id"] == "mb-fp32" and "fastest" in why
    text = build_report(run).read_text()
    chosen = text[text.index("## Chosen model"):].split("\n## ")[0]
    assert "`mb-fp32`" in chosen and "mb-bf16-cl" not in chosen
    assert f"Rule: {decisions.RULE}." in chosen


def test_above_the_bar_latency_decides_and_a_more_accurate_one_does_not_win_by_accuracy():
    rows = [_row("slow-acc", 93.0, 40.0), _row("fast", 86.0, 20.0), _row("under", 80.0, 5.0),
            _row("fast-same", 87.0, 20.0)]
    s = summarize(to_table(rows, RESULT_SCHEMA).to_pandas())  # rows as a file of the schema reads back
    pick = decisions.choose(s, 85.0)
    # 20 ms twice: the tie on latency goes to the more accurate one; 93% at 40 ms loses on latency.
    assert pick["chosen"]["variant_id"] == "fast-same" and pick["runner_up"]["variant_id"] == "fast"
    assert pick["faster_under_bar"]["variant_id"] == "under"
    assert pick["most_accurate"]["variant_id"] == "slow-acc"
