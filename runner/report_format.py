"""Small shared helpers of the report modules: missing values, number / text cells with their 95% intervals,
markdown tables, the ok rows of a results frame."""
from __future__ import annotations

from typing import Any

import pandas as pd

DASH = "—"


def _missing(x: Any) -> bool:
    if x is None or (isinstance(x, str) and not x.strip()):
        return True
    try:
        return bool(pd.isna(x))
    except (TypeError, ValueError):  # lists / arrays are not missing
        return False


def _num(x: Any, nd: int = 2) -> str:
    return DASH if _missing(x) else f"{float(x):.{nd}f}"


def _txt(x: Any) -> str:
    return DASH if _missing(x) else str(x)


def _flag(x: Any) -> str:
    return DASH if _missing(x) else ("yes" if bool(x) else "no")


def markdown_table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    # A cell must stay on one line and must not open a new column.
    return ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)] + [
        "| " + " | ".join(str(c).replace("\n", " ").replace("|", "\\|") for c in r) + " |" for r in rows]


def _first_line(msg: Any, limit: int = 200) -> str:
    if _missing(msg) or not str(msg).strip():
        return "(no message)"
    line = str(msg).strip().splitlines()[0]
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _distinct(series: pd.Series) -> list[str]:
    # Integer columns with nulls arrive as floats: print 200, not 200.0.
    vals = {int(v) if isinstance(v, float) and v.is_integer() else v for v in series if not _missing(v)}
    return sorted(str(v) for v in vals)


def _ok(results: pd.DataFrame) -> pd.DataFrame:
    return results[results["status"] == "ok"]


def with_ci(r: pd.Series, col: str, nd: int = 3, scale: float = 1.0) -> str:
    """`col`'s value with its 95% interval, `3.420 [3.100, 3.900]` (runner/intervals.py: `lat_p95_ms` ->
    `lat_p95_lo_ms` / `lat_p95_hi_ms`), in the same number format; the plain value where the row has none."""
    v = r.get(col)
    if _missing(v):
        return DASH
    lo, hi = r.get(col.removesuffix("_ms") + "_lo_ms"), r.get(col.removesuffix("_ms") + "_hi_ms")
    text = f"{float(v) * scale:.{nd}f}"
    return text if _missing(lo) or _missing(hi) else f"{text} [{float(lo) * scale:.{nd}f}, {float(hi) * scale:.{nd}f}]"


def has_ci(frame: pd.DataFrame, col: str = "lat_p50_lo_ms") -> bool:
    """Does any row carry a 95% interval (a variant timed in too few slices has none)?"""
    return col in frame.columns and bool(frame[col].notna().any())


def ci_note(frame: pd.DataFrame) -> str:
    """The sentence that says what the brackets are, when any row has them."""
    if not has_ci(frame):
        return ""
    units = pd.to_numeric(frame.get("ci_units"), errors="coerce").dropna().astype(int).unique()
    n = f"{min(units)}-{max(units)}" if len(units) > 1 else (str(units[0]) if len(units) else "its")
    two = int((pd.to_numeric(frame.get("ci_processes"), errors="coerce") == 2).sum()) if "ci_processes" in frame else 0
    if two:  # runner/intervals.across_processes
        return (f" In brackets: the 95% interval for the value a fresh process would read, from two processes "
                f"({two} variants): each one's slices ({n} per variant, order statistics) for the within-process "
                f"error, the gap between the two, pooled over graphed or eager variants, for the between-process "
                f"one (runner/intervals.py); a value without brackets had too few slices for one.")
    return (f" In brackets: the 95% interval, distribution-free, from the order statistics of the statistic "
            f"taken per timing slice ({n} slices per variant; runner/intervals.py), one process: it does not "
            f"hold what changes between processes; a value without brackets had too few slices for one.")
