"""runner/pareto.py on synthetic frames: dominance, ties, NaNs, a single row, and the plot's parts."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from runner.plots import pareto_front, plot_pareto


def _df(rows):
    return pd.DataFrame(rows, columns=["name", "acc", "lat"])


def test_front_keeps_only_undominated_rows_sorted_by_latency():
    df = _df([("slow_good", 93.0, 0.20), ("fast_bad", 80.0, 0.03), ("dominated", 85.0, 0.10),
              ("mid", 88.0, 0.05), ("worse_than_mid", 87.0, 0.06)])
    front = pareto_front(df, "acc", "lat")
    assert list(front["name"]) == ["fast_bad", "mid", "slow_good"]
    assert list(front.index) == [1, 3, 0]  # the original rows, so callers can join back


def test_ties():
    df = _df([("a", 90.0, 0.05), ("a_twin", 90.0, 0.05),      # identical: neither dominates, both stay
              ("same_lat_worse", 89.0, 0.05),                  # same latency, less accurate: dominated
              ("same_acc_slower", 90.0, 0.07),                 # same accuracy, slower: dominated
              ("fastest", 70.0, 0.01)])
    front = pareto_front(df, "acc", "lat")
    assert list(front["name"]) == ["fastest", "a", "a_twin"]


def test_nan_rows_are_ignored_not_winning():
    df = _df([("nan_lat", 99.0, math.nan), ("nan_acc", math.nan, 0.001), ("ok", 80.0, 0.05),
              ("better", 85.0, 0.04)])
    front = pareto_front(df, "acc", "lat")
    assert list(front["name"]) == ["better"]


def test_single_row_and_empty():
    assert list(pareto_front(_df([("only", 50.0, 1.0)]), "acc", "lat")["name"]) == ["only"]
    assert pareto_front(_df([]), "acc", "lat").empty
    assert pareto_front(_df([("x", math.nan, math.nan)]), "acc", "lat").empty


def test_front_matches_brute_force_on_random_frames():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(1, 40))
        # Coarse values so that ties happen often.
        df = pd.DataFrame({"acc": rng.integers(80, 90, n).astype(float), "lat": rng.integers(1, 10, n) / 100})
        front = set(pareto_front(df, "acc", "lat").index)
        for i, r in df.iterrows():
            dominated = any((o.acc >= r.acc and o.lat <= r.lat and (o.acc > r.acc or o.lat < r.lat))
                            for _, o in df.iterrows())
            assert (i in front) == (not dominated)


def test_plot_draws_points_front_labels_and_bars(tmp_path):
    df = _df([("slow_good", 93.0, 0.20), ("fast_bad", 80.0, 0.03), ("dominated", 85.0, 0.10),
              ("mid", 88.0, 0.05), ("nan", math.nan, 0.04)])
    fig = plot_pareto(df, "acc", "lat", label_col="name", lat_scale=1000, lat_unit="us", acc_bars=(85.0, 90.0))
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_xlabel() == "lat (us, log scale)"
    labels = sorted(t.get_text() for t in ax.texts)
    assert labels == ["85%", "90%", "fast_bad", "mid", "slow_good"]  # front points only, and the bars
    hlines = [ln for ln in ax.lines if ln.get_linestyle() == "--"]
    assert sorted(ln.get_ydata()[0] for ln in hlines) == [85.0, 90.0]
    step = next(ln for ln in ax.lines if ln.get_label() == "Pareto front")
    assert step.get_drawstyle() == "steps-post"
    np.testing.assert_allclose(step.get_xdata(), [30.0, 50.0, 200.0])  # ms -> us
    points = ax.collections[0].get_offsets()
    assert len(points) == 4  # every measured row with both numbers
    fig.canvas.draw()
    ticks = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    assert "50" in ticks and "100" in ticks  # plain numbers on the log axis
    out = tmp_path / "pareto.png"
    fig.savefig(out)
    assert out.stat().st_size > 1000


def test_plot_of_an_empty_frame_still_draws():
    fig = plot_pareto(_df([("x", math.nan, 0.1)]), "acc", "lat", acc_bars=())
    assert fig.axes[0].get_xscale() == "log"


@pytest.mark.parametrize("col", ["acc", "lat"])
def test_missing_column_is_a_key_error(col):
    with pytest.raises(KeyError):
        pareto_front(_df([("a", 1.0, 1.0)]).drop(columns=[col]), "acc", "lat")
