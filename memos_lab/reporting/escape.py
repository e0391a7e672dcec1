"""Text from run folders made inert: a run folder may come from anyone, so every string read from it
reaches report.md escaped (or as a code span) and runs.csv / table.csv without a formula.

tabulate and pandas escape neither Markdown nor CSV formulas, hence these few functions."""

from __future__ import annotations

import re
from typing import Any

import pandas as pd

MAX_SHOWN = 300  # characters of one value in report.md (runs.csv keeps it whole)
# Line breaks of any kind (a newline would start a heading or end a table row) and other control characters.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# CommonMark's inline markup (emphasis, code, links, images, raw HTML, escapes) and the GFM table separator;
# block markup (headings, lists) needs a line start, which one_line removes.
_MARKDOWN = re.compile(r"[\\`*\[\]<>|]|(?<![^\W_])_|_(?![^\W_])")  # an "_" inside a word cannot emphasise
# OWASP, CSV injection: a cell starting with one of these may run as a formula in a spreadsheet.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def one_line(text: str, limit: int | None = None) -> str:
    """`text` on one line: control characters written as escapes (a newline as \\n); cut at `limit`."""
    flat = _CONTROL.sub(lambda match: match.group().encode("unicode_escape").decode("ascii"), text)
    return flat if limit is None or len(flat) <= limit else flat[: limit - 1] + "…"


def md_text(value: Any) -> str:
    """`value` as Markdown text that renders as exactly these characters, on one line, safe in a table cell."""
    return _MARKDOWN.sub(lambda match: "\\" + match.group(), one_line(str(value), MAX_SHOWN))


def md_code(value: Any, in_table: bool = False) -> str:
    """`value` as a Markdown code span: delimited by more backticks than it holds, its pipes escaped inside a
    table (GFM splits cells before reading code spans)."""
    text = one_line(str(value), MAX_SHOWN)
    fence = "`" * (max((len(run) for run in re.findall("`+", text)), default=0) + 1)
    if text.startswith("`") or text.endswith("`"):
        text = f" {text} "  # CommonMark strips one space each side when both are there
    if in_table:
        text = text.replace("|", "\\|")
    return f"{fence}{text}{fence}"


def csv_cell(value: Any) -> Any:
    """A CSV cell a spreadsheet will not run: text starting like a formula gets a leading ' (numbers pass)."""
    if isinstance(value, str) and value.startswith(FORMULA_START) and not _NUMBER.fullmatch(value):
        return "'" + value
    return value


def csv_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with every text cell and column name through `csv_cell`."""
    return frame.map(csv_cell).rename(columns=csv_cell)


def md_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with every cell and column name through `md_text`, for tabulate."""
    return frame.map(md_text).rename(columns=md_text)
