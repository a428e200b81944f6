"""Evaluate a fitted detector on an MVTec-style test split, category by category.

The protocol is UniAD's (UNIAD.md section 7): every metric is computed at model
resolution (``image_size`` squared), ground-truth masks are resized nearest and
``> 0`` is anomalous, each category is scored on its own and the table ends
with the mean over categories. The network runs once per image: the image
score is taken from the same maps the pixel metrics use.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from skuniad._progress import progress_bar
from skuniad.datasets import AnomalyDataset, load_image, load_mask
from skuniad.metrics import evaluate

__all__ = [
    "METRICS",
    "METRIC_NAMES",
    "evaluate_detector",
    "results_markdown",
    "scores_and_maps",
    "write_results",
]

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

METRIC_NAMES: dict[str, str] = {
    "image_auroc": "Image AUROC",
    "pixel_auroc": "Pixel AUROC",
    "aupro": "AUPRO",
    "image_ap": "Image AP",
    "pixel_ap": "Pixel AP",
    "image_f1_max": "Image F1-max",
    "pixel_f1_max": "Pixel F1-max",
}
"""Column titles of the tables."""


def scores_and_maps(det: Any, X: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """Image anomaly scores and model-size maps from one pass of the network.

    Parameters
    ----------
    det : UniADDetector
        Fitted detector.
    X : images
        Anything the detector accepts.

    Returns
    -------
    scores : ndarray of float64, shape (n,)
        UniAD image scores, HIGHER = MORE ANOMALOUS; equal to
        ``-det.score_samples(X)``.
    maps : ndarray of float32, shape (n, image_size, image_size)
        Anomaly maps at model resolution, HIGHER = MORE ANOMALOUS.
    """
    import torch

    from skuniad.nn.transformer import image_score

    maps = det.anomaly_maps(X, size="model")
    scores = image_score(torch.from_numpy(np.ascontiguousarray(maps))).numpy()
    return scores.astype(np.float64), maps


def _overlay_picks(labels: np.ndarray, n_overlays: int) -> list[int]:
    """One normal image and anomalous ones spread over the (type-sorted) list."""
    if n_overlays <= 0:
        return []
    anomalous = np.flatnonzero(labels == 1)
    normal = np.flatnonzero(labels == 0)
    picks = [int(normal[0])] if n_overlays > 1 and normal.size else []
    n_anomalous = min(n_overlays - len(picks), anomalous.size)
    if n_anomalous > 0:
        spread = np.linspace(0, anomalous.size - 1, n_anomalous).round().astype(int)
        picks += [int(anomalous[i]) for i in np.unique(spread)]
    return picks


def _write_overlays(
    subset: AnomalyDataset,
    maps: np.ndarray,
    masks: np.ndarray,
    folder: Path,
    n_overlays: int,
) -> list[Path]:
    from skuniad.visualize import save_overlay

    size = maps.shape[1:]
    vmin, vmax = float(maps.min()), float(maps.max())
    written = []
    for i in _overlay_picks(subset.labels, n_overlays):
        image = load_image(subset.paths[i], size=size)
        name = f"{subset.defect_types[i]}_{subset.paths[i].stem}.png"
        path = save_overlay(folder / name, image, maps[i], vmin=vmin, vmax=vmax, mask=masks[i])
        written.append(path)
    return written


def evaluate_detector(
    det: Any,
    dataset: AnomalyDataset,
    *,
    overlay_dir: str | os.PathLike[str] | None = None,
    n_overlays: int = 4,
    verbose: int = 0,
) -> dict[str, Any]:
    """Score a test split per category and compute UniAD's metrics.

    Parameters
    ----------
    det : UniADDetector
        Fitted detector.
    dataset : AnomalyDataset
        Test split, e.g. ``load_mvtec(root, "test")``; every category needs
        normal and anomalous images and every anomalous image a mask.
    overlay_dir : str or path-like, optional
        Write heat-map overlays (image | map with the ground truth outlined)
        to ``overlay_dir/<category>/<defect>_<stem>.png``.
    n_overlays : int, default=4
        Overlays per category: one normal image and anomalous ones spread
        over the defect types.
    verbose : int, default=0
        > 0 shows a progress bar and prints one line per category.

    Returns
    -------
    dict
        ``categories``: per category, the :data:`METRICS` (floats in [0, 1])
        plus ``n_images`` and ``n_anomalous``; ``mean``: each metric averaged
        over categories; ``n_images``, ``n_anomalous``, ``image_size``,
        ``seconds`` (scoring and metrics) and, with ``overlay_dir``,
        ``overlays`` (list of written files).
    """
    if len(dataset) == 0:
        raise ValueError("the dataset has no images to evaluate")
    start = time.perf_counter()
    per_category: dict[str, dict[str, float | int]] = {}
    overlays: list[Path] = []
    with progress_bar(verbose > 0) as progress:
        task = progress.add_task("scoring", total=len(dataset))
        for category in dataset.category_names:
            subset = dataset.subset(category)
            scores, maps = scores_and_maps(det, subset.paths)
            size = maps.shape[1:]
            masks = np.stack(
                [
                    np.zeros(size, dtype=bool) if m is None else load_mask(m, size=size)
                    for m in subset.mask_paths
                ]
            )
            try:
                metrics = evaluate(subset.labels, scores, masks, maps)
            except ValueError as exc:
                raise ValueError(f"cannot evaluate category {category!r}: {exc}") from None
            row: dict[str, float | int] = {key: float(metrics[key]) for key in METRICS}
            row["n_images"] = len(subset)
            row["n_anomalous"] = int(subset.labels.sum())
            per_category[category] = row
            if overlay_dir is not None:
                folder = Path(overlay_dir) / category
                overlays += _write_overlays(subset, maps, masks, folder, n_overlays)
            progress.advance(task, len(subset))
            if verbose > 0:
                summary = "  ".join(f"{METRIC_NAMES[k]} {100 * row[k]:.1f}" for k in METRICS[:3])
                progress.console.print(f"{category}: {len(subset)} images  {summary}")
    results: dict[str, Any] = {
        "categories": per_category,
        "mean": {
            key: float(np.mean([row[key] for row in per_category.values()])) for key in METRICS
        },
        "n_images": len(dataset),
        "n_anomalous": int(dataset.labels.sum()),
        "image_size": int(size[0]),
        "seconds": time.perf_counter() - start,
    }
    if overlay_dir is not None:
        results["overlays"] = [str(p) for p in overlays]
    return results


def results_markdown(results: dict[str, Any], title: str = "skuniad evaluation") -> str:
    """A Markdown report: optional run details, then one row per category and the mean.

    Values are percentages with one decimal, as in the UniAD paper. Keys of
    ``results["run"]`` (if present) are listed above the table.
    """
    lines = [f"# {title}", ""]
    for key, value in results.get("run", {}).items():
        lines.append(f"- {key}: {value}")
    if results.get("run"):
        lines.append("")
    header = ["Category", *(METRIC_NAMES[k] for k in METRICS), "Images", "Anomalous"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
    for name, row in results["categories"].items():
        cells = [f"{100 * row[k]:.1f}" for k in METRICS]
        lines.append(
            "| " + " | ".join([name, *cells, str(row["n_images"]), str(row["n_anomalous"])]) + " |"
        )
    mean = [f"**{100 * results['mean'][k]:.1f}**" for k in METRICS]
    totals = [str(results["n_images"]), str(results["n_anomalous"])]
    lines.append("| " + " | ".join(["**mean**", *mean, *totals]) + " |")
    lines += [
        "",
        f"Metrics in %, at model resolution ({results['image_size']} x {results['image_size']}); "
        "AUPRO integrated to FPR 0.3; the mean is over categories.",
        "",
    ]
    return "\n".join(lines)


def write_results(results: dict[str, Any], output_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write ``results.json`` and ``results.md`` into ``output_dir`` (created if missing).

    Returns
    -------
    (json_path, markdown_path)
    """
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    json_path = folder / "results.json"
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    md_path = folder / "results.md"
    md_path.write_text(results_markdown(results))
    return json_path, md_path
