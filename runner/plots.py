"""The accuracy-vs-latency Pareto front and its plots, and the figure helper every report plot uses.

    front = pareto_front(df, "top1_pct", "lat_p95_ms")
    fig = plot_pareto(df, "top1_pct", "lat_p95_ms", label_col="variant_id", lat_scale=1000, lat_unit="us")

The plot must stay readable with dozens of variants whose latencies span decades or only a few percent:
every major tick of the log axis is labelled (ticks chosen from 1-2-5 or finer steps to fit the range),
only the Pareto-best points (nothing else is both faster and more accurate) carry a marker number, and
the numbers are spelled out in the legend, so no two labels sit on top of each other. CPU rows say so
in the title: their latencies are CPU timings, not GPU latency.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from runner import files
from variants.spec import ACCURACY_BAR_PCT

# Candidate tick mantissas per decade, coarse to fine; the first that gives at least 3 ticks is used.
TICK_STEPS = ((1.0,), (1.0, 2.0, 5.0), (1.0, 1.5, 2.0, 3.0, 5.0, 7.0), tuple(np.arange(1.0, 10.0, 0.5)))


def figure(size: tuple[float, float]):
    """A Figure on an Agg canvas: no pyplot global state or backend (headless workers, tests), no display;
    matplotlib imported only here, so that reading results never pays for it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    return fig


def log_ticks(lo: float, hi: float) -> list[float]:
    """Tick values for a log axis over [lo, hi] (lo > 0): at least 2, each one printable with %g."""
    if hi <= lo:
        return [float(f"{lo:.3g}")]
    for steps in TICK_STEPS:
        ticks = [m * 10.0 ** e for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
                 for m in steps]
        inside = sorted({float(f"{t:.3g}") for t in ticks if lo <= t <= hi})
        if len(inside) >= 3:
            return inside
    # A range narrower than any step (e.g. 0.137..0.141 ms): three evenly spaced, rounded values.
    return sorted({float(f"{t:.3g}") for t in np.geomspace(lo, hi, 3)})


def pareto_mask(latency: pd.Series, accuracy: pd.Series) -> np.ndarray:
    """True where no other point is at least as fast and as accurate, and better in one of the two. n x n is
    fine for the few hundred rows of a sweep and obviously right for ties (identical points all stay)."""
    lat, acc = latency.to_numpy(float), accuracy.to_numpy(float)
    better_or_equal = (lat[None, :] <= lat[:, None]) & (acc[None, :] >= acc[:, None])
    strictly = (lat[None, :] < lat[:, None]) | (acc[None, :] > acc[:, None])
    return ~(better_or_equal & strictly).any(axis=1)


def pareto_front(df: pd.DataFrame, acc_col: str, lat_col: str) -> pd.DataFrame:
    """The rows pareto_mask keeps (rows with NaN in either column left out), sorted by latency, then
    accuracy descending."""
    valid = df[df[acc_col].notna() & df[lat_col].notna()]
    front = valid[pareto_mask(valid[lat_col], valid[acc_col])]
    return front.iloc[np.lexsort((-front[acc_col].to_numpy(float), front[lat_col].to_numpy(float)))]


def ci_errors(df: pd.DataFrame, col: str, scale: float = 1.0) -> np.ndarray | None:
    """Error-bar lengths [below, above] of `col` from its 95% interval columns (`lat_p95_ms` ->
    `lat_p95_lo_ms` / `lat_p95_hi_ms`); 0 for rows without one; None when no row has one."""
    base = col.removesuffix("_ms")
    lo_col, hi_col = f"{base}_lo_ms", f"{base}_hi_ms"
    if lo_col not in df or hi_col not in df or df[lo_col].isna().all():
        return None
    v = df[col].to_numpy(float)
    lo = (v - pd.to_numeric(df[lo_col], errors="coerce").to_numpy(float)) * scale
    hi = (pd.to_numeric(df[hi_col], errors="coerce").to_numpy(float) - v) * scale
    return np.vstack([np.nan_to_num(lo).clip(min=0), np.nan_to_num(hi).clip(min=0)])


