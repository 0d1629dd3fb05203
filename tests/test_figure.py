"""One accuracy-vs-latency figure a reader gets at a glance (issue 25): labels in words with units, the Pareto
front marked (one point as a marker, not a line), the legend outside the points, a log latency axis only
past a 10x span; the duplicate pareto.png gone; full skip reasons in a footnote. Real matplotlib and Parquet."""
from __future__ import annotations

import json

import pandas as pd

from runner import report_tables
from runner.plots import acc_vs_latency
from runner.report import build_report
from runner.results import summarize, write_rows


def _ok(points: list[tuple[str, float, float]]) -> pd.DataFrame:
    return pd.DataFrame({"variant_id": [p[0] for p in points], "model": [p[0].split("-")[0] for p in points],
                         "brief_id": "", "top1_pct": [p[1] for p in points], "lat_p95_ms": [p[2] for p in points]})


def _front_line(ax):
    return next(line for line in ax.get_lines() if str(line.get_label()).startswith("Pareto front"))


def test_a_one_point_front_is_a_marker_and_a_longer_one_a_line_and_the_axes_read_in_words(tmp_path):
    # every row at 9.40%: the fastest is the whole front (the quick CPU sweep's case)
    fig = acc_vs_latency(_ok([("mb-a", 9.4, 81.6), ("mb-b", 9.4, 35.6), ("rn-c", 9.4, 50.0)]), None, 85.0,
                         tmp_path / "one.png", cpu=True)
    ax = fig.axes[0]
    front = _front_line(ax)
    assert list(front.get_xdata()) == [35.6] and front.get_marker() == "D" and "one point" in front.get_label()
    assert ax.get_xscale() == "linear"  # 35.6 .. 81.6 ms: no decades to span
    assert "ms" in ax.get_xlabel() and "latency" in ax.get_xlabel() and "accuracy, %" in ax.get_ylabel()
    assert "lat_p95" not in ax.get_xlabel() and "top1" not in ax.get_ylabel()

    fig = acc_vs_latency(_ok([("a-1", 80.0, 0.1), ("a-2", 85.0, 1.0), ("b-3", 90.0, 20.0), ("b-4", 70.0, 30.0)]),
                         None, 85.0, tmp_path / "three.png", cpu=False)
    ax = fig.axes[0]
    assert list(_front_line(ax).get_xdata()) == [0.1, 1.0, 20.0] and ax.get_xscale() == "log"
    assert "log scale" in ax.get_xlabel()
    renderer = fig.canvas.get_renderer()  # the legend sits right of the axes: it covers no point
    assert ax.get_legend().get_window_extent(renderer).x0 >= ax.get_window_extent(renderer).x1


def _row(vid, status, rep=0, **kw):
    if status == "ok":  # as the actor writes an ok row: timed round-robin, here in one slice per repeat
        kw.update(timing_order="round-robin", timing_slices=1, slice_p50s_ms=json.dumps([kw["lat_p50_ms"]]))
    return dict(sweep="u", variant_id=vid, brief_id=kw.pop("bid", None), label=vid, model="m", precision="fp32",
                memory_format="contiguous", compile="none", cuda_graph=False, bn_fold=False, status=status,
                repeat=rep, device="cpu", timer="host", **kw)


REASON = ("CUDA graphs need a CUDA device: this variant captures the whole forward once and replays it, "
          "which a CPU cannot do")


def test_the_report_shows_one_figure_and_full_skip_reasons_in_footnotes(tmp_path):
    rows = [_row("m-a", "ok", r, bid="B1", top1_pct=90.0, lat_p95_ms=2.0 + r, lat_p50_ms=1.5, lat_mean_ms=1.6)
            for r in range(2)] + [_row("m-graph", "skipped", bid="O2", error=REASON)]
    write_rows(rows, tmp_path / "results.parquet")
    (tmp_path / "sweep.json").write_text(json.dumps({"name": "u"}))
    text = build_report(tmp_path).read_text()
    assert not (tmp_path / "pareto.png").exists() and "pareto.png" not in text  # it repeated acc_vs_latency
    assert text.count("(acc_vs_latency.png)") == 1 and (tmp_path / "acc_vs_latency.png").exists()
    brief = "\n".join(report_tables._brief_section(summarize(pd.read_parquet(tmp_path / "results.parquet"))))
    cell = next(line for line in brief.splitlines() if line.startswith("| O2 |"))
    assert "skipped: CUDA graphs need a CUDA device: this variant ... [^why1]" in cell  # cut at a word
    assert f"[^why1]: {REASON}" in brief and f"[^why1]: {REASON}" in text
