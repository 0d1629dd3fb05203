"""The report's accuracy-vs-latency plot (labelled log ticks, non-overlapping labels, CPU marked as such)
and the header's wall time over resumed invocations; real Parquet files and real matplotlib, no Ray."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from runner.plots import acc_vs_latency, log_ticks, pareto_mask
from runner.report import build_report
from runner.results import write_rows


@pytest.mark.parametrize("lo,hi", [(0.13, 6.5), (0.137, 0.141), (0.05, 500.0), (2.0, 9.0), (1.0, 1.0001)])
def test_log_ticks_label_the_range(lo, hi):
    ticks = log_ticks(lo, hi)
    assert len(ticks) >= 2 if hi / lo > 1.001 else len(ticks) >= 1
    assert all(lo * 0.999 <= t <= hi * 1.001 for t in ticks)
    labels = [f"{t:g}" for t in ticks]
    assert len(set(labels)) == len(labels) and ticks == sorted(ticks)


def test_pareto_mask_keeps_only_undominated_points():
    lat = pd.Series([1.0, 2.0, 0.5, 3.0, 1.0])
    acc = pd.Series([90.0, 95.0, 80.0, 94.0, 85.0])
    # 3.0/94 is beaten by 2.0/95; 1.0/85 by 1.0/90
    assert pareto_mask(lat, acc).tolist() == [True, True, True, False, False]


def _ok_frame(n: int = 30) -> pd.DataFrame:
    """Many variants crowded together: the case where labels used to overlap."""
    rng = np.random.default_rng(0)
    lat = np.exp(rng.uniform(np.log(0.12), np.log(7.0), n))
    return pd.DataFrame({"variant_id": [f"model{i % 3}-variant-with-a-long-id-{i}" for i in range(n)],
                         "brief_id": [("B1" if i == 0 else "") for i in range(n)],
                         "model": [f"model{i % 3}" for i in range(n)], "lat_p95_ms": lat,
                         "top1_pct": 80 + 10 * rng.random(n)})


def test_plot_labels_every_tick_numbers_the_front_and_nothing_overlaps(tmp_path):
    ok = _ok_frame()
    fig = acc_vs_latency(ok, ok.iloc[0], 85.0, tmp_path / "p.png", cpu=True)
    assert (tmp_path / "p.png").stat().st_size > 0
    ax = fig.axes[0]
    assert "CPU timings" in ax.get_title() and "CPU timings" in ax.get_xlabel()
    renderer = fig.canvas.get_renderer()
    lo, hi = ax.get_xlim()
    shown = [t for t in ax.get_xticklabels() if lo <= t.get_position()[0] <= hi]
    assert len(shown) >= 3 and all(t.get_text() for t in shown)            # every major tick has a label
    notes = [c for c in ax.texts]
    assert len(notes) == int(pareto_mask(ok["lat_p95_ms"], ok["top1_pct"]).sum()) < len(ok)
    boxes = [t.get_window_extent(renderer) for t in notes]
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "1: " + ok.loc[ok["lat_p95_ms"].idxmin(), "variant_id"] in " ".join(legend)


def test_gpu_rows_are_not_called_cpu_timings(tmp_path):
    fig = acc_vs_latency(_ok_frame(5), None, 85.0, tmp_path / "p.png", cpu=False)
    assert "CPU" not in fig.axes[0].get_title()


def _run_folder(tmp_path, sweep: dict):
    rows = [dict(sweep="s", variant_id=f"m-v{i}", model="m", precision="fp32", memory_format="contiguous",
                 compile="none", cuda_graph=False, bn_fold=False, status="ok", repeat=r, top1_pct=86.0 + i,
                 lat_mean_ms=1.0 + i, lat_p50_ms=1.0 + i, lat_p95_ms=1.1 + i, timer="host", device="cpu",
                 timing_order="round-robin", timing_slices=1, slice_p50s_ms=json.dumps([1.0 + i]))
            for i in range(3) for r in range(2)]
    write_rows(rows, tmp_path / "results.parquet")
    (tmp_path / "sweep.json").write_text(json.dumps(sweep))
    return build_report(tmp_path).read_text()


def test_header_sums_the_wall_time_of_resumed_invocations(tmp_path):
    text = _run_folder(tmp_path, {"name": "s", "started_at": "2026-01-01T10:00:00", "wall_s": 9.0,
                                  "previous_runs": [{"wall_s": 250.0}, {"wall_s": 41.0}],
                                  "cluster": {"gpus": 0, "nodes": 1}})
    header = text.split("\n## ")[0]
    assert "wall time 300 s (5.0 min) over 3 invocations (this one 9 s)" in header
    one = _run_folder(tmp_path, {"name": "s", "wall_s": 120.0})
    assert "wall time 120 s (2.0 min)." in one.split("\n## ")[0] and "invocations" not in one.split("\n## ")[0]
