"""Evaluate a fitted detector on an MVTec-style test split, category by category.

The protocol is UniAD's (UNIAD.md section 7): every metric is computed at model
resolution (``image_size`` squared), ground-truth masks are resized nearest and
``> 0`` is anomalous, each category is scored on its own and the table ends
with the mean over categories. The network runs once per image: the image
score is taken from the same maps the pixel metrics use.
"""

from __future__ import annotations

import csv
import json
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from skuniad._progress import progress_bar
from skuniad.datasets import AnomalyDataset, load_image, load_mask
from skuniad.metrics import AUPRO_MAX_FPR, evaluate, image_auroc, operating_point

__all__ = [
    "IMAGE_SCORE_METRICS",
    "METRICS",
    "PIXEL_METRICS",
    "METRIC_NAMES",
    "OPERATING_POINT_METRICS",
    "CurveRecorder",
    "check_test_set",
    "evaluate_detector",
    "image_score_aurocs",
    "run_experiment",
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
    has_own = category in getattr(det, "group_image_thresholds_", {})
    groups = [category] * len(labels) if has_own else None
    image_t = det._image_thresholds(groups, len(labels))
    pixel_t = det._pixel_thresholds(groups, len(labels))
    from skuniad.detector import _labels, _masks

    image = operating_point(labels, _labels(scores, image_t) == -1)
    pixel = operating_point(masks, _masks(maps, pixel_t))
    keys = ("precision", "recall", "f1", "false_alarm_rate")
    return {
        **{f"image_{k}": float(image[k]) for k in keys},
        **{f"pixel_{k}": float(pixel[k]) for k in keys},
    }


_ALL_METRICS = (*METRICS, *IMAGE_SCORE_METRICS, *OPERATING_POINT_METRICS)


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


def _percent(value: float | None) -> str:
    """A metric in % with one decimal; ``n/a`` for one that was not computed."""
    return "n/a" if value is None else f"{100 * value:.1f}"


def _mean_defined(values: Sequence[float | None], reduce: Any = np.mean) -> float | None:
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
            masks = np.stack(
                [
                    np.zeros(size, dtype=bool) if m is None else load_mask(m, size=size)
                    for m in subset.mask_paths
                ]
            )
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
                summary = "  ".join(f"{METRIC_NAMES[k]} {_percent(row[k])}" for k in METRICS[:3])
                progress.console.print(f"{category}: {len(subset)} images  {summary}")
    results: dict[str, Any] = {
        "categories": per_category,
        "mean": _mean_over_categories(per_category),
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
    if hasattr(det, "_amp_dtype"):
        facts["precision"] = "fp32" if det._amp_dtype() is None else "bf16"
    return facts


class CurveRecorder:
    """``fit``'s ``on_epoch_end`` that scores a test split every few epochs.

    The frozen backbone's test features are computed once, at the first
    point; each point then runs only the reconstruction network, and
    records per category the image AUROC of every image score and the
    pixel AUROC at model resolution (the threshold-free metrics that are
    cheap enough to repeat). Nothing is selected on the test set: the
    points only describe the training.

    Parameters
    ----------
    dataset : AnomalyDataset
        Test split; categories without masks get no pixel AUROC (None).
    every : int
        Score after epochs ``every``, ``2 * every``... and after ``last``.
    last : int
        The fit's number of epochs.
    path : str or path-like, optional
        Rewrite this JSON file with the curve so far after every point, so
        that a long run can be followed (and is not lost if stopped).

    Attributes
    ----------
    curve : dict
        ``epoch``, ``loss`` (mean training loss of those epochs),
        ``fit_seconds`` (training time up to each point, the scoring
        excluded), ``loss_curve`` (every epoch's loss), ``categories``
        (per category, each metric's values) and ``mean`` (over categories).
    """

    def __init__(
        self,
        dataset: AnomalyDataset,
        every: int,
        last: int,
        path: str | os.PathLike[str] | None = None,
    ) -> None:
        if every < 1:
            raise ValueError(f"every must be at least 1, got {every}")
        self.dataset, self.every, self.last = dataset, every, last
        self.path = None if path is None else Path(path)
        self.curve: dict[str, Any] = {
            "epoch": [],
            "loss": [],
            "fit_seconds": [],
            "loss_curve": [],
            "categories": {c: {} for c in dataset.category_names},
            "mean": {},
        }
        self._features: dict[str, Any] = {}
        self._masks: dict[str, np.ndarray] = {}
        self._start = time.perf_counter()
        self._scoring_seconds = 0.0

    def __call__(self, det: Any, epoch: int, loss: float) -> None:
        entered = time.perf_counter()
        self.curve["loss_curve"].append(loss)
        if epoch % self.every and epoch != self.last:
            return
        self.curve["epoch"].append(epoch)
        self.curve["loss"].append(loss)
        self.curve["fit_seconds"].append(entered - self._start - self._scoring_seconds)
        rows = {c: self._score(det, c) for c in self.dataset.category_names}
        for category, row in rows.items():
            for key, value in row.items():
                self.curve["categories"][category].setdefault(key, []).append(value)
        for key in rows[self.dataset.category_names[0]]:
            mean = _mean_defined([row[key] for row in rows.values()])
            self.curve["mean"].setdefault(key, []).append(mean)
        if self.path is not None:
            self.path.write_text(json.dumps(self.curve, indent=2) + "\n")
        self._scoring_seconds += time.perf_counter() - entered

    def _score(self, det: Any, category: str) -> dict[str, float]:
        from skuniad.training import extract_features, inference_batch_size, reconstruction_maps

        subset = self.dataset.subset(category)
        if subset.labels.min() == subset.labels.max():  # one class: undefined, as in the report
            return {
                key: float("nan") for key in ("image_auroc", "pixel_auroc", *IMAGE_SCORE_METRICS)
            }
        network = det._fitted_network()  # what the model being trained scores with
        size = (network["image_size"], network["image_size"])
        batch = inference_batch_size(det.batch_size)
        if category not in self._features:
            self._features[category] = extract_features(
                det.backbone_,
                subset.paths,
                image_size=network["image_size"],
                batch_size=batch,
                device=det.device_,
                amp_dtype=det._amp_dtype(),
                resize=network["resize"],
            )
            self._masks[category] = _load_masks(subset, size)
        _, token_maps = reconstruction_maps(
            det.model_,
            self._features[category],
            image_size=network["image_size"],
            batch_size=batch,
            device=det.device_,
            amp_dtype=det._amp_dtype(),
        )
        return token_map_aurocs(subset.labels, token_maps, self._masks[category], det.image_score)


def token_map_aurocs(
    labels: np.ndarray, token_maps: Any, masks: np.ndarray, image_score: str
) -> dict[str, float | None]:
    """The threshold-free metrics of ``(n, h, w)`` token-grid maps, as a learning-curve point.

    The maps are brought to the masks' (model) resolution as ``anomaly_map``
    does; the row holds every image score's AUROC, ``image_auroc``
    (``image_score``'s) and ``pixel_auroc`` (None when no mask marks a defect).
    """
    import torch

    from skuniad.metrics import pixel_auroc
    from skuniad.nn.transformer import upsample_map

    maps = upsample_map(torch.as_tensor(np.asarray(token_maps)), masks.shape[1:]).numpy()
    row: dict[str, float | None] = dict(image_score_aurocs(labels, maps))
    row["image_auroc"] = row[f"image_auroc_{image_score}"]
    row["pixel_auroc"] = pixel_auroc(masks, maps) if masks.any() else None
    return row


def _load_masks(subset: AnomalyDataset, size: tuple[int, int]) -> np.ndarray:
    return np.stack(
        [
            np.zeros(size, dtype=bool) if m is None else load_mask(m, size=size)
            for m in subset.mask_paths
        ]
    )


def _merge_curves(curves: list[dict[str, Any]]) -> dict[str, Any]:
    """One curve from the separate setting's per-category curves (same epochs)."""
    if len(curves) == 1:
        return curves[0]
    merged: dict[str, Any] = {"epoch": curves[0]["epoch"], "categories": {}, "mean": {}}
    for key in ("loss", "fit_seconds", "loss_curve"):
        # the models train one after another: their losses are averaged, their times add up
        values = np.array([c[key] for c in curves], dtype=np.float64)
        merged[key] = (values.sum(0) if key == "fit_seconds" else values.mean(0)).tolist()
    for curve in curves:
        merged["categories"].update(curve["categories"])
    rows = list(merged["categories"].values())
    for key in rows[0]:
        merged["mean"][key] = [
            _mean_defined([row[key][i] for row in rows]) for i in range(len(merged["epoch"]))
        ]
    return merged


SETTINGS = ("unified", "separate")
"""UniAD's two settings: one model for all categories, or one model per category."""


def run_experiment(
    train: AnomalyDataset,
    test: AnomalyDataset,
    params: dict[str, Any] | None = None,
    *,
    setting: str = "unified",
    seeds: Sequence[int | None] = (None,),
    eval_every: int | None = None,
    output_dir: str | os.PathLike[str] | None = None,
    n_overlays: int = 0,
    curve_categories: bool = False,
    per_category: bool = False,
    ignore_pixel_metrics: bool = False,
    checkpoint_every: int | None = None,
    init_model: str | os.PathLike[str] | None = None,
    verbose: int = 0,
) -> dict[str, Any]:
    """Train and evaluate as the paper's experiments do: a setting, several seeds, curves.

    Parameters
    ----------
    train, test : AnomalyDataset
        The training split (normal images) and the test split, e.g. from
        :func:`~skuniad.datasets.load_mvtec`.
    params : dict, optional
        :class:`~skuniad.UniADDetector` parameters (``random_state`` is set
        from ``seeds``).
    setting : {"unified", "separate"}, default="unified"
        ``"unified"``: one model on the normal images of all categories
        (UniAD's setting). ``"separate"``: one model per category, trained
        on that category's images only (the paper's "separate case").
    seeds : sequence of int or None, default=(None,)
        The whole experiment runs once per seed; the results give each
        metric's mean and (with several seeds) sample standard deviation.
    eval_every : int, optional
        Score the test split every ``eval_every`` epochs and after the last
        (:class:`CurveRecorder`) during the fit itself; the fit is the same
        as without, and the reported model is always the last epoch's.
    output_dir : str or path-like, optional
        Where the models (``model[_<category>][_seed<k>].skuniad``),
        ``results.json``, ``results.md``, overlays and, with ``eval_every``,
        ``curve.json`` and ``curve.png`` go.
    n_overlays : int, default=0
        Heat-map overlays per category (needs ``output_dir``).
    curve_categories : bool, default=False
        Draw one line per category in ``curve.png`` besides the mean.
    per_category : bool, default=False
        Fit with the categories as ``groups``: per-category thresholds, used
        by the operating-point metrics (:func:`operating_point_metrics`).
    ignore_pixel_metrics : bool, default=False
        Image-level metrics only (see :func:`check_test_set`, which runs
        before any training).
    checkpoint_every : int, optional
        With ``output_dir``, each fit checkpoints every that many epochs to
        ``<model file>.ckpt`` there; running the experiment again resumes
        the fits (see ``UniADDetector(checkpoint_path=...)``).
    init_model : str or path-like, optional
        A saved model to continue (a warm start for ``max_epochs`` more
        epochs) instead of training one from scratch; the unified setting
        and one seed only. ``params`` must not change its network.
    verbose : int, default=0

    Raises
    ------
    skuniad.training.TrainingInterrupted
        Ctrl-C during a fit: with ``output_dir``, the model of the last
        finished epoch is written first, under the name it would have had.

    Returns
    -------
    dict
        ``categories`` and ``mean``: each metric's mean over seeds; with
        several seeds ``std`` (same layout, sample standard deviation);
        ``runs``: every seed's own results (:func:`evaluate_detector`) with
        its ``seed``, ``fit_seconds``, ``models`` (each model file's
        ``precision`` and ``thresholds``), ``images`` (per-image scores)
        and, with ``eval_every``, ``curve``;
        ``paper``: the paper's AUROCs of the categories it reports, for this
        setting; ``setting``, ``seeds``, ``image_score``, ``image_size``,
        ``n_images``, ``n_anomalous``.
    """
    from skuniad import UniADDetector
    from skuniad.paper import paper_aurocs
    from skuniad.training import TrainingInterrupted

    if setting not in SETTINGS:
        raise ValueError(f"setting must be one of {SETTINGS}, got {setting!r}")
    seeds = list(seeds)
    if not seeds:
        raise ValueError("seeds must name at least one seed (None for an unseeded run)")
    params = dict(params or {})
    max_epochs = params.get("max_epochs", UniADDetector().max_epochs)
    if eval_every is not None and not 1 <= eval_every <= max_epochs:
        raise ValueError(f"eval_every must be in [1, max_epochs={max_epochs}], got {eval_every}")
    check_test_set(test, ignore_pixel_metrics=ignore_pixel_metrics)
    missing = sorted(set(test.category_names) - set(train.category_names))
    if setting == "separate" and missing:
        raise ValueError(f"the separate setting needs training images of {missing}")
    folder = None if output_dir is None else Path(output_dir)
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    if init_model is not None and (setting != "unified" or len(seeds) > 1):
        raise ValueError("init_model continues one model: the unified setting and one seed only")
    groups = [None] if setting == "unified" else test.category_names
    runs = []
    for seed in seeds:
        run: dict[str, Any] = {"seed": seed, "categories": {}, "fit_seconds": 0.0}
        curves, evaluations = [], []
        for category in groups:
            train_part = train if category is None else train.subset(category)
            test_part = test if category is None else test.subset(category)
            if init_model is None:
                det = UniADDetector(**{**params, "random_state": seed})
            else:
                det = UniADDetector.load(init_model, device=params.get("device", "auto"))
                det.set_params(**params, random_state=seed, warm_start=True)
            if verbose > 0:
                det.set_params(verbose=verbose)
            name = _model_name(category, seed, len(seeds))
            if folder is not None and checkpoint_every is not None:
                det.set_params(
                    checkpoint_path=folder / f"{name}.ckpt", checkpoint_every=checkpoint_every
                )
            recorder = None
            if eval_every is not None:
                # until the experiment ends, curve.json follows the model being trained
                progress = None if folder is None else folder / "curve.json"
                # without masks the curves have no pixel AUROC either
                curve_test = test_part
                if ignore_pixel_metrics:
                    curve_test = replace(test_part, mask_paths=[None] * len(test_part))
                recorder = CurveRecorder(curve_test, eval_every, max_epochs, progress)
            start = time.perf_counter()
            categories = train_part.categories if per_category else None
            try:
                det.fit(train_part.paths, groups=categories, on_epoch_end=recorder)
            except TrainingInterrupted as exc:
                if folder is None or not exc.loss_curve:
                    raise
                det.save(folder / name)  # the last finished epoch's model, kept
                raise TrainingInterrupted(
                    f"{exc}; written to {folder / name}", exc.loss_curve
                ) from None
            run["fit_seconds"] += time.perf_counter() - start
            run["n_epochs"] = det.n_epochs_
            if recorder is not None:
                curves.append(recorder.curve)
            if folder is not None:
                det.save(folder / name)
            overlay_dir = None
            if folder is not None and n_overlays:
                overlay_dir = folder / "overlays" / ("" if len(seeds) == 1 else f"seed{seed}")
            evaluations.append(
                evaluate_detector(
                    det,
                    test_part,
                    overlay_dir=overlay_dir,
                    n_overlays=n_overlays,
                    ignore_pixel_metrics=ignore_pixel_metrics,
                    verbose=verbose,
                )
            )
        run["models"] = {}
        run["images"] = []
        for category, evaluation in zip(groups, evaluations, strict=True):
            run["categories"].update(evaluation["categories"])
            run["models"][_model_name(category, seed, len(seeds))] = {
                key: evaluation[key] for key in ("precision", "thresholds") if key in evaluation
            }
            run["images"] += [{**row, "seed": seed} for row in evaluation["images"]]
        run["image_level_only"] = [c for e in evaluations for c in e["image_level_only"]]
        run["mean"] = _mean_over_categories(run["categories"])
        run["seconds"] = sum(e["seconds"] for e in evaluations)
        if curves:
            run["curve"] = _merge_curves(curves)
        runs.append(run)
    results = _summarise_runs(runs, test)
    results.update(
        image_level_only=runs[0]["image_level_only"],
        setting=setting,
        seeds=seeds,
        image_score=det.image_score,
        image_size=int(det.image_size),
        paper=paper_aurocs(test.category_names, setting),
    )
    if folder is not None:
        write_results(results, folder)
        if eval_every is not None:
            write_curves(results, folder, per_category=curve_categories)
    return results


def _model_name(category: str | None, seed: int | None, n_seeds: int) -> str:
    parts = ["model"]
    if category is not None:
        parts.append(category)
    if n_seeds > 1:
        parts.append(f"seed{seed}")
    return "_".join(parts) + ".skuniad"


def _mean_over_categories(categories: dict[str, dict[str, Any]]) -> dict[str, float]:
    keys = [k for k in _ALL_METRICS if k in next(iter(categories.values()))]
    return {k: _mean_defined([row[k] for row in categories.values()]) for k in keys}


def _summarise_runs(runs: list[dict[str, Any]], test: AnomalyDataset) -> dict[str, Any]:
    """Mean (and, with several runs, sample std) over seeds of every metric."""
    names = list(runs[0]["categories"])
    keys = [k for k in _ALL_METRICS if k in runs[0]["categories"][names[0]]]

    def over_runs(pick, reduce) -> dict[str, float | None]:
        return {k: _mean_defined([pick(run)[k] for run in runs], reduce) for k in keys}

    results: dict[str, Any] = {
        "categories": {
            name: {
                **over_runs(lambda run, n=name: run["categories"][n], np.mean),
                "n_images": runs[0]["categories"][name]["n_images"],
                "n_anomalous": runs[0]["categories"][name]["n_anomalous"],
            }
            for name in names
        },
        "mean": over_runs(lambda run: run["mean"], np.mean),
        "runs": runs,
        "n_images": len(test),
        "n_anomalous": int(test.labels.sum()),
    }
    if len(runs) > 1:

        def std(values):
            return np.std(values, ddof=1)

        results["std"] = {
            "categories": {
                name: over_runs(lambda run, n=name: run["categories"][n], std) for name in names
            },
            "mean": over_runs(lambda run: run["mean"], std),
        }
    return results


def write_curves(
    results: dict[str, Any], output_dir: str | os.PathLike[str], *, per_category: bool = False
) -> tuple[Path, Path]:
    """Write ``curve.json`` (every seed's learning curve) and ``curve.png``.

    Returns
    -------
    (json_path, png_path)
    """
    from skuniad.visualize import plot_learning_curves

    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    curves = [{"seed": run["seed"], **run["curve"]} for run in results["runs"]]
    document = {
        "setting": results["setting"],
        "image_score": results["image_score"],
        "runs": curves,
    }
    json_path = folder / "curve.json"
    json_path.write_text(json.dumps(document, indent=2) + "\n")
    png_path = plot_learning_curves(curves, folder / "curve.png", per_category=per_category)
    return json_path, png_path


def read_curves(folder: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The learning curves in ``folder/curve.json``, one per seed.

    Reads both forms the file takes: a finished experiment's (``write_curves``,
    every seed's curve under ``"runs"``) and a fit's still running or stopped
    (``CurveRecorder``, the one curve so far).
    """
    document = json.loads((Path(folder) / "curve.json").read_text())
    return document.get("runs", [document])


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
            text = _percent(row[key])
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
            _percent(row[k])
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
