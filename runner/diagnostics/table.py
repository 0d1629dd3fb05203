"""The fixed-width console table of the diagnostics (crosscheck, exclusivity): header, rule, rows.

Columns are declared once, as (header, width, align); cells arrive already formatted as text, so each
check keeps its own number formats and the layout lives here. A row that is a plain string (an error
line) is printed as it is, under the same header.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence


class Column(NamedTuple):
    header: str
    width: int
    align: str = ">"   # ">" for numbers, "<" for names


def render(columns: Sequence[Column], rows: Sequence[Sequence[str] | str]) -> str:
    """The table as text (no trailing newline). A cell wider than its column is kept whole, never cut:
    a misaligned line is better than a wrong number."""
    def line(cells: Sequence[str]) -> str:
        return " ".join(f"{c:{col.align}{col.width}}" for col, c in zip(columns, cells)).rstrip()

    head = line([c.header for c in columns])
    out = [head, "-" * len(head)]
    for r in rows:
        if isinstance(r, str):
            out.append(r)
        elif len(r) != len(columns):
            raise ValueError(f"row has {len(r)} cells, the table {len(columns)} columns: {list(r)}")
        else:
            out.append(line(r))
    return "\n".join(out)


def print_table(columns: Sequence[Column], rows: Sequence[Sequence[str] | str]) -> None:
    print(render(columns, rows))
