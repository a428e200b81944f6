"""Decision thresholds: the contamination rule, calibration splits, per-group tables.

Scores here are anomaly-oriented (higher = more anomalous, ``-score_samples``)
and maps are anomaly maps. A :class:`ThresholdTable` holds a pooled image and
pixel threshold and, when calibration knew each image's group (category),
one pair per group; the detector keeps one as ``thresholds_`` and the model
file stores it.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from numbers import Real

import numpy as np

from skuniad._choices import CALIBRATION_OBJECTIVES
from skuniad.metrics import as_anomaly_labels, operating_point

_MAD_TO_SIGMA = 1.4826
_AUTO_SIGMAS = 3.0
MIN_IMAGES = 5
"""A threshold set from fewer images than this (and a training set this small) is noise."""


def contamination_threshold(values, contamination) -> float:
    """Threshold on anomaly-oriented ``values`` so that ``contamination`` of them lie above.

    ``"auto"``: three robust standard deviations (1.4826 x MAD) beyond the
    median; a float: that quantile from the top.
    """
    values = np.asarray(values, dtype=np.float64)
    if contamination == "auto":
        median = np.median(values)
        spread = _MAD_TO_SIGMA * np.median(np.abs(values - median))
        return float(median + _AUTO_SIGMAS * spread)
    return float(np.quantile(values, 1.0 - contamination))


def check_groups(groups, n: int) -> np.ndarray | None:
    """``groups`` as an object array of Python str / int labels, one per image."""
    if groups is None:
        return None
    array = np.asarray(groups)
    if array.ndim != 1:
        raise ValueError(f"groups must be one label per image (1-D), got shape {array.shape}")
    if len(array) != n:
        raise ValueError(f"groups has {len(array)} labels but there are {n} images")
    labels = [g.item() if isinstance(g, np.generic) else g for g in array]
    bad = [g for g in labels if isinstance(g, bool) or not isinstance(g, (str, int))]
    if bad:
        raise ValueError(f"groups must be strings or integers, got {bad[0]!r}")
    out = np.empty(n, dtype=object)
    out[:] = labels
    return out


def check_group_sizes(groups: np.ndarray | None) -> None:
    """Every group needs :data:`MIN_IMAGES` calibration images for thresholds of its own."""
    if groups is None:
        return
    for group in unique(groups):
        count = sum(g == group for g in groups)
        if count < MIN_IMAGES:
            raise ValueError(
                f"group {group!r} has {count} calibration images; its own thresholds need at "
                f"least {MIN_IMAGES} (give more normal images of it, or leave groups out for "
                "one pooled threshold)"
            )


def unique(labels) -> list:
    """Distinct labels in first-seen order (str and int labels may mix: no sorting)."""
    return list(dict.fromkeys(labels))


def validation_split(
    n: int, groups: np.ndarray | None, fraction: float | None, seed: int
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Sorted (train, held-out) indices: a seeded ``fraction`` of each group, or (None, None).

    The held-out count of each part is ``ceil(fraction * size)``. Both sides
    of each part need :data:`MIN_IMAGES` images, else a one-line ValueError.
    """
    if fraction is None:
        return None, None
    rng = np.random.RandomState(seed)
    parts = {None: np.arange(n)} if groups is None else {}
    if groups is not None:
        for group in unique(groups):
            parts[group] = np.flatnonzero([g == group for g in groups])
    held_out = []
    for group, members in parts.items():
        n_held_out = int(np.ceil(fraction * len(members)))
        n_train = len(members) - n_held_out
        if min(n_held_out, n_train) < MIN_IMAGES:
            where = "" if group is None else f" of group {group!r}"
            raise ValueError(
                f"validation_fraction={fraction:g} splits the {len(members)} images{where} "
                f"into {n_train} for training and {n_held_out} for the thresholds; each part "
                f"needs at least {MIN_IMAGES}"
            )
        held_out.append(rng.permutation(members)[:n_held_out])
    held_out = np.sort(np.concatenate(held_out))
    return np.setdiff1d(np.arange(n), held_out), held_out


