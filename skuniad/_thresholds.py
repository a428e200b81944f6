"""Decision thresholds: the contamination rule, calibration splits, per-group tables.

Scores here are anomaly-oriented (higher = more anomalous, ``-score_samples``)
and maps are anomaly maps. A :class:`ThresholdTable` holds a pooled image and
pixel threshold and, when calibration knew each image's group (category),
one pair per group; the detector keeps one as ``thresholds_`` and the model
file stores it.
"""

from __future__ import annotations

import dataclasses

import numpy as np

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
    """+1 / -1 from anomaly scores and per-image thresholds: -1 where the score exceeds it."""
    anomaly_scores = np.asarray(anomaly_scores, dtype=np.float64)
    return np.where(anomaly_scores > thresholds, -1, 1).astype(int)


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

    @classmethod
    def fit(cls, scores, map_maxima, groups: np.ndarray | None, contamination) -> ThresholdTable:
        """The ``contamination`` rule on calibration scores and per-image map maxima.

        Pooled over all images and, with ``groups``, on each group's images.
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
        return cls(
            contamination_threshold(scores, contamination),
            contamination_threshold(map_maxima, contamination),
            table,
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
        return {
            "offset_": -float(self.image),
            "pixel_threshold_": float(self.pixel),
            "group_thresholds": [
                [group, float(image), float(pixel)] for group, (image, pixel) in self.groups.items()
            ],
        }

    @classmethod
    def from_metadata(cls, fitted: dict) -> ThresholdTable | None:
        """The table of a model file's ``fitted`` entries; None for an uncalibrated model."""
        if fitted.get("offset_") is None:
            return None
        groups = {
            group: (float(image), float(pixel))
            for group, image, pixel in fitted.get("group_thresholds", [])
        }
        return cls(-float(fitted["offset_"]), float(fitted["pixel_threshold_"]), groups)


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

    def per_image(explicit: float | None, method) -> np.ndarray | None:
        if explicit is not None:
            return np.full(n, float(explicit))
        return None if table is None else method(table, groups, n, unknown_group)

    return (
        per_image(threshold, ThresholdTable.image_for),
        per_image(pixel_threshold, ThresholdTable.pixel_for),
    )
