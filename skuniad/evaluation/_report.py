"""What the results hold and how they read: metric keys and titles, tables, Markdown, files."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from skuniad._outputs import open_output, spreadsheet_safe
from skuniad.metrics import AUPRO_MAX_FPR

METRICS: tuple[str, ...] = (
    "image_auroc",
    "pixel_auroc",
    "aupro",
    "image_ap",
    "pixel_ap",
    "image_f1_max",
    "pixel_f1_max",
)
"""Metric keys of every category and of the mean, in table order."""

PIXEL_METRICS: tuple[str, ...] = ("pixel_auroc", "aupro", "pixel_ap", "pixel_f1_max")
"""The :data:`METRICS` that need masks: ``None`` for a category evaluated at image level only."""

IMAGE_SCORE_METRICS: tuple[str, ...] = ("image_auroc_max", "image_auroc_mean", "image_auroc_std")
"""Image AUROC of each of the reference's image scores; ``image_auroc`` is the detector's own."""

OPERATING_POINT_METRICS: tuple[str, ...] = (
    "image_precision",
    "image_recall",
    "image_f1",
    "image_false_alarm_rate",
    "pixel_precision",
    "pixel_recall",
    "pixel_f1",
    "pixel_false_alarm_rate",
    "recall_at_1pct_false_alarms",
    "recall_at_5pct_false_alarms",
)
"""What the model's own thresholds do (:func:`operating_point_metrics`): image level at
the image threshold (``predict``), pixel level at the pixel threshold (``predict_masks``);
then what the ranking allows: the image recall at 1 % and 5 % false alarms."""

ALL_METRICS = (*METRICS, *IMAGE_SCORE_METRICS, *OPERATING_POINT_METRICS)
"""Every metric key a category's row may hold, in table order."""


class Title(NamedTuple):
    """A report column's title, in full (Markdown, log lines) and short (terminal tables)."""

    full: str
    short: str


TITLES: dict[str, Title] = {
    "image_auroc": Title("Image AUROC", "I-AUROC"),
    "pixel_auroc": Title("Pixel AUROC", "P-AUROC"),
    "aupro": Title("AUPRO", "AUPRO"),
    "image_ap": Title("Image AP", "I-AP"),
    "pixel_ap": Title("Pixel AP", "P-AP"),
    "image_f1_max": Title("Image F1-max", "I-F1max"),
    "pixel_f1_max": Title("Pixel F1-max", "P-F1max"),
    "image_auroc_max": Title("Image AUROC (max)", "I-AUROC max"),
    "image_auroc_mean": Title("Image AUROC (mean)", "I-AUROC mean"),
    "image_auroc_std": Title("Image AUROC (std)", "I-AUROC std"),
    "image_precision": Title("Image precision", "I-prec"),
    "image_recall": Title("Image recall", "I-recall"),
    "image_f1": Title("Image F1", "I-F1"),
    "image_false_alarm_rate": Title("Image false alarms", "I-false alarms"),
    "pixel_precision": Title("Pixel precision", "P-prec"),
    "pixel_recall": Title("Pixel recall", "P-recall"),
    "pixel_f1": Title("Pixel F1", "P-F1"),
    "pixel_false_alarm_rate": Title("Pixel false alarms", "P-false alarms"),
    "recall_at_1pct_false_alarms": Title("Recall at 1 % false alarms", "R@1%FA"),
    "recall_at_5pct_false_alarms": Title("Recall at 5 % false alarms", "R@5%FA"),
    "paper_image_auroc": Title("Paper image AUROC", "paper I"),
    "paper_pixel_auroc": Title("Paper pixel AUROC", "paper P"),
    "delta_image": Title("Δ image", "Δ I"),
    "delta_pixel": Title("Δ pixel", "Δ P"),
}
"""The title of every column of the reports (:func:`results_table`,
:func:`operating_point_table`): the metrics, then the paper's columns."""

