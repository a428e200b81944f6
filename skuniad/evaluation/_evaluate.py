"""Evaluate a fitted detector on an MVTec-style test split, category by category.

The protocol is UniAD's (see ``docs/paper.md``): every metric is computed at model
resolution (``image_size`` squared), ground-truth masks are resized nearest and
``> 0`` is anomalous, each category is scored on its own and the table ends
with the mean over categories. The network runs once per image: the image
score is taken from the same maps the pixel metrics use.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from skuniad._progress import progress_bar
from skuniad.datasets import AnomalyDataset, load_image, load_mask
from skuniad.evaluation._report import (
    ALL_METRICS,
    IMAGE_SCORE_METRICS,
    METRICS,
    OPERATING_POINT_METRICS,
    TITLES,
    percent,
)
from skuniad.metrics import evaluate, image_auroc, operating_point


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
    scores = image_score(torch.from_numpy(np.ascontiguousarray(maps)), method=det.image_score)
    return scores.numpy().astype(np.float64), maps


def image_score_aurocs(labels: np.ndarray, maps: np.ndarray) -> dict[str, float]:
    """Image AUROC of each of the reference's image scores (max, mean, std of the maps).

    Keys ``image_auroc_max``, ``image_auroc_mean``, ``image_auroc_std``, as the
    reference prints them beside the pixel AUROC.
    """
    import torch

    from skuniad.nn.transformer import IMAGE_SCORES, image_score

    tensor = torch.from_numpy(np.ascontiguousarray(maps))
    return {
        f"image_auroc_{method}": image_auroc(labels, image_score(tensor, method=method).numpy())
        for method in IMAGE_SCORES
    }


def operating_point_metrics(
    det: Any,
    category: str,
    labels: np.ndarray,
    scores: np.ndarray,
    masks: np.ndarray,
    maps: np.ndarray,
) -> dict[str, float]:
    """Precision, recall, F1 and false-alarm rate at the detector's own thresholds.

    Images of ``category`` get that group's thresholds when the detector has
    them (as ``predict(X, groups=...)`` does), else the pooled ones. Image
    level: ``scores`` above the image threshold; pixel level: ``maps`` above
    the pixel threshold, all pixels of the category pooled. Empty for a
    detector without thresholds (an uncalibrated import).
    """
    if not hasattr(det, "offset_"):
        return {}
    from skuniad._thresholds import labels_above, masks_above

    table = det.thresholds_
    groups = [category] * len(labels) if category in table.groups else None
    image_t = table.image_for(groups, len(labels), det.unknown_group)
    pixel_t = table.pixel_for(groups, len(labels), det.unknown_group)
    image = operating_point(labels, labels_above(scores, image_t) == -1)
    pixel = operating_point(masks, masks_above(maps, pixel_t))
    keys = ("precision", "recall", "f1", "false_alarm_rate")
    return {
        **{f"image_{k}": float(image[k]) for k in keys},
        **{f"pixel_{k}": float(pixel[k]) for k in keys},
    }


def recall_at_false_alarms(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """Image recall at 1 % and 5 % false alarms: what the ranking allows at those rates.

    The threshold at each rate is the lowest that flags at most that share of
    the normal images (:func:`skuniad._thresholds.false_alarm_threshold`).
    """
    from skuniad._thresholds import false_alarm_threshold

    normal, anomalous = scores[labels == 0], scores[labels == 1]
    return {
        f"recall_at_{rate}pct_false_alarms": float(
            np.mean(anomalous > false_alarm_threshold(normal, rate / 100))
        )
        for rate in (1, 5)
    }


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
    det: Any,
    subset: AnomalyDataset,
    maps: np.ndarray,
    masks: np.ndarray,
    folder: Path,
    n_overlays: int,
) -> list[Path]:
    from skuniad.visualize import overlay_style, save_overlay

    size = maps.shape[1:]
    # skuniad predict's look (threshold scale and outline), plus the ground truth in white
    style = overlay_style(det) or {"vmin": float(maps.min()), "vmax": float(maps.max())}
    written = []
    for i in _overlay_picks(subset.labels, n_overlays):
        image = load_image(subset.paths[i], size=size)
        name = f"{subset.defect_types[i]}_{subset.paths[i].stem}.png"
        path = save_overlay(folder / name, image, maps[i], mask=masks[i], **style)
        written.append(path)
    return written


def mean_defined(values: Sequence[float | None], reduce: Any = np.mean) -> float | None:
    """``reduce`` over the defined values: None (not computed) and NaN (undefined)
    are left out; None when no value was computed, NaN when none is defined."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    defined = [v for v in present if not np.isnan(v)]
    return float(reduce(defined)) if defined else float("nan")