def labels_above(anomaly_scores, thresholds) -> np.ndarray:
    """+1 / -1 from anomaly scores and per-image thresholds: -1 where the score exceeds it.

    A NaN score is -1: an image the model cannot score is never normal by accident.
    """
    anomaly_scores = np.asarray(anomaly_scores, dtype=np.float64)
    return np.where(anomaly_scores <= thresholds, 1, -1).astype(int)


def masks_above(maps, thresholds):
    """``maps > threshold`` per image; ``maps`` an (n, H, W) array or a list of (H, W) ones.

    A None in a list (an image that could not be read) stays None.
    """
    if isinstance(maps, list):
        return [None if m is None else m > float(t) for m, t in zip(maps, thresholds, strict=True)]
    return maps > np.asarray(thresholds, dtype=maps.dtype).reshape(-1, 1, 1)


@dataclasses.dataclass(frozen=True)
class ThresholdTable:
    """Image and pixel thresholds, pooled and per group.

    ``image`` is on the anomaly score (``-score_samples``; the detector's
    ``offset_`` is ``-image``), ``pixel`` on anomaly-map values. ``groups``
    maps a group label to its ``(image, pixel)`` pair; an image of a group
    without one gets the pooled pair, or an error (``unknown_group="error"``).
    """

    image: float
    pixel: float
    groups: dict = dataclasses.field(default_factory=dict)
    calibration: dict | None = None
    """How the thresholds were chosen (``objective``, ``target``) and what they achieved on
    the calibration images (``achieved``: pooled and per group); None for the
    contamination rule at ``fit``."""
    held_out: dict | None = None
    """The normal images ``fit`` held out (``validation_fraction``): their ``scores``,
    ``map_maxima`` and ``groups`` (None without groups), as lists. Labelled
    calibration counts them among its normal images; None when nothing was held out."""

    @classmethod
    def fit(
        cls, scores, map_maxima, groups: np.ndarray | None, contamination, held_out: bool = False
    ) -> ThresholdTable:
        """The ``contamination`` rule on calibration scores and per-image map maxima.

        Pooled over all images and, with ``groups``, on each group's images.
        ``held_out``: the images are normal ones ``fit`` held out of training;
        the table keeps their values for a later labelled calibration.
        """
        scores = np.asarray(scores, dtype=np.float64)
        map_maxima = np.asarray(map_maxima)
        check_group_sizes(groups)
        table = {}
        if groups is not None:
            for group in unique(groups):
                members = np.array([g == group for g in groups])
                table[group] = (
                    contamination_threshold(scores[members], contamination),
                    contamination_threshold(map_maxima[members], contamination),
                )
        values = None
        if held_out:
            values = {
                "scores": scores.tolist(),
                "map_maxima": map_maxima.astype(np.float64).tolist(),
                "groups": None if groups is None else list(groups),
            }
        return cls(
            contamination_threshold(scores, contamination),
            contamination_threshold(map_maxima, contamination),
            table,
            held_out=values,
        )

    def image_for(self, groups, n: int, unknown_group: str = "pooled") -> np.ndarray:
        """Each of ``n`` images' threshold on its anomaly score: its group's, else pooled."""
        return self._per_image(groups, n, 0, self.image, unknown_group)

    def pixel_for(self, groups, n: int, unknown_group: str = "pooled") -> np.ndarray:
        """Each of ``n`` images' threshold on its anomaly map: its group's, else pooled."""
        return self._per_image(groups, n, 1, self.pixel, unknown_group)

    def _per_image(self, groups, n: int, which: int, pooled: float, unknown_group: str):
        thresholds = np.full(n, float(pooled))
        groups = check_groups(groups, n)
        if groups is None:
            return thresholds
        unknown = unique([g for g in groups if g not in self.groups])
        if unknown and unknown_group == "error":
            known = ", ".join(repr(g) for g in self.groups) or "none"
            raise ValueError(
                f"no threshold for group(s) {', '.join(repr(g) for g in unknown)} "
                f"(this model's groups: {known}) and unknown_group='error' forbids the "
                "pooled fallback"
            )
        for i, group in enumerate(groups):
            if group in self.groups:
                thresholds[i] = self.groups[group][which]
        return thresholds

    def to_metadata(self) -> dict:
        """The table as a model file's JSON ``fitted`` entries (format 2)."""
        metadata = {
            "offset_": -float(self.image),
            "pixel_threshold_": float(self.pixel),
            "group_thresholds": [
                [group, float(image), float(pixel)] for group, (image, pixel) in self.groups.items()
            ],
        }
        if self.calibration is not None:  # older readers ignore these two
            metadata["calibration"] = self.calibration
        if self.held_out is not None:
            metadata["held_out"] = self.held_out
        return metadata

    @classmethod
    def from_metadata(cls, fitted: dict) -> ThresholdTable | None:
        """The table of a model file's ``fitted`` entries; None for an uncalibrated model."""
        if fitted.get("offset_") is None:
            return None
        groups = {
            group: (float(image), float(pixel))
            for group, image, pixel in fitted.get("group_thresholds", [])
        }
        thresholds = (-float(fitted["offset_"]), float(fitted["pixel_threshold_"]))
        calibration = fitted.get("calibration")
        return cls(
            *thresholds,
            groups,
            calibration if isinstance(calibration, dict) else None,
            fitted.get("held_out"),  # checked on load (_model_checks.check_fitted)
        )


