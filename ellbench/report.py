"""Tables (CSV, Markdown) and plots from the store, written atomically."""

from __future__ import annotations

import os
from pathlib import Path


def atomic_write(path: Path, text: str) -> None:
    """Write a whole file or nothing: a temporary sibling, then an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def format_cell(value, floatfmt: str = ".4f") -> str:
    if isinstance(value, float):
        return "" if value != value else format(value, floatfmt)
    return "" if value is None else str(value)


def markdown_table(frame, floatfmt: str = ".4f") -> str:
    """A GitHub-flavoured Markdown table of a DataFrame (pandas' to_markdown needs an extra package)."""
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(format_cell(v, floatfmt).replace("|", "\\|") for v in row) + " |"
            for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body]) + "\n"


def write_summary(out_dir: Path, rows: list[dict], *, title: str, print_table: bool = True) -> None:
    """summary.csv and summary.md for the demo: one row per model."""
    import pandas as pd

    frame = pd.DataFrame(rows)
    atomic_write(Path(out_dir) / "summary.csv", frame.to_csv(index=False))
    atomic_write(Path(out_dir) / "summary.md", f"# {title}\n\n{markdown_table(frame)}")
    if print_table:
        from rich.console import Console
        from rich.table import Table

        table = Table(*frame.columns, title=title)
        for record in frame.itertuples(index=False):
            table.add_row(*[format_cell(v) for v in record])
        Console().print(table)