def check_test_set(dataset: AnomalyDataset, *, ignore_pixel_metrics: bool = False) -> list[str]:
    """Check a test split before anything is trained or scored.

    Parameters
    ----------
    dataset : AnomalyDataset
        The test split.
    ignore_pixel_metrics : bool, default=False
        Evaluate every category at image level only, whatever masks it has.

    Returns
    -------
    list of str
        The categories that get pixel metrics: those whose every anomalous
        image has a mask. A category whose anomalous images have no mask at
        all (image-level labels only) is evaluated at image level.

    Raises
    ------
    ValueError
        If the split is empty, or some but not all anomalous images of a
        category have a mask (they are named); pixel metrics over part of the
        defects would mislead. A category without normal or without anomalous
        test images is not an error: its metrics are undefined, reported as
        NaN with a warning when it is evaluated.
    """
    if len(dataset) == 0:
        raise ValueError("the dataset has no images to evaluate")
    with_masks = []
    for category in dataset.category_names:
        subset = dataset.subset(category)
        n_anomalous = int(subset.labels.sum())
        unmasked = [
            str(path)
            for path, label, mask in zip(
                subset.paths, subset.labels, subset.mask_paths, strict=True
            )
            if label == 1 and mask is None
        ]
        if ignore_pixel_metrics or len(unmasked) == n_anomalous:
            continue
        if unmasked:
            from skuniad.datasets._checks import listing

            raise ValueError(
                f"category {category!r}: {len(unmasked)} of {n_anomalous} anomalous images have "
                f"no ground-truth mask: {listing(unmasked)}; add their masks, or evaluate at "
                "image level only (ignore_pixel_metrics=True, --ignore-pixel-metrics)"
            )
        with_masks.append(category)
    return with_masks


def _undefined_metrics(category: str, labels: np.ndarray) -> dict[str, float] | None:
    """NaN metrics, with a warning, for a category whose test split has one class only."""
    if labels.size and labels.min() != labels.max():
        return None
    missing = "anomalous" if labels.size == 0 or labels.max() == 0 else "normal"
    warnings.warn(
        f"category {category!r} has no {missing} test image: its metrics are undefined, "
        "reported as NaN and left out of the mean over categories",
        UserWarning,
        stacklevel=3,
    )
    return {key: float("nan") for key in (*METRICS, *IMAGE_SCORE_METRICS)}