def decision_thresholds(
    table: ThresholdTable | None,
    groups,
    n: int,
    unknown_group: str = "pooled",
    threshold: float | None = None,
    pixel_threshold: float | None = None,
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Each of ``n`` images' (image, pixel) thresholds: the number given, else the table's.

    None where neither exists (a model not calibrated, and no number given).
    """
    groups = check_groups(groups, n)
    for name, value in (("threshold", threshold), ("pixel_threshold", pixel_threshold)):
        if value is not None and not np.isfinite(float(value)):
            raise ValueError(f"{name} must be a finite number, got {value!r}")

    def per_image(explicit: float | None, method) -> np.ndarray | None:
        if explicit is not None:
            return np.full(n, float(explicit))
        return None if table is None else method(table, groups, n, unknown_group)

    return (
        per_image(threshold, ThresholdTable.image_for),
        per_image(pixel_threshold, ThresholdTable.pixel_for),
    )


# ------------------------------------------------------------ labelled calibration
def check_objective(objective: str, target, defect_rate=None) -> None:
    """A one-line ValueError for an unknown objective, or a target or defect rate it cannot use."""
    if objective not in CALIBRATION_OBJECTIVES:
        raise ValueError(
            f"objective must be one of {', '.join(map(repr, CALIBRATION_OBJECTIVES))}, "
            f"got {objective!r}"
        )
    if objective in ("false_alarms", "recall"):
        if target is None or isinstance(target, bool) or not 0 < float(target) < 1:
            raise ValueError(
                f"objective={objective!r} needs a target in (0, 1) (e.g. 0.05 for false alarms, "
                f"0.9 for recall), got {target!r}"
            )
    elif target is not None:
        raise ValueError(f"objective={objective!r} takes no target, got target={target!r}")
    if defect_rate is None:
        return
    if objective != "f1":
        raise ValueError(f"defect_rate is for objective='f1', not {objective!r}")
    rates = defect_rate.values() if isinstance(defect_rate, Mapping) else [defect_rate]
    for rate in rates:
        if isinstance(rate, bool) or not isinstance(rate, Real) or not 0 < rate < 1:
            raise ValueError(
                "defect_rate must be a share in (0, 1), or a mapping of groups to such shares; "
                f"got {rate!r}"
            )


def _just_below(value, dtype) -> float:
    """The largest value of ``dtype`` below ``value``: ``x > t`` then flags ``value`` too."""
    value = np.asarray(value, dtype=dtype)
    return float(np.nextafter(value, np.asarray(-np.inf, dtype=dtype)))


def f1_threshold(labels, values, weights=None) -> float:
    """The threshold ``t`` whose decisions ``values > t`` have the highest F1 on ``labels``.

    Candidates are the distinct values: flagging every value from the top
    down to one of them. Ties in F1 go to the higher threshold (fewer alarms).
    ``weights`` (default 1) count each value that many times.
    """
    labels = np.asarray(labels, dtype=bool).ravel()
    values = np.asarray(values).ravel()
    weights = np.ones(len(values)) if weights is None else np.asarray(weights, dtype=np.float64)
    order = np.argsort(-values, kind="stable")
    ordered, hits, counts = values[order], labels[order], weights[order]
    last = np.r_[ordered[1:] != ordered[:-1], True]  # the last of each run of equal values
    tp = np.cumsum(hits * counts)[last]
    flagged = np.cumsum(counts)[last]
    f1 = 2 * tp / (flagged + np.sum(weights[labels]))
    best = int(np.argmax(f1))
    distinct = ordered[last]
    if best + 1 < len(distinct):
        return float(distinct[best + 1])  # flags exactly the values >= distinct[best]
    return _just_below(distinct[best], values.dtype)


def smoothed_f1_threshold(defect_values, normal_values, defect_rate: float) -> float:
    """The threshold of highest F1 at ``defect_rate``, each class's values kernel-smoothed.

    From a handful of defects, the F1 of raw counts jumps at every value and
    where its maximum falls is largely chance. Here the share of each class
    above ``t`` is that of a Gaussian kernel density on its values (bandwidth
    by the normal-reference rule with a robust spread, 1.06 min(sd, IQR /
    1.34) n^-1/5; a class of equal values keeps its step), and F1 at defect
    rate p, recall R and false-alarm rate A is 2pR / (pR + p + (1 - p)A).
    Candidates: 2048 evenly spaced thresholds from the highest value to well
    below the lowest (flag everything); ties go to the higher threshold.
    """
    defects = np.asarray(defect_values, dtype=np.float64).ravel()
    normals = np.asarray(normal_values, dtype=np.float64).ravel()
    widths = [1.06 * _spread(v) * len(v) ** -0.2 for v in (defects, normals)]
    values = np.r_[defects, normals]
    lowest = values.min() - 4 * max(widths)
    candidates = np.r_[np.linspace(values.max(), lowest, 2047), np.nextafter(lowest, -np.inf)]
    recall = _share_above(defects, candidates, widths[0])
    false_alarms = _share_above(normals, candidates, widths[1])
    p = defect_rate
    f1 = 2 * p * recall / (p * recall + p + (1 - p) * false_alarms)
    return float(candidates[int(np.argmax(f1))])


def _spread(values: np.ndarray) -> float:
    """The standard deviation, or less where the interquartile range says the tails are long."""
    quartiles = np.percentile(values, [25, 75])
    iqr_sigma = (quartiles[1] - quartiles[0]) / 1.34
    return min(np.std(values), iqr_sigma) if iqr_sigma > 0 else float(np.std(values))


def _share_above(values: np.ndarray, thresholds: np.ndarray, width: float) -> np.ndarray:
    """For each threshold, the share of ``values`` above it, smoothed by a kernel of ``width``."""
    from scipy.special import ndtr  # imported here: scipy takes a second to load

    total = np.zeros(len(thresholds))
    for start in range(0, len(values), 4096):  # bounded memory for many values
        above = values[None, start : start + 4096] - thresholds[:, None]
        total += (above > 0 if width == 0 else ndtr(above / width)).sum(axis=1)
    return total / len(values)


def false_alarm_threshold(normal_values, target: float) -> float:
    """The lowest ``t`` with at most ``target`` of ``normal_values`` above it."""
    ordered = np.sort(np.asarray(normal_values).ravel())[::-1]
    allowed = int(np.floor(target * len(ordered) + 1e-9))
    return float(ordered[allowed])


def recall_threshold(anomalous_values, target: float) -> float:
    """The highest ``t`` with at least ``target`` of ``anomalous_values`` above it."""
    values = np.asarray(anomalous_values).ravel()
    ordered = np.sort(values)[::-1]
    needed = max(1, int(np.ceil(target * len(ordered) - 1e-9)))
    return _just_below(ordered[needed - 1], values.dtype)


def _achieved(labels, flagged) -> dict:
    point = operating_point(labels, flagged)
    return {key: float(point[key]) for key in ("f1", "recall", "false_alarm_rate")}


def _labelled_thresholds(
    scores, map_maxima, labels, pixels, objective: str, target, contamination, held_out, rate
) -> tuple[tuple[float, float], dict]:
    """One part's (image, pixel) thresholds and what they achieve on its images.

    ``pixels``: ``(masks, maps)`` of its images with masks, at input size, or
    None. ``held_out``: ``(scores, map_maxima)`` of more normal images, which
    ``"false_alarms"`` counts with the given ones and ``"f1"`` uses for its
    false-alarm rate. ``rate``: the defect rate ``"f1"`` aims at (None: the
    share of defective images in ``labels``).
    """
    normal = labels == 0
    extra_scores, extra_maxima = held_out
    if objective == "contamination":
        image = contamination_threshold(scores[normal], contamination)
    elif objective == "f1":
        rate = float(np.mean(~normal) if rate is None else rate)
        image = smoothed_f1_threshold(scores[~normal], np.r_[scores[normal], extra_scores], rate)
    elif objective == "false_alarms":
        image = false_alarm_threshold(np.r_[scores[normal], extra_scores], target)
    else:
        image = recall_threshold(scores[~normal], target)
    achieved = {"image": _achieved(labels, scores > image), "pixel": None}
    if objective == "f1":
        achieved["defect_rate"] = rate
    if pixels is not None:  # every pixel with ground truth, pooled
        truth = np.concatenate([mask.ravel() for mask in pixels[0]])
        values = np.concatenate([image_map.ravel() for image_map in pixels[1]])
    if pixels is not None and objective == "f1":
        pixel = f1_threshold(truth, values)
    elif pixels is not None and objective == "recall":
        pixel = recall_threshold(values[truth], target)
    elif objective == "false_alarms":  # the image rules on the normal images' map maxima:
        pixel = false_alarm_threshold(np.r_[map_maxima[normal], extra_maxima], target)
    else:
        pixel = contamination_threshold(map_maxima[normal], contamination)
    if pixels is not None:
        achieved["pixel"] = _achieved(truth, values > np.asarray(pixel, dtype=values.dtype))
    return (image, pixel), achieved


def check_calibration_labels(y, n: int, objective: str) -> np.ndarray:
    """``y`` as 0 / 1 labels (1 = anomalous); all normal when None and the objective allows."""
    if y is None:
        if objective in ("f1", "recall"):
            raise ValueError(
                f"objective={objective!r} needs labels y (1 or -1 = defective, 0 or +1 = normal) "
                "for the calibration images"
            )
        return np.zeros(n, dtype=int)
    labels = as_anomaly_labels(y)
    if len(labels) != n:
        raise ValueError(f"y has {len(labels)} labels but there are {n} images")
    return labels


def _check_class_counts(labels, objective: str, where: str) -> None:
    needs = {"contamination": ("normal",), "false_alarms": ("normal",)}.get(
        objective, ("normal", "defective")
    )
    for name in needs:
        count = int(np.sum(labels == (name == "defective")))
        if count < MIN_IMAGES:
            raise ValueError(
                f"{where} has {count} {name} calibration images; objective={objective!r} needs "
                f"at least {MIN_IMAGES}"
            )


def calibrate_table(
    scores,
    map_maxima,
    labels,
    groups: np.ndarray | None,
    *,
    objective: str,
    target=None,
    contamination="auto",
    pixels=None,
    unknown_group: str = "error",
    held_out: dict | None = None,
    defect_rate=None,
) -> ThresholdTable:
    """Thresholds chosen for ``objective`` on labelled calibration images, pooled and per group.

    ``scores`` are anomaly scores, ``map_maxima`` each image's anomaly-map
    maximum, ``labels`` 0 / 1 (1 = defective). ``pixels``: a list with, per
    image, ``(mask, map)`` at input size, or None for an image without mask
    (or None for no masks at all): with masks, the pixel threshold of ``"f1"``
    and ``"recall"`` is chosen on the pooled pixels; otherwise it follows the
    image rule on the normal images' map maxima. A group with too few images
    of a class the objective needs raises, or with ``unknown_group="pooled"``
    keeps the pooled thresholds, with a warning. ``held_out``: a table's
    :attr:`ThresholdTable.held_out`, more normal images for ``"false_alarms"``
    and ``"f1"`` (each group's own); the new table keeps it. ``defect_rate``:
    ``"f1"``'s defect rate, one share or a mapping of groups to shares (a part
    without one: its own share of defective images).
    """
    scores = np.asarray(scores, dtype=np.float64)
    map_maxima = np.asarray(map_maxima)
    labels = np.asarray(labels)

    def held_out_of(group) -> tuple[np.ndarray, np.ndarray]:
        if held_out is None:
            return np.empty(0), np.empty(0)
        scores, maxima = np.asarray(held_out["scores"]), np.asarray(held_out["map_maxima"])
        if group is None:  # the pooled thresholds count every held-out image
            return scores, maxima
        kept = np.array([g == group for g in held_out["groups"] or []], dtype=bool)
        return (scores[kept], maxima[kept]) if kept.size else (np.empty(0), np.empty(0))

    def part(members: np.ndarray, where: str, group=None):
        _check_class_counts(labels[members], objective, where)
        chosen = None
        if pixels is not None:
            chosen = [pixels[i] for i in np.flatnonzero(members) if pixels[i] is not None]
        if not chosen or not any(mask.any() for mask, _ in chosen):  # no defect pixel known
            chosen = None
        masks_and_maps = ([mask for mask, _ in chosen], [m for _, m in chosen]) if chosen else None
        return _labelled_thresholds(
            scores[members],
            map_maxima[members],
            labels[members],
            masks_and_maps,
            objective,
            target,
            contamination,
            held_out_of(group),
            defect_rate.get(group) if isinstance(defect_rate, Mapping) else defect_rate,
        )

    pooled, pooled_achieved = part(np.ones(len(scores), dtype=bool), "the calibration set")
    table, achieved = {}, []
    for group in unique(groups) if groups is not None else []:
        members = np.array([g == group for g in groups])
        try:
            table[group], group_achieved = part(members, f"group {group!r}", group)
        except ValueError as exc:
            if unknown_group != "pooled":
                raise
            warnings.warn(f"{exc}: it keeps the pooled thresholds", UserWarning, stacklevel=4)
            continue
        achieved.append([group, group_achieved])
    calibration = {
        "objective": objective,
        "target": None if target is None else float(target),
        "pooled": pooled_achieved,
        "groups": achieved,
    }
    return ThresholdTable(*pooled, table, calibration, held_out)


def check_calibration_inputs(
    y,
    masks,
    groups,
    sizes: list[tuple[int, int]],
    objective: str,
    unknown_group: str,
    defect_rate=None,
) -> tuple[np.ndarray, list | None]:
    """``calibrate``'s labels and masks, checked (with the class counts) before any work."""
    labels = check_calibration_labels(y, len(sizes), objective)
    check_calibration_set(labels, groups, objective, unknown_group)
    if isinstance(defect_rate, Mapping):
        known = set() if groups is None else set(groups)
        strangers = [g for g in defect_rate if g not in known]
        if strangers:
            raise ValueError(
                f"defect_rate names group(s) {', '.join(map(repr, strangers))} that no "
                "calibration image belongs to"
            )
    return labels, check_calibration_masks(masks, sizes, labels)


def check_calibration_set(labels, groups, objective: str, unknown_group: str) -> None:
    """Enough images of each class the objective needs, pooled and (policy "error") per group."""
    _check_class_counts(labels, objective, "the calibration set")
    if groups is not None and unknown_group == "error":
        for group in unique(groups):
            members = np.array([g == group for g in groups])
            _check_class_counts(labels[members], objective, f"group {group!r}")


def check_calibration_masks(masks, sizes: list[tuple[int, int]], labels) -> list | None:
    """``masks`` as a list of boolean arrays (None: no mask), each of its image's size."""
    if masks is None:
        return None
    masks = list(masks)
    if len(masks) != len(sizes):
        raise ValueError(f"masks has {len(masks)} entries but there are {len(sizes)} images")
    checked = []
    for i, (mask, size, label) in enumerate(zip(masks, sizes, labels, strict=True)):
        if mask is None:  # a normal image has no defect pixel; a defective one is left out
            checked.append(None if label else np.zeros(size, dtype=bool))
            continue
        mask = np.asarray(mask)
        if mask.shape != tuple(size):
            raise ValueError(
                f"mask {i} has shape {mask.shape} but image {i} is {size[0]} x {size[1]}: "
                "masks must be in the order of the images, one per image, at its size"
            )
        mask = mask > 0
        if mask.any() and not label:
            raise ValueError(f"mask {i} marks defect pixels on an image labelled normal")
        checked.append(mask)
    return checked
