"""What the results hold and how they read: metric keys and titles, tables, Markdown, files."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

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
)
"""What the model's own thresholds do (:func:`operating_point_metrics`): image level at
the image threshold (``predict``), pixel level at the pixel threshold (``predict_masks``)."""

METRIC_NAMES: dict[str, str] = {
    "image_auroc": "Image AUROC",
    "pixel_auroc": "Pixel AUROC",
    "aupro": "AUPRO",
    "image_ap": "Image AP",
    "pixel_ap": "Pixel AP",
    "image_f1_max": "Image F1-max",
    "pixel_f1_max": "Pixel F1-max",
    "image_auroc_max": "Image AUROC (max)",
    "image_auroc_mean": "Image AUROC (mean)",
    "image_auroc_std": "Image AUROC (std)",
    "image_precision": "Image precision",
    "image_recall": "Image recall",
    "image_f1": "Image F1",
    "image_false_alarm_rate": "Image false alarms",
    "pixel_precision": "Pixel precision",
    "pixel_recall": "Pixel recall",
    "pixel_f1": "Pixel F1",
    "pixel_false_alarm_rate": "Pixel false alarms",
}
"""Column titles of the tables."""

ALL_METRICS = (*METRICS, *IMAGE_SCORE_METRICS, *OPERATING_POINT_METRICS)
"""Every metric key a category's row may hold, in table order."""


def percent(value: float | None) -> str:
    """A metric in % with one decimal; ``n/a`` for one that was not computed."""
    return "n/a" if value is None else f"{100 * value:.1f}"


def _score_columns(results: dict[str, Any]) -> list[str]:
    """The image-score AUROCs the results have, the detector's own first."""
    present = [k for k in IMAGE_SCORE_METRICS if k in results["mean"]]
    first = f"image_auroc_{results.get('image_score', 'max')}"
    return sorted(present, key=lambda k: k != first)  # stable: the others keep their order


def results_table(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Column keys and rows (categories, then ``mean``) of the report, values in %.

    With several seeds a cell reads ``mean ± std``. Where the paper reports
    a category, the paper's image and pixel AUROC and the differences
    (ours - paper) follow.
    """
    keys = [*METRICS, *_score_columns(results)]
    paper = results.get("paper") or {}
    std = results.get("std")

    def cells(row: dict[str, Any], spread: dict[str, Any] | None, name: str) -> list[str]:
        out = []
        for key in keys:
            text = percent(row[key])
            if spread is not None and spread[key] is not None:
                text += f" ± {100 * spread[key]:.1f}"
            out.append(text)
        if paper:
            theirs = paper.get(name)
            for key in ("image_auroc", "pixel_auroc"):
                out.append("" if theirs is None else f"{theirs[key]:.1f}")
            for key in ("image_auroc", "pixel_auroc"):
                ours = row[key]
                out.append(
                    "" if theirs is None or ours is None else f"{100 * ours - theirs[key]:+.1f}"
                )
        return out

    rows = [
        [name, *cells(row, None if std is None else std["categories"][name], name)]
        for name, row in results["categories"].items()
    ]
    rows.append(["mean", *cells(results["mean"], None if std is None else std["mean"], "mean")])
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
    std = results.get("std")

    def cells(row: dict[str, Any], spread: dict[str, Any] | None) -> list[str]:
        return [
            percent(row[k])
            + ("" if spread is None or spread[k] is None else f" ± {100 * spread[k]:.1f}")
            for k in keys
        ]

    rows = [
        [name, *cells(row, None if std is None else std["categories"][name])]
        for name, row in results["categories"].items()
    ]
    rows.append(["mean", *cells(results["mean"], None if std is None else std["mean"])])
    return keys, rows


COLUMN_TITLES: dict[str, str] = {
    **METRIC_NAMES,
    "paper_image_auroc": "Paper image AUROC",
    "paper_pixel_auroc": "Paper pixel AUROC",
    "delta_image": "Δ image",
    "delta_pixel": "Δ pixel",
}
"""Titles of the report's columns (:func:`results_table`)."""


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
    header = ["Category", *(COLUMN_TITLES[k] for k in columns), "Images", "Anomalous"]
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
        header = ["Category", *(COLUMN_TITLES[k] for k in op_columns)]
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
            "count as anomalous; false alarms = share of good images (normal pixels) flagged."
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
        with open(folder / "scores.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    json_path = folder / "results.json"
    json_path.write_text(json.dumps(document, indent=2) + "\n")
    md_path = folder / "results.md"
    md_path.write_text(results_markdown(results))
    return json_path, md_path