def evaluate_detector(
    det: Any,
    dataset: AnomalyDataset,
    *,
    overlay_dir: str | os.PathLike[str] | None = None,
    n_overlays: int = 4,
    ignore_pixel_metrics: bool = False,
    verbose: int = 0,
) -> dict[str, Any]:
    """Score a test split per category and compute UniAD's metrics.

    Parameters
    ----------
    det : UniADDetector
        Fitted detector.
    dataset : AnomalyDataset
        Test split, e.g. ``load_mvtec(root, "test")``. A category whose
        anomalous images have no masks is evaluated at image level (see
        :func:`check_test_set`); one without normal or without anomalous
        images gets NaN metrics.
    overlay_dir : str or path-like, optional
        Write heat-map overlays (image | map with the ground truth outlined)
        to ``overlay_dir/<category>/<defect>_<stem>.png``.
    n_overlays : int, default=4
        Overlays per category: one normal image and anomalous ones spread
        over the defect types.
    ignore_pixel_metrics : bool, default=False
        Image-level metrics only, for every category.
    verbose : int, default=0
        > 0 shows a progress bar and prints one line per category.

    Returns
    -------
    dict
        ``categories``: per category, the :data:`METRICS` (floats in [0, 1];
        the :data:`PIXEL_METRICS` are None for a category evaluated at image
        level only) plus ``n_images`` and ``n_anomalous``; a category whose
        test split lacks anomalous (or normal) images gets NaN metrics and a
        warning. ``mean``: each metric averaged over the categories where it
        is defined; ``image_level_only``: the categories without pixel
        metrics; ``n_images``, ``n_anomalous``, ``image_size``,
        ``precision`` (the one scoring used), ``thresholds`` (``offset_``,
        ``pixel_threshold_``), ``images`` (per image: ``path``,
        ``category``, ``label`` 1 = anomalous, ``score`` higher = more
        anomalous), ``seconds`` (scoring and metrics) and, with
        ``overlay_dir``, ``overlays`` (list of written files).
    """
    with_masks = check_test_set(dataset, ignore_pixel_metrics=ignore_pixel_metrics)
    start = time.perf_counter()
    per_category: dict[str, dict[str, float | int]] = {}
    overlays: list[Path] = []
    images: list[dict[str, Any]] = []
    with progress_bar(verbose > 0) as progress:
        task = progress.add_task("scoring", total=len(dataset))
        for category in dataset.category_names:
            subset = dataset.subset(category)
            scores, maps = scores_and_maps(det, subset.paths)
            size = maps.shape[1:]
            masks = load_masks(subset, size)
            row: dict[str, float | int | None] | None = _undefined_metrics(category, subset.labels)
            if row is None:
                try:
                    if category in with_masks:
                        metrics = evaluate(subset.labels, scores, masks, maps)
                    else:
                        metrics = evaluate(subset.labels, scores)
                except ValueError as exc:
                    raise ValueError(f"cannot evaluate category {category!r}: {exc}") from None
                row = {key: float(metrics[key]) if key in metrics else None for key in METRICS}
                row.update(image_score_aurocs(subset.labels, maps))
                at_thresholds = operating_point_metrics(
                    det, category, subset.labels, scores, masks, maps
                )
                if category not in with_masks:  # no ground truth to count pixels against
                    at_thresholds = {
                        k: None if k.startswith("pixel_") else v for k, v in at_thresholds.items()
                    }
                if at_thresholds:  # next to the model's operating point, what the ranking allows
                    at_thresholds.update(recall_at_false_alarms(subset.labels, scores))
                row.update(at_thresholds)
            elif hasattr(det, "offset_"):
                row.update({key: float("nan") for key in OPERATING_POINT_METRICS})
            row["n_images"] = len(subset)
            row["n_anomalous"] = int(subset.labels.sum())
            per_category[category] = row
            if overlay_dir is not None:
                folder = Path(overlay_dir) / category
                overlays += _write_overlays(det, subset, maps, masks, folder, n_overlays)
            images += [
                {"path": str(path), "category": category, "label": int(label), "score": score}
                for path, label, score in zip(subset.paths, subset.labels, scores, strict=True)
            ]
            progress.advance(task, len(subset))
            if verbose > 0:
                summary = "  ".join(f"{TITLES[k].full} {percent(row[k])}" for k in METRICS[:3])
                progress.console.print(f"{category}: {len(subset)} images  {summary}")
    results: dict[str, Any] = {
        "categories": per_category,
        "mean": mean_over_categories(per_category),
        "image_level_only": [
            c  # with masks or not, a one-class category has no metrics at all
            for c, row in per_category.items()
            if c not in with_masks and not np.isnan(row["image_auroc"])
        ],
        "image_score": det.image_score,
        "n_images": len(dataset),
        "n_anomalous": int(dataset.labels.sum()),
        "image_size": int(size[0]),
        **_model_facts(det),
        "images": images,
        "seconds": time.perf_counter() - start,
    }
    if overlay_dir is not None:
        results["overlays"] = [str(p) for p in overlays]
    return results


def _model_facts(det: Any) -> dict[str, Any]:
    """What a report needs to be reproduced: the precision used and the thresholds."""
    facts: dict[str, Any] = {
        "thresholds": {
            name: None if getattr(det, name, None) is None else float(getattr(det, name))
            for name in ("offset_", "pixel_threshold_")
        }
    }
    if hasattr(det, "precision") and hasattr(det, "device_"):  # a UniADDetector
        from skuniad.device import resolve_precision

        amp_dtype = resolve_precision(det.precision, det.device_)
        facts["precision"] = "fp32" if amp_dtype is None else "bf16"
    return facts


def load_masks(subset: AnomalyDataset, size: tuple[int, int]) -> np.ndarray:
    """The ground-truth masks of ``subset`` at ``size``, all False where an image has none."""
    return np.stack(
        [
            np.zeros(size, dtype=bool) if m is None else load_mask(m, size=size)
            for m in subset.mask_paths
        ]
    )


def mean_over_categories(categories: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Each metric the rows hold, averaged over the categories where it is defined."""
    keys = [k for k in ALL_METRICS if k in next(iter(categories.values()))]
    return {k: mean_defined([row[k] for row in categories.values()]) for k in keys}