METRIC_NAMES: dict[str, str] = {key: TITLES[key].full for key in ALL_METRICS}
"""The metrics' full titles (a view of :data:`TITLES`)."""

COLUMN_TITLES: dict[str, str] = {key: title.full for key, title in TITLES.items()}
"""Every column's full title (a view of :data:`TITLES`)."""


def percent(value: float | None) -> str:
    """A metric in % with one decimal; ``n/a`` for one that was not computed."""
    return "n/a" if value is None else f"{100 * value:.1f}"


def _score_columns(results: dict[str, Any]) -> list[str]:
    """The image-score AUROCs the results have, the detector's own first."""
    present = [k for k in IMAGE_SCORE_METRICS if k in results["mean"]]
    first = f"image_auroc_{results.get('image_score', 'max')}"
    return sorted(present, key=lambda k: k != first)  # stable: the others keep their order


def _named_rows(results: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], Any]]:
    """``(name, row, spread)`` of every category, then of the mean; no spread with one seed."""
    std = results.get("std")
    for name, row in results["categories"].items():
        yield name, row, None if std is None else std["categories"][name]
    yield "mean", results["mean"], None if std is None else std["mean"]


def _cells(row: dict[str, Any], spread: dict[str, Any] | None, keys: list[str]) -> list[str]:
    """The ``keys`` of ``row`` in %, each ``± std`` where ``spread`` has one."""
    return [
        percent(row[k])
        + ("" if spread is None or spread[k] is None else f" ± {100 * spread[k]:.1f}")
        for k in keys
    ]


def _paper_cells(row: dict[str, Any], theirs: dict[str, float] | None) -> list[str]:
    """The paper's image and pixel AUROC, then ours minus theirs; blank where it has none."""
    keys = ("image_auroc", "pixel_auroc")
    if theirs is None:
        return ["", "", "", ""]
    deltas = ["" if row[k] is None else f"{100 * row[k] - theirs[k]:+.1f}" for k in keys]
    return [f"{theirs[k]:.1f}" for k in keys] + deltas


