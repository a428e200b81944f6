"""Anomaly-detection metrics for images and pixels.

Conventions used throughout this module
---------------------------------------
* **Labels** ``y_true``: ``1`` = anomalous, ``0`` = normal (booleans are accepted too).
* **Masks**: ground-truth segmentation masks, ``mask > 0`` = anomalous pixel, ``0`` = normal.
* **Scores and anomaly maps**: HIGHER = MORE ANOMALOUS.

No metric ever "flips" its result: a detector that ranks anomalies *below* normal samples gets
an AUROC below 0.5, which is reported as is.

Scorers for model selection
---------------------------
scikit-learn outlier detectors return HIGHER = MORE NORMAL from ``score_samples`` and
``decision_function``, and label outliers ``-1`` / inliers ``+1``. Consequently sklearn's
built-in ``"roc_auc"`` scorer, used on an outlier detector with ``0/1`` labels where ``1`` means
anomalous, silently returns ``1 - AUROC``: a perfect detector scores 0.0 and grid search picks
the worst hyper-parameters. :func:`image_auroc_scorer`, :func:`image_ap_scorer` and
:func:`f1_max_scorer` exist to avoid this: they use ``-estimator.score_samples(X)`` as the anomaly
score and accept either label convention (see :func:`as_anomaly_labels`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "AUPRO_MAX_FPR",
    "as_anomaly_labels",
    "aupro",
    "evaluate",
    "f1_max",
    "f1_max_scorer",
    "image_ap",
    "image_ap_scorer",
    "image_auroc",
    "image_auroc_scorer",
    "operating_point",
    "pixel_ap",
    "pixel_auroc",
    "pixel_f1_max",
]

_NUMERIC_KINDS = "biuf"
_EIGHT_CONNECTIVITY = np.ones((3, 3), dtype=bool)

ImagesLike = ArrayLike | Sequence[ArrayLike]

AUPRO_MAX_FPR = 0.3
"""The FPR up to which AUPRO is integrated: :func:`aupro`'s default, as in UniAD's reports."""


# --------------------------------------------------------------------------------------------
# Input validation
# --------------------------------------------------------------------------------------------


def _check_binary_labels(y: NDArray[Any], name: str) -> NDArray[np.bool_]:
    """Validate 0/1 labels and return them as booleans (True = anomalous)."""
    if y.dtype == np.bool_:
        return y
    if y.dtype.kind not in _NUMERIC_KINDS:
        raise ValueError(
            f"{name} must contain numeric 0/1 labels (1 = anomalous, 0 = normal); "
            f"got dtype {y.dtype}."
        )
    values = np.unique(y)
    unexpected = [v for v in values.tolist() if v not in (0, 1)]
    if unexpected:
        hint = ""
        if set(values.tolist()) <= {-1, 1}:
            hint = (
                " It looks like sklearn's -1/+1 outlier convention; convert it with "
                "as_anomaly_labels(y) (-1 = anomalous)."
            )
        raise ValueError(
            f"{name} must contain only 0 (normal) and 1 (anomalous); "
            f"got unexpected values {unexpected}.{hint}"
        )
    return y == 1


def _require_both_classes(n_pos: int, n_total: int, what: str) -> None:
    if n_pos == 0:
        raise ValueError(
            f"Only one class present in {what}: all samples are normal (no label/mask value "
            "marks an anomaly); the metric is undefined."
        )
    if n_pos == n_total:
        raise ValueError(
            f"Only one class present in {what}: all samples are anomalous (no normal "
            "sample); the metric is undefined."
        )


def _check_scores(scores: NDArray[Any], name: str) -> None:
    if scores.dtype.kind not in _NUMERIC_KINDS:
        raise ValueError(f"{name} must be real numbers; got dtype {scores.dtype}.")
    if scores.dtype.kind == "f" and not np.isfinite(scores).all():
        n_nan = int(np.isnan(scores).sum())
        if n_nan:
            raise ValueError(f"{name} contains {n_nan} NaN value(s); scores must be finite.")
        raise ValueError(f"{name} contains infinite value(s); scores must be finite.")


def _check_image_inputs(
    y_true: ArrayLike, scores: ArrayLike
) -> tuple[NDArray[np.bool_], NDArray[np.float64]]:
    """Validate image-level labels and scores; return (bool labels, float64 scores)."""
    y = np.asarray(y_true)
    s = np.asarray(scores)
    if y.ndim != 1:
        raise ValueError(f"y_true must be 1-D with shape (n_samples,); got shape {y.shape}.")
    if s.ndim != 1:
        raise ValueError(f"scores must be 1-D with shape (n_samples,); got shape {s.shape}.")
    if y.shape[0] != s.shape[0]:
        raise ValueError(
            f"y_true and scores have mismatched lengths: {y.shape[0]} != {s.shape[0]}."
        )
    if y.shape[0] == 0:
        raise ValueError("y_true and scores are empty.")
    labels = _check_binary_labels(y, "y_true")
    _check_scores(s, "scores")
    _require_both_classes(int(labels.sum()), labels.shape[0], "y_true")
    return labels, s.astype(np.float64, copy=False)


def _as_image_list(x: ImagesLike, name: str) -> list[NDArray[Any]]:
    """Return a list of 2-D arrays (views where possible) from an (n, H, W) array or a list."""
    if isinstance(x, np.ndarray) or hasattr(x, "__array__"):
        arr = np.asarray(x)
        if arr.ndim == 3:
            return list(arr)
        if arr.ndim == 2:
            return [arr]
        if arr.dtype != object:
            raise ValueError(
                f"{name} must be an (n, H, W) array or a list of (H, W) arrays; "
                f"got an array of shape {arr.shape}."
            )
    images = [np.asarray(item) for item in x]  # type: ignore[union-attr]
    for i, img in enumerate(images):
        if img.ndim != 2:
            raise ValueError(f"{name}[{i}] must be 2-D (H, W); got shape {img.shape}.")
    return images


def _pool_pixels(
    masks: ImagesLike, maps: ImagesLike, *, regions: bool
) -> tuple[NDArray[np.floating], NDArray[np.bool_] | NDArray[np.int32], int]:
    """Validate masks/maps and pool all pixels of all images into flat arrays.

    Returns
    -------
    scores : ndarray of shape (n_pixels,)
        Flattened anomaly maps, float32 unless the maps come in higher precision (float64 or
        wide integers), in which case float64 is kept so that no ties are created.
    target : ndarray of shape (n_pixels,)
        ``bool`` (True = anomalous) when ``regions=False``; otherwise ``int32`` connected
        component ids with 0 = normal and 1..n_regions numbered across all images.
    n_regions : int
        Number of connected anomalous regions (0 when ``regions=False``).
    """
    mask_list = _as_image_list(masks, "masks")
    map_list = _as_image_list(maps, "maps")
    if len(mask_list) != len(map_list):
        raise ValueError(
            f"masks and maps have a different number of images: "
            f"{len(mask_list)} != {len(map_list)}."
        )
    if not mask_list:
        raise ValueError("masks and maps are empty.")
    for i, (m, a) in enumerate(zip(mask_list, map_list, strict=True)):
        if m.shape != a.shape:
            raise ValueError(
                f"Shape mismatch for image {i}: mask shape {m.shape} != map shape {a.shape}."
            )
        if m.dtype.kind not in _NUMERIC_KINDS:
            raise ValueError(
                f"masks[{i}] cannot be converted to a binary mask: dtype {m.dtype} is not "
                "numeric or boolean."
            )
        if m.dtype.kind == "f" and not np.isfinite(m).all():
            raise ValueError(
                f"masks[{i}] cannot be converted to a binary mask: it contains NaN or inf."
            )
        if m.dtype.kind in "if" and m.size and m.min() < 0:
            raise ValueError(
                f"masks[{i}] cannot be converted to a binary mask: it contains negative values "
                "(expected 0 = normal, > 0 = anomalous)."
            )
        _check_scores(a, f"maps[{i}]")

    dtype = np.result_type(np.float32, *(a.dtype for a in map_list))
    sizes = [a.size for a in map_list]
    total = int(sum(sizes))
    if total == 0:
        raise ValueError("masks and maps contain no pixels.")

    # Anomaly scores: reuse the caller's buffer when it is already a contiguous stack.
    maps_arr = maps if isinstance(maps, np.ndarray) else None
    if maps_arr is not None and maps_arr.ndim in (2, 3) and maps_arr.dtype == dtype:
        scores = maps_arr.reshape(-1)
    else:
        scores = np.empty(total, dtype=dtype)
        start = 0
        for a, size in zip(map_list, sizes, strict=True):
            scores[start : start + size] = a.reshape(-1)
            start += size

    target: NDArray[np.bool_] | NDArray[np.int32]
    n_regions = 0
    start = 0
    if regions:
        from scipy import ndimage  # imported here: scipy takes a second to load

        target = np.empty(total, dtype=np.int32)
        for m, size in zip(mask_list, sizes, strict=True):
            lab, n = ndimage.label(m > 0, structure=_EIGHT_CONNECTIVITY)
            lab = lab.reshape(-1)
            if n_regions:
                lab[lab > 0] += n_regions
            target[start : start + size] = lab
            n_regions += int(n)
            start += size
    else:
        target = np.empty(total, dtype=np.bool_)
        for m, size in zip(mask_list, sizes, strict=True):
            np.greater(m.reshape(-1), 0, out=target[start : start + size])
            start += size
    return scores, target, n_regions


# --------------------------------------------------------------------------------------------
# Shared curve machinery
# --------------------------------------------------------------------------------------------


def _descending_groups(
    scores: NDArray[np.floating],
) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """Sort scores descending once; return (order, start index of each tie group).

    Each tie group corresponds to one distinct threshold ``t``; a sample is predicted
    anomalous at ``t`` iff ``score >= t``.
    """
    order = np.argsort(scores)[::-1]
    s = scores[order]
    starts = np.flatnonzero(s[1:] != s[:-1])
    starts += 1
    return order, np.concatenate(([0], starts))


def _clf_curve(
    labels: NDArray[np.bool_], scores: NDArray[np.floating]
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Cumulative (false positives, true positives) at every distinct threshold, descending."""
    order, starts = _descending_groups(scores)
    y_sorted = labels[order]
    del order
    group_pos = np.add.reduceat(y_sorted, starts, dtype=np.int64)
    group_size = np.diff(np.append(starts, y_sorted.shape[0]))
    tps = np.cumsum(group_pos)
    fps = np.cumsum(group_size - group_pos)
    return fps, tps


