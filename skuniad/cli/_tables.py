"""The rich tables the commands print: results, and what the model's own thresholds do."""

from __future__ import annotations

from typing import Any


def print_results(results: dict[str, Any]) -> None:
    """The threshold-free metrics per category, then the operating point's (if any)."""
    from skuniad.evaluation import operating_point_table, results_table

    seeds = results.get("seeds") or []
    caption = "I = image level, P = pixel level; mean over categories"
    if len(seeds) > 1:
        caption += f"; mean ± std over {len(seeds)} seeds"
    title = f"Results (%) at {results['image_size']} px"
    print_table(title, caption, *results_table(results), column_width=11)
    columns, rows = operating_point_table(results)
    if columns:
        caption = (
            "false alarms: good images (normal pixels) flagged; per-category thresholds "
            "where the model has them"
        )
        title = "At the model's own thresholds (%)"
        print_table(title, caption, columns, rows, column_width=13)


def print_table(
    title: str, caption: str, columns: list[str], rows: list[list[str]], *, column_width: int
) -> None:
    """One row per category under the metrics' short titles; the last row, the mean, in bold."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from skuniad.evaluation import TITLES

    table = Table(title=title, caption=caption, box=box.SIMPLE_HEAD)
    table.add_column("Category", no_wrap=True)
    for key in columns:
        table.add_column(TITLES[key].short, justify="right", no_wrap=True)
    for name, *cells in rows[:-1]:
        table.add_row(name, *cells)
    table.add_section()
    table.add_row(*rows[-1], style="bold")
    Console(width=max(120, column_width * len(columns) + 16)).print(table)
