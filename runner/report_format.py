"""Small shared helpers of the report modules: missing values, number / text cells, markdown tables,
the ok rows of a results frame."""
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


def _cell(x: Any) -> str:
    # A table cell must stay on one line and must not open a new column.
    return str(x).replace("\n", " ").replace("|", "\\|")


def markdown_table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows]
    return lines


def _first_line(msg: Any, limit: int = 200) -> str:
    if _missing(msg) or not str(msg).strip():
        return "(no message)"
    line = str(msg).strip().splitlines()[0]
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _distinct(series: pd.Series) -> list[str]:
    # Integer columns with nulls arrive as floats: print 200, not 200.0.
    vals = {int(v) if isinstance(v, float) and v.is_integer() else v for v in series if not _missing(v)}
    return sorted(str(v) for v in vals)


def _is_true(x: Any) -> bool:
    return not _missing(x) and bool(x)


def _ok(results: pd.DataFrame) -> pd.DataFrame:
    return results[results["status"] == "ok"]