def results_table(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Column keys and rows (categories, then ``mean``) of the report, values in %.

    With several seeds a cell reads ``mean ± std``. Where the paper reports
    a category, the paper's image and pixel AUROC and the differences
    (ours - paper) follow.
    """
    keys = [*METRICS, *_score_columns(results)]
    paper = results.get("paper") or {}
    rows = [
        [name, *_cells(row, spread, keys), *(_paper_cells(row, paper.get(name)) if paper else [])]
        for name, row, spread in _named_rows(results)
    ]
    columns = list(keys)
    if paper:
        columns += ["paper_image_auroc", "paper_pixel_auroc", "delta_image", "delta_pixel"]
    return columns, rows


def operating_point_table(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Columns and rows (categories, then ``mean``) of :data:`OPERATING_POINT_METRICS`, in %.

    Empty when the results have none (a detector without thresholds).
    """
    first = next(iter(results["categories"].values()))
    keys = [k for k in OPERATING_POINT_METRICS if k in first]
    if not keys:
        return [], []
    return keys, [[name, *_cells(row, spread, keys)] for name, row, spread in _named_rows(results)]


def results_markdown(results: dict[str, Any], title: str = "skuniad evaluation") -> str:
    """A Markdown report: optional run details, then one row per category and the mean.

    Values are percentages with one decimal, as in the UniAD paper, ``± std``
    over seeds when there are several. Keys of ``results["run"]`` (if
    present) are listed above the table.
    """
    lines = [f"# {title}", ""]
    for key, value in results.get("run", {}).items():
        lines.append(f"- {key}: {value}")
    if results.get("run"):
        lines.append("")
    columns, rows = results_table(results)
    header = ["Category", *(TITLES[k].full for k in columns), "Images", "Anomalous"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
    for name, *cells in rows:
        source = results["categories"].get(name)
        counts = (
            [str(results["n_images"]), str(results["n_anomalous"])]
            if source is None
            else [str(source["n_images"]), str(source["n_anomalous"])]
        )
        if source is None:
            name, cells = f"**{name}**", [f"**{c}**" if c else c for c in cells]
        lines.append("| " + " | ".join([name, *cells, *counts]) + " |")
    op_columns, op_rows = operating_point_table(results)
    if op_columns:
        lines += ["", "At the model's own thresholds:", ""]
        header = ["Category", *(TITLES[k].full for k in op_columns)]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join(["---"] + ["---:"] * len(op_columns)) + "|")
        for name, *cells in op_rows:
            if name not in results["categories"]:
                name, cells = f"**{name}**", [f"**{c}**" for c in cells]
            lines.append("| " + " | ".join([name, *cells]) + " |")
    seeds = results.get("seeds") or []
    notes = [
        f"Metrics in %, at model resolution ({results['image_size']} x {results['image_size']}); "
        f"AUPRO integrated to FPR {AUPRO_MAX_FPR:g}; the mean is over categories.",
    ]
    if results.get("image_level_only"):
        names = ", ".join(results["image_level_only"])
        notes.append(
            f"Image level only (no masks, pixel metrics n/a): {names}; the pixel means are "
            "over the other categories."
        )
    if len(seeds) > 1:
        notes.append(f"Mean ± sample standard deviation over {len(seeds)} seeds ({seeds}).")
    if op_columns:
        notes.append(
            "At the model's own thresholds: images above the image threshold (their "
            "category's own when the model has one) and pixels above the pixel threshold "
            "count as anomalous; false alarms = share of good images (normal pixels) flagged. "
            "Recall at 1 % / 5 % false alarms: the share of defective images above the lowest "
            "threshold that flags at most that share of the good ones, on these images."
        )
    calibration = results.get("calibration")
    if calibration:
        target = "" if calibration["target"] is None else f", target {calibration['target']:g}"
        notes.append(
            f"Thresholds calibrated per category on {calibration['images_per_class']} defective "
            f"and {calibration['images_per_class']} good test images drawn with the seed "
            f"(objective {calibration['objective']}{target}); those images are left out of "
            "every metric above."
            + (
                " F1 aimed at each category's share of defective images among those reported."
                if calibration["objective"] == "f1"
                else ""
            )
        )
    if "setting" in results:
        notes.append(f"Setting: {results['setting']}; image score: {results['image_score']}.")
    if results.get("paper"):
        from skuniad.paper import SOURCE

        notes.append(f"Paper columns: {SOURCE}; Δ = ours - paper.")
    lines += ["", *notes, ""]
    return "\n".join(lines)


RESULTS_SCHEMA_VERSION = 1
"""Version of the ``results.json`` layout (``schema_version`` in the file)."""


def write_results(results: dict[str, Any], output_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write ``results.json``, ``results.md`` and ``scores.csv`` into ``output_dir``.

    ``results.json`` is ``results`` with a ``schema_version`` and without
    the per-image rows, which go to ``scores.csv`` (``path``, ``category``,
    ``label`` 1 = anomalous, ``score`` higher = more anomalous, and
    ``seed`` for experiments). The folder is created if missing.

    Returns
    -------
    (json_path, markdown_path)
    """
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    document = {"schema_version": RESULTS_SCHEMA_VERSION, **results}
    rows = document.pop("images", [])
    if "runs" in document:
        document["runs"] = [dict(run) for run in document["runs"]]
        for run in document["runs"]:
            rows += run.pop("images", [])
    if rows:
        with open_output(folder / "scores.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(
                {k: spreadsheet_safe(v) if isinstance(v, str) else v for k, v in row.items()}
                for row in rows
            )
    json_path = folder / "results.json"
    with open_output(json_path) as f:
        f.write(json.dumps(document, indent=2) + "\n")
    md_path = folder / "results.md"
    with open_output(md_path) as f:
        f.write(results_markdown(results))
    return json_path, md_path
