"""Shared by the benchmark scripts: rich tables to Markdown for docs/benchmarks.md."""

from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.text import Text


def to_markdown(table: Table) -> str:
    """A rich table as a Markdown table (markup stripped)."""

    def plain(cell: Any) -> str:
        return Text.from_markup(str(cell)).plain.replace("|", "\\|")

    headers = [plain(c.header) for c in table.columns]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for i in range(table.row_count):
        lines.append("| " + " | ".join(plain(c._cells[i]) for c in table.columns) + " |")
    return "\n".join(lines)
