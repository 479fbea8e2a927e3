"""Result tables: sorting rows best first, an aligned text table, a CSV file.

Rows are sequences of raw values in column order; how a value looks in the terminal is the caller's
`cell` function (the CSV keeps the raw values)."""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path
from typing import Any, Callable, Iterable, List, Sequence, TypeGuard, TypeVar

T = TypeVar("T")
Cell = Callable[[str, Any], str]


def is_number(value: Any) -> TypeGuard[float]:
    """A finite int or float (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def best_first(items: Iterable[T], score: Callable[[T], Any], mode: str) -> List[T]:
    """Items by `score` best first (`mode` max or min); those without a finite score last, in their order."""
    sign = -1.0 if mode == "max" else 1.0

    def key(item: T) -> tuple:
        value = score(item)
        return (0, sign * value) if is_number(value) else (1, 0.0)

    return sorted(items, key=key)  # stable: ties keep the caller's order


def plain_cell(column: str, value: Any) -> str:
    """A value as text: floats to 4 significant digits, None as empty."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def numeric_column(rows: Sequence[Sequence[Any]], index: int) -> bool:
    """Whether every value given in column `index` is a number (the table right-aligns it)."""
    values = [r[index] for r in rows if r[index] not in (None, "")]
    return bool(values) and all(isinstance(v, (int, float)) or re.fullmatch(r"-?[\d.e+-]+", str(v)) for v in values)


def format_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], cell: Cell = plain_cell) -> str:
    """Aligned plain-text table: a header, a dashed rule, one line per row; numbers right-aligned."""
    cells = [[cell(c, v) for c, v in zip(columns, row)] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    right = [numeric_column(rows, i) for i in range(len(columns))]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if r else v.ljust(w) for v, w, r in zip(values, widths, right)).rstrip()

    return "\n".join([line(columns), line(["-" * w for w in widths]), *(line(r) for r in cells)])


def write_csv(path: Path, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
    """The table with raw values (None as an empty field); creates the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        writer.writerows([["" if v is None else v for v in row] for row in rows])
    return path