def acc_vs_latency(ok: pd.DataFrame, chosen: pd.Series | None, bar: float, path: Path, *, cpu: bool):
    """Top-1 vs p95 per ok variant (one colour per model; horizontal bars: its 95% interval where the rows
    carry one), the Pareto front marked (a line through it when it has two points or more), its points
    numbered in the legend (outside the axes, so it hides no point); log latency axis past a 10x span."""
    from matplotlib.ticker import FixedLocator, FormatStrFormatter, NullFormatter
    fig = figure((10, 5.5))
    ax = fig.add_subplot()
    for i, (model, g) in enumerate(ok.groupby("model", sort=True)):
        ax.scatter(g["lat_p95_ms"], g["top1_pct"], label=str(model), s=40, alpha=0.85, color=f"C{i % 10}")
        xerr = ci_errors(g, "lat_p95_ms")
        if xerr is not None:  # the 95% interval of each p95 (runner/intervals.py), where the rows have one
            ax.errorbar(g["lat_p95_ms"], g["top1_pct"], xerr=xerr, fmt="none", ecolor=f"C{i % 10}", alpha=0.6,
                        capsize=2, lw=1)
    front = pareto_front(ok, "top1_pct", "lat_p95_ms")
    # The best accuracy reachable within a latency budget is flat between front points: a post step.
    ax.plot(front["lat_p95_ms"], front["top1_pct"], drawstyle="steps-post", color="black", lw=1, zorder=1,
            marker="D", markersize=9, markerfacecolor="none", label="Pareto front: nothing both faster and "
            "more accurate" if len(front) > 1 else "Pareto front (one point: it is fastest and most accurate)")
    for i, (_, r) in enumerate(front.iterrows(), start=1):
        # alternate above / below: neighbours on the front are often a few us apart (folded vs unfolded)
        ax.annotate(str(i), (r["lat_p95_ms"], r["top1_pct"]), textcoords="offset points",
                    xytext=(4, 4) if i % 2 else (4, -13), fontsize=9, fontweight="bold")
        brief = f" ({r['brief_id']})" if isinstance(r.get("brief_id"), str) and r["brief_id"] else ""
        ax.plot([], [], " ", label=f"{i}: {r['variant_id']}{brief}")  # legend text only, no marker
    ax.axhline(bar, color="gray", ls="--", lw=1, label=f"bar {bar:.1f}%")
    if chosen is not None:
        ax.scatter([chosen["lat_p95_ms"]], [chosen["top1_pct"]], s=220, facecolors="none", edgecolors="red",
                   linewidths=2, label=f"chosen: {chosen['variant_id']}")
    lo, hi = float(ok["lat_p95_ms"].min()), float(ok["lat_p95_ms"].max())
    if "lat_p95_lo_ms" in ok and "lat_p95_hi_ms" in ok:  # room for the interval bars
        lo = min(lo, float(pd.to_numeric(ok["lat_p95_lo_ms"], errors="coerce").min(skipna=True) or lo))
        hi = max(hi, float(pd.to_numeric(ok["lat_p95_hi_ms"], errors="coerce").max(skipna=True) or hi))
    log = hi > 10 * lo  # a log axis only where latencies span decades; a linear one reads more plainly
    if log:
        ax.set_xscale("log")
        ax.set_xlim(lo / 1.15, hi * 1.15)
        ax.xaxis.set_major_locator(FixedLocator(log_ticks(lo / 1.15, hi * 1.15)))
        ax.xaxis.set_minor_formatter(NullFormatter())            # minor ticks unlabelled: they would overlap
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))  # 0.4, not 4x10^-1
    clock = "CPU timings, not GPU latency" if cpu else "GPU"
    ax.set_xlabel(f"p95 latency at batch 1, ms{', log scale' if log else ''} "
                  f"(median over repeats, bars 95% interval; {clock})")
    ax.set_ylabel("top-1 accuracy, %")
    ax.set_title("Accuracy vs latency (ok variants)" + (" - CPU timings" if cpu else "")
                 + "; numbers: the Pareto front")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    files.write_figure(fig, path)
    return fig


def plot_pareto(df: pd.DataFrame, acc_col: str, lat_col: str, *, label_col: str | None = None,
                lat_scale: float = 1.0, lat_unit: str = "ms", acc_bars: tuple[float, ...] = (ACCURACY_BAR_PCT, 90.0),
                title: str | None = None, ax=None):
    """All rows as points (log latency axis; a horizontal bar for the 95% interval of rows that carry
    `<lat_col>_lo_ms` / `_hi_ms`, runner/intervals.py), the front as a step line, labels on front points only, and a
    dashed line per accuracy bar. Returns the matplotlib Figure; `lat_scale` converts the column's unit
    (e.g. 1000 for ms -> us)."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    if ax is None:
        ax = figure((8, 5)).add_subplot()
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
