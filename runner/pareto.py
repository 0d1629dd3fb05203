"""The accuracy-vs-latency Pareto front of a results table, and its plot.

    front = pareto_front(df, "top1_pct", "lat_p95_ms")
    fig = plot_pareto(df, "top1_pct", "lat_p95_ms", label_col="variant_id", lat_scale=1000, lat_unit="us")

Pure functions over a DataFrame (any columns; rows with NaN in either column are left out): the report
uses them to draw every measured variant and to name the model chosen from the front.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from variants.spec import ACCURACY_BAR_PCT


def pareto_front(df: pd.DataFrame, acc_col: str, lat_col: str) -> pd.DataFrame:
    """Rows no other row dominates (at least as accurate and at least as fast, strictly better in one),
    sorted by latency, then accuracy descending. Identical (accuracy, latency) rows are all kept."""
    valid = df[df[acc_col].notna() & df[lat_col].notna()]
    acc = valid[acc_col].to_numpy(dtype=float)
    lat = valid[lat_col].to_numpy(dtype=float)
    # dominated[i]: some j with acc_j >= acc_i, lat_j <= lat_i and one of them strict. n x n is fine for the
    # few hundred rows of a sweep and obviously right for ties.
    no_worse = (acc[None, :] >= acc[:, None]) & (lat[None, :] <= lat[:, None])
    better = (acc[None, :] > acc[:, None]) | (lat[None, :] < lat[:, None])
    dominated = (no_worse & better).any(axis=1)
    front = valid[~dominated]
    order = np.lexsort((-front[acc_col].to_numpy(dtype=float), front[lat_col].to_numpy(dtype=float)))
    return front.iloc[order]


def plot_pareto(df: pd.DataFrame, acc_col: str, lat_col: str, *, label_col: str | None = None,
                lat_scale: float = 1.0, lat_unit: str = "ms", acc_bars: tuple[float, ...] = (ACCURACY_BAR_PCT, 90.0),
                title: str | None = None, ax=None):
    """All rows as points (log latency axis; a horizontal bar for the 95% interval of rows that carry
    `<lat_col>_lo_ms` / `_hi_ms`, runner/intervals.py), the front as a step line, labels on front points only, and a
    dashed line per accuracy bar. Returns the matplotlib Figure; `lat_scale` converts the column's unit
    (e.g. 1000 for ms -> us)."""
    # Figure + Agg canvas, no pyplot: no global backend or figure state (headless workers, tests);
    # imported here so that reading results never pays for matplotlib.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, LogLocator

    from runner.plots import ci_errors

    if ax is None:
        fig = Figure(figsize=(8, 5))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    valid = df[df[acc_col].notna() & df[lat_col].notna()]
    front = pareto_front(valid, acc_col, lat_col)
    ax.scatter(valid[lat_col] * lat_scale, valid[acc_col], s=18, color="0.6", label="measured", zorder=2)
    xerr = ci_errors(valid, lat_col, lat_scale)
    if xerr is not None:  # each row's 95% interval (runner/intervals.py) where it has one
        ax.errorbar(valid[lat_col] * lat_scale, valid[acc_col], xerr=xerr, fmt="none", ecolor="0.6", lw=1,
                    capsize=2, zorder=2)
    if len(front):
        x, y = front[lat_col].to_numpy(dtype=float) * lat_scale, front[acc_col].to_numpy(dtype=float)
        # The best accuracy reachable at a latency budget is flat between front points: a post step.
        ax.step(x, y, where="post", color="C0", lw=1.5, label="Pareto front", zorder=3)
        ax.scatter(x, y, s=28, color="C0", zorder=4)
        if label_col is not None:
            for xi, yi, text in zip(x, y, front[label_col].astype(str)):
                ax.annotate(text, (xi, yi), xytext=(4, -10), textcoords="offset points", fontsize=7)
    for bar in acc_bars:
        ax.axhline(bar, color="C3", ls="--", lw=1, zorder=1)
        ax.annotate(f"{bar:g}%", (0, bar), xycoords=("axes fraction", "data"), xytext=(2, 2),
                    textcoords="offset points", color="C3", fontsize=8)
    ax.set_xscale("log")
    # Plain numbers on the log axis (20, 50, 100, ...), not powers of ten: latencies are read, not estimated.
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    # The column's own unit suffix would contradict lat_unit once scaled: lat_p95_ms -> "lat_p95 (us, ...)".
    ax.set_xlabel(f"{lat_col.removesuffix('_ms').removesuffix('_us')} ({lat_unit}, log scale)")
    ax.set_ylabel(acc_col)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig
