"""The rich tables the commands print: results, and what the model's own thresholds do."""

from __future__ import annotations

from typing import Any


def print_results(results: dict[str, Any]) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from skuniad.evaluation import TITLES, results_table

    columns, rows = results_table(results)
    seeds = results.get("seeds") or []
    caption = "I = image level, P = pixel level; mean over categories"
    if len(seeds) > 1:
        caption += f"; mean ± std over {len(seeds)} seeds"
    table = Table(
        title=f"Results (%) at {results['image_size']} px", caption=caption, box=box.SIMPLE_HEAD
    )
    table.add_column("Category", no_wrap=True)
    for key in columns:
        table.add_column(TITLES[key].short, justify="right", no_wrap=True)
    for name, *cells in rows[:-1]:
        table.add_row(name, *cells)
    table.add_section()
    table.add_row(*rows[-1], style="bold")
    Console(width=max(120, 11 * len(columns) + 16)).print(table)
    print_operating_point(results)


def print_operating_point(results: dict[str, Any]) -> None:
    """What the model's own thresholds do, per category: a second table."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from skuniad.evaluation import TITLES, operating_point_table

    columns, rows = operating_point_table(results)
    if not columns:
        return
    table = Table(
        title="At the model's own thresholds (%)",
        caption="false alarms: good images (normal pixels) flagged; per-category thresholds "
        "where the model has them",
        box=box.SIMPLE_HEAD,
    )
    table.add_column("Category", no_wrap=True)
    for key in columns:
        table.add_column(TITLES[key].short, justify="right", no_wrap=True)
    for name, *cells in rows[:-1]:
        table.add_row(name, *cells)
    table.add_section()
    table.add_row(*rows[-1], style="bold")
    Console(width=max(120, 13 * len(columns) + 16)).print(table)