def _trapezoid(y: NDArray[np.floating], x: NDArray[np.floating]) -> float:
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1])) / 2.0)


def _auroc_from_curve(fps: NDArray[np.int64], tps: NDArray[np.int64]) -> float:
    # Trapezoid rule on the un-normalised counts, normalised once (exact for perfect rankings).
    fp = np.concatenate(([0.0], fps.astype(np.float64)))
    tp = np.concatenate(([0.0], tps.astype(np.float64)))
    return _trapezoid(tp, fp) / (fp[-1] * tp[-1])


def _ap_from_curve(fps: NDArray[np.int64], tps: NDArray[np.int64]) -> float:
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def _f1_max_from_curve(fps: NDArray[np.int64], tps: NDArray[np.int64]) -> float:
    # F1 = 2 TP / (2 TP + FP + FN) = 2 TP / (TP + FP + n_pos)
    return float(np.max(2.0 * tps / (tps + fps + tps[-1])))


# --------------------------------------------------------------------------------------------
# Image-level metrics
# --------------------------------------------------------------------------------------------


def image_auroc(y_true: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve for image-level anomaly detection.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        Ground truth, ``1`` = anomalous, ``0`` = normal. Both classes must be present.
    scores : array-like of shape (n_samples,)
        Anomaly scores, HIGHER = MORE ANOMALOUS. Must be finite.

    Returns
    -------
    float
        AUROC in [0, 1]: the probability that a random anomalous sample scores higher than a
        random normal one (ties count one half). Values below 0.5 are reported as is, never
        flipped.

    Raises
    ------
    ValueError
        On mismatched lengths, labels other than 0/1, a single class, or non-finite scores.
    """
    labels, s = _check_image_inputs(y_true, scores)
    return _auroc_from_curve(*_clf_curve(labels, s))


def image_ap(y_true: ArrayLike, scores: ArrayLike) -> float:
    """Average precision (area under the precision-recall curve) for image-level detection.

    Computed as ``sum_k (R_k - R_{k-1}) * P_k`` over the distinct thresholds, like
    :func:`sklearn.metrics.average_precision_score`, with anomalous as the positive class.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        Ground truth, ``1`` = anomalous, ``0`` = normal. Both classes must be present.
    scores : array-like of shape (n_samples,)
        Anomaly scores, HIGHER = MORE ANOMALOUS. Must be finite.

    Returns
    -------
    float
        Average precision in [0, 1].

    Raises
    ------
    ValueError
        On mismatched lengths, labels other than 0/1, a single class, or non-finite scores.
    """
    labels, s = _check_image_inputs(y_true, scores)
    return _ap_from_curve(*_clf_curve(labels, s))


def f1_max(y_true: ArrayLike, scores: ArrayLike) -> float:
    """Maximum F1 score over all decision thresholds (image level).

    A sample is predicted anomalous at threshold ``t`` iff ``score >= t``; every distinct
    score is tried (the points of :func:`sklearn.metrics.precision_recall_curve`).

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        Ground truth, ``1`` = anomalous (positive class), ``0`` = normal.
    scores : array-like of shape (n_samples,)
        Anomaly scores, HIGHER = MORE ANOMALOUS. Must be finite.

    Returns
    -------
    float
        The best F1 in [0, 1].

    Raises
    ------
    ValueError
        On mismatched lengths, labels other than 0/1, a single class, or non-finite scores.
    """
    labels, s = _check_image_inputs(y_true, scores)
    return _f1_max_from_curve(*_clf_curve(labels, s))


# --------------------------------------------------------------------------------------------
# Pixel-level metrics
# --------------------------------------------------------------------------------------------


def _pixel_curve(masks: ImagesLike, maps: ImagesLike) -> tuple[NDArray[Any], NDArray[Any]]:
    scores, labels, _ = _pool_pixels(masks, maps, regions=False)
    _require_both_classes(int(np.count_nonzero(labels)), labels.shape[0], "masks (pixels)")
    return _clf_curve(labels, scores)  # type: ignore[arg-type]


def pixel_auroc(masks: ImagesLike, maps: ImagesLike) -> float:
    """Pixel-level AUROC, pooling all pixels of all images.

    Parameters
    ----------
    masks : array-like of shape (n_images, H, W) or list of (H_i, W_i) arrays
        Ground-truth masks, ``mask > 0`` = anomalous pixel, ``0`` = normal. Must be numeric or
        boolean, finite and non-negative. Normal images have all-zero masks.
    maps : array-like of shape (n_images, H, W) or list of (H_i, W_i) arrays
        Anomaly maps with the same shape as the matching mask, HIGHER = MORE ANOMALOUS. Must be
        finite. Pixels are pooled in float32 (float64 kept if the maps are float64).

    Returns
    -------
    float
        AUROC in [0, 1] over all pixels (ties count one half; values below 0.5 not flipped).

    Raises
    ------
    ValueError
        On shape mismatches, masks that cannot be binarised, non-finite maps, or when all
        pixels belong to one class.
    """
    return _auroc_from_curve(*_pixel_curve(masks, maps))


def pixel_ap(masks: ImagesLike, maps: ImagesLike) -> float:
    """Pixel-level average precision, pooling all pixels of all images.

    Parameters
    ----------
    masks : array-like of shape (n_images, H, W) or list of (H_i, W_i) arrays
        Ground-truth masks, ``mask > 0`` = anomalous pixel, ``0`` = normal. Must be numeric or
        boolean, finite and non-negative. Normal images have all-zero masks.
    maps : array-like of shape (n_images, H, W) or list of (H_i, W_i) arrays
        Anomaly maps with the same shape as the matching mask, HIGHER = MORE ANOMALOUS. Must be
        finite. Pixels are pooled in float32 (float64 kept if the maps are float64).

    Returns
    -------
    float
        Average precision in [0, 1] with anomalous pixels as the positive class.

    Raises
    ------
    ValueError
        On shape mismatches, masks that cannot be binarised, non-finite maps, or when all
        pixels belong to one class.
    """
    return _ap_from_curve(*_pixel_curve(masks, maps))


def pixel_f1_max(masks: ImagesLike, maps: ImagesLike) -> float:
    """Pixel-level maximum F1 over all thresholds, pooling all pixels of all images.

    Parameters
    ----------
    masks : array-like of shape (n_images, H, W) or list of (H_i, W_i) arrays
        Ground-truth masks, ``mask > 0`` = anomalous pixel, ``0`` = normal. Must be numeric or
        boolean, finite and non-negative. Normal images have all-zero masks.
    maps : array-like of shape (n_images, H, W) or list of (H_i, W_i) arrays
        Anomaly maps with the same shape as the matching mask, HIGHER = MORE ANOMALOUS. Must be
        finite. Pixels are pooled in float32 (float64 kept if the maps are float64).

    Returns
    -------
    float
        The best pixel F1 in [0, 1]; a pixel is predicted anomalous iff ``map >= t``.

    Raises
    ------
    ValueError
        On shape mismatches, masks that cannot be binarised, non-finite maps, or when all
        pixels belong to one class.
    """
    return _f1_max_from_curve(*_pixel_curve(masks, maps))


# --------------------------------------------------------------------------------------------
# AUPRO
# --------------------------------------------------------------------------------------------


def _partial_area(x: NDArray[np.floating], y: NDArray[np.floating], x_max: float) -> float:
    """Trapezoid area under (x, y) for x in [0, x_max]; x non-decreasing, x[0] = 0.

    The curve is linearly interpolated exactly at ``x_max``.
    """
    i = int(np.searchsorted(x, x_max, side="right"))  # x[:i] <= x_max < x[i]
    if i < x.shape[0]:
        x0, x1, y0, y1 = x[i - 1], x[i], y[i - 1], y[i]
        y_at = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)
        x = np.append(x[:i], x_max)
        y = np.append(y[:i], y_at)
    return _trapezoid(y, x)


def _pro_curve_exact(
    scores: NDArray[np.floating], region_ids: NDArray[np.int32], region_weight: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    order, starts = _descending_groups(scores)
    ids_sorted = region_ids[order]
    del order
    pro = np.cumsum(np.add.reduceat(region_weight[ids_sorted], starts))
    fp = np.cumsum(np.add.reduceat(ids_sorted == 0, starts, dtype=np.int64))
    return fp.astype(np.float64), pro


def _pro_curve_binned(
    scores: NDArray[np.floating],
    region_ids: NDArray[np.int32],
    region_weight: NDArray[np.float64],
    num_thresholds: int,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    thresholds = np.linspace(float(scores.min()), float(scores.max()), num_thresholds)
    # bin j <=> thresholds[j] <= score < thresholds[j + 1]; predicted at t_j iff bin >= j.
    bins = np.searchsorted(thresholds, scores, side="right")
    bins -= 1
    normal = region_ids == 0
    fp_per_bin = np.bincount(bins[normal], minlength=num_thresholds)
    del normal
    pro_per_bin = np.bincount(bins, weights=region_weight[region_ids], minlength=num_thresholds)
    fp = np.cumsum(fp_per_bin[::-1]).astype(np.float64)
    pro = np.cumsum(pro_per_bin[::-1])
    return fp, pro


def _aupro_from_regions(
    scores: NDArray[np.floating],
    region_ids: NDArray[np.int32],
    n_regions: int,
    max_fpr: float,
    num_thresholds: int | None,
) -> float:
    if n_regions == 0:
        raise ValueError("aupro needs at least one anomalous region: all masks are empty.")
    region_size = np.bincount(region_ids, minlength=n_regions + 1)
    n_normal = int(region_size[0])
    if n_normal == 0:
        raise ValueError("aupro needs normal pixels (mask == 0), but every pixel is anomalous.")
    region_weight = np.zeros(n_regions + 1, dtype=np.float64)
    region_weight[1:] = 1.0 / (region_size[1:] * float(n_regions))

    if num_thresholds is None:
        fp, pro = _pro_curve_exact(scores, region_ids, region_weight)
    else:
        fp, pro = _pro_curve_binned(scores, region_ids, region_weight, num_thresholds)
    fpr = np.concatenate(([0.0], fp / n_normal))
    # The weights sum to 1 by construction; dividing by the float sum removes rounding drift.
    pro = np.concatenate(([0.0], pro / pro[-1]))
    area = _partial_area(fpr, pro, max_fpr) / max_fpr
    return float(min(max(area, 0.0), 1.0))


def _check_aupro_params(max_fpr: float, num_thresholds: int | None) -> None:
    is_number = isinstance(max_fpr, int | float | np.floating | np.integer)
    if isinstance(max_fpr, bool) or not is_number or not 0 < max_fpr <= 1:
        raise ValueError(f"max_fpr must be a number in (0, 1]; got {max_fpr!r}.")
    if num_thresholds is not None and (
        isinstance(num_thresholds, bool)
        or not isinstance(num_thresholds, int | np.integer)
        or num_thresholds < 2
    ):
        raise ValueError(f"num_thresholds must be None or an integer >= 2; got {num_thresholds!r}.")


def aupro(
    masks: ImagesLike,
    maps: ImagesLike,
    max_fpr: float = AUPRO_MAX_FPR,
    num_thresholds: int | None = None,
) -> float:
    """Normalised area under the per-region-overlap (PRO) curve up to ``max_fpr``.

    Every ground-truth mask is split into connected components (8-connectivity); each
    component of each image is one *region*. A pixel is predicted anomalous at threshold ``t``
    iff ``map >= t``. For every threshold,

    * ``PRO(t)`` = mean over all regions of all images of
      ``|region ∩ {map >= t}| / |region|`` (every region weighs the same, whatever its size);
    * ``FPR(t)`` = fraction of normal pixels (``mask == 0``, pooled over all images) with
      ``map >= t``.

    The curve starts at (0, 0) and goes through the point of every distinct map value. It is
    integrated with the trapezoidal rule from FPR = 0 to ``max_fpr`` (linearly interpolated
    exactly at ``max_fpr``) and divided by ``max_fpr``, so a perfect map gives 1.0.

    The exact curve is computed with a single sort of all pixel scores and cumulative sums
    (each anomalous pixel weighs ``1 / (|region| * n_regions)``).

    Parameters
    ----------
    masks : array-like of shape (n_images, H, W) or list of (H_i, W_i) arrays
        Ground-truth masks, ``mask > 0`` = anomalous pixel, ``0`` = normal. Normal images have
        all-zero masks.
    maps : array-like of shape (n_images, H, W) or list of (H_i, W_i) arrays
        Anomaly maps with the same shape as the matching mask, HIGHER = MORE ANOMALOUS.
    max_fpr : float, default=AUPRO_MAX_FPR (0.3)
        Upper FPR integration limit, in (0, 1].
    num_thresholds : int or None, default=None
        ``None`` computes the exact curve at every distinct map value. An integer ``>= 2``
        instead uses that many thresholds evenly spaced between the minimum and maximum map
        value (binned, no full sort; a coarser approximation of the same curve).

    Returns
    -------
    float
        Normalised AUPRO in [0, 1].

    Raises
    ------
    ValueError
        On shape mismatches, masks that cannot be binarised, non-finite maps, when there is no
        anomalous region or no normal pixel, or invalid ``max_fpr`` / ``num_thresholds``.
    """
    _check_aupro_params(max_fpr, num_thresholds)
    scores, region_ids, n_regions = _pool_pixels(masks, maps, regions=True)
    return _aupro_from_regions(
        scores,
        region_ids,  # type: ignore[arg-type]
        n_regions,
        float(max_fpr),
        None if num_thresholds is None else int(num_thresholds),
    )


# --------------------------------------------------------------------------------------------
# Labels, scorers and the all-in-one report
# --------------------------------------------------------------------------------------------


def as_anomaly_labels(y: ArrayLike) -> NDArray[np.int_]:
    """Convert labels in either convention to ``{0, 1}`` with ``1`` = anomalous.

    Accepted conventions:

    * ``{0, 1}`` (or booleans): ``1`` = anomalous, ``0`` = normal; returned as is.
    * sklearn's outlier convention ``{-1, +1}``: ``-1`` = outlier/anomalous, ``+1`` = inlier;
      converted with ``y == -1``.

    Parameters
    ----------
    y : array-like of shape (n_samples,)
        Labels.

    Returns
    -------
    ndarray of int of shape (n_samples,)
        ``1`` = anomalous, ``0`` = normal.

    Raises
    ------
    ValueError
        If ``y`` is not 1-D, contains only ``1`` (ambiguous: all anomalous in the 0/1
        convention, all normal in the -1/+1 convention), mixes the two conventions, or
        contains any other value.
    """
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"y must be 1-D with shape (n_samples,); got shape {arr.shape}.")
    values = set(np.unique(arr).tolist()) if arr.size else set()
    if values == {1}:
        raise ValueError(
            "y contains only the value 1, which is ambiguous: it means 'all anomalous' in the "
            "{0, 1} convention (1 = anomalous) but 'all normal' in sklearn's {-1, +1} "
            "convention (-1 = anomalous). Pass 0/1 labels with both classes, or -1/+1 labels "
            "including at least one -1."
        )
    if values <= {0, 1}:
        return arr.astype(np.int_)
    if values <= {-1, 1}:
        return (arr == -1).astype(np.int_)
    unexpected = sorted((v for v in values if v not in (-1, 0, 1)), key=repr)
    if unexpected:
        raise ValueError(
            f"y contains unexpected label values {unexpected}; expected {{0, 1}} "
            "(1 = anomalous) or {-1, +1} (-1 = anomalous)."
        )
    raise ValueError(
        f"y mixes label conventions (values {sorted(values)}); use either {{0, 1}} "
        "(1 = anomalous) or {-1, +1} (-1 = anomalous), not both."
    )


def _scorer_inputs(estimator: Any, X: Any, y: Any) -> tuple[NDArray[np.int_], NDArray[Any]]:
    if y is None:
        raise ValueError(
            "This scorer needs ground-truth labels y (1 = anomalous or -1 = outlier); got None."
        )
    labels = as_anomaly_labels(y)
    scores = -np.asarray(estimator.score_samples(X), dtype=np.float64)
    return labels, scores


_SCORER_DOC = """Scorer ``(estimator, X, y) -> float`` giving the {what}.

    For ``GridSearchCV(scoring=...)`` and ``cross_val_score``. The anomaly score is
    ``-estimator.score_samples(X)`` (sklearn outlier detectors return HIGHER = MORE NORMAL
    from ``score_samples``), so HIGHER = MORE ANOMALOUS as in :func:`{metric}`, and anomalies
    are the positive class. Unlike sklearn's ``"roc_auc"`` scorer, which returns
    ``1 - AUROC`` for outlier detectors, it does not rank them backwards.

    Parameters
    ----------
    estimator : object
        Fitted estimator with a ``score_samples`` method (HIGHER = MORE NORMAL).
    X : array-like
        Samples passed to ``score_samples``.
    y : array-like of shape (n_samples,)
        Labels, either ``{{0, 1}}`` with ``1`` = anomalous or ``{{-1, +1}}`` with ``-1`` =
        anomalous (see :func:`as_anomaly_labels`).

    Returns
    -------
    float
        The {what}; greater is better.
    """


def _anomaly_scorer(
    metric: Callable[[NDArray[np.int_], NDArray[Any]], float], name: str, what: str
) -> Callable[[Any, Any, ArrayLike], float]:
    """The scorer ``name(estimator, X, y)``: ``metric`` of the anomaly scores.

    Bound to ``name`` at module level, it pickles by reference (``n_jobs`` in
    model selection), like a function written out.
    """

    def scorer(estimator: Any, X: Any, y: ArrayLike) -> float:
        return metric(*_scorer_inputs(estimator, X, y))

    scorer.__name__ = scorer.__qualname__ = name
    scorer.__doc__ = _SCORER_DOC.format(what=what, metric=metric.__name__)
    return scorer


image_auroc_scorer = _anomaly_scorer(image_auroc, "image_auroc_scorer", "image AUROC")
image_ap_scorer = _anomaly_scorer(image_ap, "image_ap_scorer", "image average precision")
f1_max_scorer = _anomaly_scorer(f1_max, "f1_max_scorer", "best image-level F1 over thresholds")


def evaluate(
    y_true: ArrayLike,
    scores: ArrayLike,
    masks: ImagesLike | None = None,
    maps: ImagesLike | None = None,
) -> dict[str, float]:
    """Compute all image-level and (optionally) pixel-level metrics at once.

    Parameters
    ----------
    y_true : array-like of shape (n_images,)
        Image labels, ``1`` = anomalous, ``0`` = normal.
    scores : array-like of shape (n_images,)
        Image anomaly scores, HIGHER = MORE ANOMALOUS.
    masks : array-like of shape (n_images, H, W) or list of (H_i, W_i) arrays, optional
        Ground-truth masks for every image, ``mask > 0`` = anomalous pixel (normal images have
        all-zero masks). Must be given together with ``maps``.
    maps : array-like of shape (n_images, H, W) or list of (H_i, W_i) arrays, optional
        Anomaly maps, HIGHER = MORE ANOMALOUS, same shapes as ``masks``.

    Returns
    -------
    dict of str to float
        ``image_auroc``, ``image_ap``, ``image_f1_max`` and, when masks and maps are given,
        ``pixel_auroc``, ``pixel_ap``, ``pixel_f1_max`` and ``aupro`` (up to :data:`AUPRO_MAX_FPR`).

    Raises
    ------
    ValueError
        On any invalid input (see the individual metrics), when only one of ``masks`` /
        ``maps`` is given, or when their number of images differs from ``len(y_true)``.
    """
    labels, s = _check_image_inputs(y_true, scores)
    fps, tps = _clf_curve(labels, s)
    result = {
        "image_auroc": _auroc_from_curve(fps, tps),
        "image_ap": _ap_from_curve(fps, tps),
        "image_f1_max": _f1_max_from_curve(fps, tps),
    }
    if masks is None and maps is None:
        return result
    if masks is None or maps is None:
        raise ValueError("masks and maps must be given together (or both left as None).")

    # One pooling feeds all four pixel metrics: the full test set's pixels are copied and
    # labelled once, not once per metric as calling pixel_auroc, ..., aupro would.
    pixel_scores, region_ids, n_regions = _pool_pixels(masks, maps, regions=True)
    n_images = len(_as_image_list(maps, "maps"))
    if n_images != labels.shape[0]:
        raise ValueError(
            f"maps/masks describe {n_images} images but y_true has {labels.shape[0]} labels."
        )
    pixel_labels = region_ids > 0
    _require_both_classes(
        int(np.count_nonzero(pixel_labels)), pixel_labels.shape[0], "masks (pixels)"
    )
    fps, tps = _clf_curve(pixel_labels, pixel_scores)
    del pixel_labels
    result["pixel_auroc"] = _auroc_from_curve(fps, tps)
    result["pixel_ap"] = _ap_from_curve(fps, tps)
    result["pixel_f1_max"] = _f1_max_from_curve(fps, tps)
    result["aupro"] = _aupro_from_regions(
        pixel_scores,
        region_ids,  # type: ignore[arg-type]
        n_regions,
        AUPRO_MAX_FPR,
        None,
    )
    return result


def operating_point(y_true: ArrayLike, flagged: ArrayLike) -> dict[str, float | int]:
    """What a fixed threshold does: precision, recall, F1 and false-alarm rate.

    For images, ``y_true`` are the labels and ``flagged`` the decisions
    (``predict(X) == -1``); for pixels, ground-truth masks and predicted
    masks of the same shapes (all pixels pooled).

    Parameters
    ----------
    y_true : array-like of bool or {0, 1}
        ``1`` / True = anomalous (image or pixel); any shape.
    flagged : array-like of bool
        ``True`` = called anomalous, same shape as ``y_true``.

    Returns
    -------
    dict
        ``precision`` (flagged that are anomalous), ``recall`` (anomalous that
        are flagged), ``f1``, ``false_alarm_rate`` (normal that are flagged),
        and the counts ``n_anomalous``, ``n_normal``, ``n_flagged``. A ratio
        with nothing to count (e.g. precision when nothing is flagged) is 0.0,
        as scikit-learn's ``zero_division=0``.
    """
    truth = np.asarray(y_true) > 0
    flags = np.asarray(flagged).astype(bool)
    if truth.shape != flags.shape:
        raise ValueError(f"y_true has shape {truth.shape} but flagged has shape {flags.shape}")
    tp = int(np.count_nonzero(truth & flags))
    n_anomalous = int(np.count_nonzero(truth))
    n_flagged = int(np.count_nonzero(flags))
    n_normal = truth.size - n_anomalous
    precision = tp / n_flagged if n_flagged else 0.0
    recall = tp / n_anomalous if n_anomalous else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "false_alarm_rate": (n_flagged - tp) / n_normal if n_normal else 0.0,
        "n_anomalous": n_anomalous,
        "n_normal": n_normal,
        "n_flagged": n_flagged,
    }


def warn_on_anomalous_labels(y, n_images: int) -> None:
    """Warn when fit's (ignored) ``y`` marks images anomalous: they are trained on as normal."""
    if y is None:
        return
    values = np.asarray(y)
    if values.size == 0 or set(np.unique(values).tolist()) <= {1}:
        return  # all +1: sklearn's "all inliers"
    try:
        anomalous = int(as_anomaly_labels(values).sum())
    except (TypeError, ValueError):
        return  # y is not used; labels it cannot read are no error
    if anomalous:
        warnings.warn(
            f"fit trains on every image of X as normal, but y marks {anomalous} of {n_images} "
            "anomalous: they are learned as normal (a GridSearchCV refit or a K-fold split on "
            "a labelled test set?). Fit on normal images only.",
            UserWarning,
            stacklevel=4,
        )
