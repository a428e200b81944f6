"""Tests for skuniad.metrics (labels: 1 = anomalous; scores/maps: higher = more anomalous)."""

from __future__ import annotations

import itertools
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage
from sklearn.ensemble import IsolationForest
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score
from sklearn.model_selection import cross_val_score

from skuniad import metrics
from skuniad.metrics import (
    as_anomaly_labels,
    aupro,
    evaluate,
    f1_max,
    f1_max_scorer,
    image_ap,
    image_ap_scorer,
    image_auroc,
    image_auroc_scorer,
    pixel_ap,
    pixel_auroc,
    pixel_f1_max,
)

HYPOTHESIS = settings(max_examples=40, deadline=None, database=None)


# --------------------------------------------------------------------------------------------
# Independent brute-force references
# --------------------------------------------------------------------------------------------


def pairwise_auroc(y: np.ndarray, s: np.ndarray) -> float:
    """Fraction of (anomalous, normal) pairs ordered correctly; ties count one half."""
    pos = s[y == 1]
    neg = s[y == 0]
    total = 0.0
    for p, n in itertools.product(pos, neg):
        total += 1.0 if p > n else 0.5 if p == n else 0.0
    return total / (len(pos) * len(neg))


def bruteforce_aupro(masks: list[np.ndarray], maps: list[np.ndarray], max_fpr: float) -> float:
    """Loop over every distinct map value as threshold (pixel predicted iff map >= t)."""
    structure = np.ones((3, 3), dtype=int)
    regions = []  # (image index, boolean region mask)
    for i, m in enumerate(masks):
        lab, n = ndimage.label(m > 0, structure=structure)
        regions.extend((i, lab == r) for r in range(1, n + 1))
    n_normal = sum(int((m == 0).sum()) for m in masks)
    thresholds = np.unique(np.concatenate([a.ravel() for a in maps]))[::-1]
    fprs, pros = [0.0], [0.0]
    for t in thresholds:
        pred = [a >= t for a in maps]
        fp = sum(int((p & (m == 0)).sum()) for p, m in zip(pred, masks, strict=True))
        overlaps = [(pred[i] & r).sum() / r.sum() for i, r in regions]
        fprs.append(fp / n_normal)
        pros.append(float(np.mean(overlaps)))
    area = 0.0
    for k in range(1, len(fprs)):
        x0, x1, y0, y1 = fprs[k - 1], fprs[k], pros[k - 1], pros[k]
        if x0 >= max_fpr:
            break
        if x1 > max_fpr:
            y1 = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)
            x1 = max_fpr
        area += (x1 - x0) * (y0 + y1) / 2.0
    return area / max_fpr


def random_masks_and_maps(
    seed: int, n_images: int = 3, size: int = 12, quantize: bool = False
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Small masks with rectangles and blobs (first image always normal) and noisy maps."""
    rng = np.random.default_rng(seed)
    masks, maps = [], []
    for i in range(n_images):
        mask = np.zeros((size, size), dtype=np.uint8)
        if i > 0:
            for _ in range(rng.integers(1, 3)):  # rectangles
                r, c = rng.integers(0, size - 3, size=2)
                h, w = rng.integers(1, 4, size=2)
                mask[r : r + h, c : c + w] = 1
            blob = np.zeros_like(mask, dtype=bool)  # a dilated random blob
            blob[tuple(rng.integers(0, size, size=2))] = True
            mask[ndimage.binary_dilation(blob, iterations=int(rng.integers(0, 2)))] = 255
        amap = rng.random((size, size)) + 0.8 * (mask > 0) * rng.random((size, size))
        if quantize:
            amap = np.round(amap, 1)
        masks.append(mask)
        maps.append(amap)
    return masks, maps


# --------------------------------------------------------------------------------------------
# Image-level metrics
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_image_auroc_matches_bruteforce_pairwise_count_with_ties(seed):
    rng = np.random.default_rng(seed)
    y = np.array([0, 1] + list(rng.integers(0, 2, size=30)))
    s = rng.integers(0, 6, size=y.shape[0]).astype(float)  # many ties
    assert image_auroc(y, s) == pytest.approx(pairwise_auroc(y, s), abs=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_image_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = np.array([0, 1] + list(rng.integers(0, 2, size=40)))
    s = np.round(rng.normal(size=y.shape[0]) + y, 1)
    precision, recall, _ = precision_recall_curve(y, s)
    with np.errstate(invalid="ignore"):
        best_f1 = np.nanmax(2 * precision * recall / (precision + recall))
    assert image_auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert image_ap(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert f1_max(y, s) == pytest.approx(best_f1, abs=1e-12)


def test_image_metrics_accept_bool_labels_and_lists():
    assert image_auroc([False, True, True], [0.1, 0.9, 0.5]) == 1.0
    assert image_ap([0, 1, 1], [0.1, 0.9, 0.5]) == 1.0


def test_f1_max_on_hand_computed_example():
    # thresholds 0.9 -> P=1, R=1/2, F1=2/3; 0.5 -> FP: P=1/2, R=1/2, F1=1/2; 0.3 -> P=2/3, R=1
    y = [1, 0, 1, 0]
    s = [0.9, 0.5, 0.3, 0.1]
    assert f1_max(y, s) == pytest.approx(0.8)  # 2 * (2/3) * 1 / (2/3 + 1)


def test_reversed_scores_give_auroc_below_half_without_flipping():
    y = np.array([0, 0, 0, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.8, 0.9])
    assert image_auroc(y, -s) == 0.0
    assert image_auroc(y, [0.5, 0.9, 0.6, 0.2, 0.8]) == pytest.approx(2 / 6)


# --------------------------------------------------------------------------------------------
# Pixel-level metrics
# --------------------------------------------------------------------------------------------


def test_pixel_metrics_pool_all_pixels_of_different_sized_images():
    masks, maps = random_masks_and_maps(seed=1, n_images=2, size=10, quantize=True)
    masks.append(np.pad(masks[1], ((0, 3), (0, 5))))  # a third image of another size
    maps.append(np.pad(maps[1], ((0, 3), (0, 5)), constant_values=0.25))
    y = np.concatenate([m.ravel() > 0 for m in masks])
    s = np.concatenate([a.ravel() for a in maps])
    precision, recall, _ = precision_recall_curve(y, s)
    with np.errstate(invalid="ignore"):
        best_f1 = np.nanmax(2 * precision * recall / (precision + recall))
    assert pixel_auroc(masks, maps) == pytest.approx(roc_auc_score(y, s), abs=1e-9)
    assert pixel_ap(masks, maps) == pytest.approx(average_precision_score(y, s), abs=1e-9)
    assert pixel_f1_max(masks, maps) == pytest.approx(best_f1, abs=1e-9)


def test_pixel_metrics_accept_stacked_arrays_like_lists():
    masks, maps = random_masks_and_maps(seed=2)
    stacked = (np.stack(masks), np.stack(maps).astype(np.float32))
    listed = ([m for m in stacked[0]], [a for a in stacked[1]])
    assert pixel_auroc(*stacked) == pixel_auroc(*listed)
    assert aupro(*stacked) == aupro(*listed)


def test_pixel_auroc_keeps_float64_precision_of_maps():
    # Differences of 1e-12 vanish in float32; they must not be turned into ties.
    masks = np.array([[[0, 1, 0, 1]]], dtype=np.uint8)
    maps = 1.0 + np.array([[[1, 2, 3, 4]]], dtype=np.float64) * 1e-12
    assert pixel_auroc(masks, maps) == pytest.approx(0.75)


def test_masks_with_values_above_one_count_as_anomalous():
    maps = np.array([[[0.1, 0.9], [0.2, 0.8]]])
    assert pixel_auroc(np.array([[[0, 255], [0, 255]]]), maps) == 1.0
    assert pixel_auroc(np.array([[[0.0, 0.5], [0.0, 1.0]]]), maps) == 1.0


# --------------------------------------------------------------------------------------------
# AUPRO
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("quantize", [False, True])
def test_aupro_matches_bruteforce_reference(seed, quantize):
    masks, maps = random_masks_and_maps(seed, quantize=quantize)
    expected = bruteforce_aupro(masks, maps, max_fpr=0.3)
    assert aupro(masks, maps) == pytest.approx(expected, abs=1e-3)
    assert aupro(masks, maps) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("max_fpr", [0.05, 0.5, 1.0])
def test_aupro_matches_bruteforce_reference_for_other_max_fpr(max_fpr):
    masks, maps = random_masks_and_maps(seed=11, quantize=True)
    expected = bruteforce_aupro(masks, maps, max_fpr=max_fpr)
    assert aupro(masks, maps, max_fpr=max_fpr) == pytest.approx(expected, abs=1e-9)


def test_aupro_averages_over_regions_not_pixels():
    # Region A (4 px) fully detected first, region B (16 px) scored below every normal pixel:
    # PRO = 1/2 for FPR in (0, 1), so the normalised area is 0.5 (pixel-weighted would be 0.2).
    mask = np.zeros((10, 10), dtype=np.uint8)
    mask[0:2, 0:2] = 1
    mask[5:9, 5:9] = 1
    amap = np.full((10, 10), 0.5)
    amap[0:2, 0:2] = 1.0
    amap[5:9, 5:9] = 0.0
    assert aupro([mask], [amap]) == pytest.approx(0.5, abs=1e-12)


def test_aupro_uses_eight_connectivity():
    # Two diagonal pixels form ONE region under 8-connectivity: PRO at the top threshold is
    # mean(1/2, 0) = 0.25 (it would be mean(1, 0, 0) = 1/3 with 4-connectivity).
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[0, 0] = mask[1, 1] = 1
    mask[5:7, 5:7] = 1
    amap = np.full((8, 8), 0.5)
    amap[0, 0] = 1.0
    amap[1, 1] = 0.0
    amap[5:7, 5:7] = 0.0
    assert aupro([mask], [amap]) == pytest.approx(0.25, abs=1e-12)


def test_aupro_regions_are_not_merged_across_images():
    mask = np.zeros((6, 6), dtype=np.uint8)
    mask[2:4, 2:4] = 1
    good = np.where(mask > 0, 1.0, 0.5)
    bad = np.where(mask > 0, 0.0, 0.5)
    # one region per image, only one detected -> PRO 1/2 on (0, 1)
    assert aupro([mask, mask], [good, bad]) == pytest.approx(0.5, abs=1e-12)


def test_aupro_num_thresholds_approximates_exact_curve():
    masks, maps = random_masks_and_maps(seed=3, n_images=4, size=16)
    exact = aupro(masks, maps)
    assert aupro(masks, maps, num_thresholds=20000) == pytest.approx(exact, abs=2e-3)
    assert 0.0 <= aupro(masks, maps, num_thresholds=5) <= 1.0


def test_aupro_of_constant_map_is_half_of_max_fpr():
    masks, maps = random_masks_and_maps(seed=4)
    flat = [np.zeros_like(a) for a in maps]
    # one threshold: the curve jumps from (0, 0) to (1, 1); area up to 0.3 is 0.045 -> 0.15
    assert aupro(masks, flat) == pytest.approx(0.15)
    assert aupro(masks, flat, num_thresholds=10) == pytest.approx(0.15)


# --------------------------------------------------------------------------------------------
# Hypothesis invariants
# --------------------------------------------------------------------------------------------


@st.composite
def labels_and_scores(draw):
    n_pos = draw(st.integers(1, 8))
    n_neg = draw(st.integers(1, 8))
    y = np.array([1] * n_pos + [0] * n_neg)
    s = np.array(draw(st.lists(st.integers(-20, 20), min_size=y.size, max_size=y.size))) / 2
    return y, s


@st.composite
def masks_and_maps(draw):
    n_images = draw(st.integers(1, 3))
    masks, maps = [], []
    for _ in range(n_images):
        h, w = draw(st.integers(2, 5)), draw(st.integers(2, 5))
        bits = draw(st.lists(st.booleans(), min_size=h * w, max_size=h * w))
        values = draw(st.lists(st.integers(-20, 20), min_size=h * w, max_size=h * w))
        masks.append(np.array(bits, dtype=np.uint8).reshape(h, w))
        maps.append(np.array(values, dtype=np.float64).reshape(h, w) / 2)
    masks[0][0, 0] = 1  # both classes always present
    masks[0][-1, -1] = 0
    return masks, maps


MONOTONE = [np.exp, lambda x: 2.5 * x + 3.0, lambda x: x**3]


@HYPOTHESIS
@given(data=labels_and_scores(), transform=st.sampled_from(MONOTONE))
def test_image_auroc_is_invariant_to_strictly_monotone_transforms(data, transform):
    y, s = data
    assert image_auroc(y, transform(s)) == pytest.approx(image_auroc(y, s), abs=1e-12)
    assert image_ap(y, transform(s)) == pytest.approx(image_ap(y, s), abs=1e-12)


@HYPOTHESIS
@given(data=masks_and_maps(), transform=st.sampled_from(MONOTONE))
def test_pixel_auroc_and_aupro_are_invariant_to_strictly_monotone_transforms(data, transform):
    masks, maps = data
    moved = [transform(a) for a in maps]
    assert pixel_auroc(masks, moved) == pytest.approx(pixel_auroc(masks, maps), abs=1e-12)
    assert aupro(masks, moved) == pytest.approx(aupro(masks, maps), abs=1e-9)


@HYPOTHESIS
@given(data=labels_and_scores())
def test_reversed_scores_give_exactly_one_minus_auroc(data):
    y, s = data
    original = image_auroc(y, s)
    reversed_ = image_auroc(y, -s)
    assert reversed_ == pytest.approx(1.0 - original, abs=1e-12)
    if original > 0.5:
        assert reversed_ < 0.5


@HYPOTHESIS
@given(data=masks_and_maps())
def test_perfect_maps_score_one(data):
    masks, _ = data
    perfect = [m.astype(np.float32) for m in masks]
    assert pixel_auroc(masks, perfect) == 1.0
    assert pixel_ap(masks, perfect) == pytest.approx(1.0, abs=1e-12)
    assert pixel_f1_max(masks, perfect) == pytest.approx(1.0, abs=1e-12)
    assert aupro(masks, perfect) == pytest.approx(1.0, abs=1e-12)


@HYPOTHESIS
@given(data=labels_and_scores())
def test_perfect_image_scores_score_one(data):
    y, _ = data
    assert image_auroc(y, y * 2.0) == 1.0
    assert image_ap(y, y * 2.0) == pytest.approx(1.0, abs=1e-12)
    assert f1_max(y, y * 2.0) == pytest.approx(1.0, abs=1e-12)


@HYPOTHESIS
@given(data=masks_and_maps())
def test_aupro_matches_bruteforce_on_generated_maps(data):
    masks, maps = data
    assert aupro(masks, maps) == pytest.approx(bruteforce_aupro(masks, maps, 0.3), abs=1e-9)


# --------------------------------------------------------------------------------------------
# Label conventions and scorers
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("y", "expected"),
    [
        ([0, 1, 1, 0], [0, 1, 1, 0]),
        ([0, 0], [0, 0]),
        ([False, True], [0, 1]),
        ([0.0, 1.0], [0, 1]),
        ([1, -1, 1, -1], [0, 1, 0, 1]),
        ([-1, -1], [1, 1]),
    ],
)
def test_as_anomaly_labels_accepts_both_conventions(y, expected):
    out = as_anomaly_labels(y)
    assert out.dtype.kind == "i"
    np.testing.assert_array_equal(out, expected)


def test_as_anomaly_labels_rejects_only_ones_as_ambiguous():
    with pytest.raises(ValueError, match="ambiguous"):
        as_anomaly_labels([1, 1, 1])


@pytest.mark.parametrize(
    ("y", "match"),
    [
        ([0, 1, 2], r"unexpected label values \[2\]"),
        ([0, 0.5, 1], r"unexpected label values \[0\.5\]"),
        (["a", "b"], "unexpected label values"),
        ([-1, 0, 1], "mixes label conventions"),
        ([[0, 1]], "1-D"),
    ],
)
def test_as_anomaly_labels_rejects_invalid_values(y, match):
    with pytest.raises(ValueError, match=match):
        as_anomaly_labels(y)


class FakeDetector:
    """Minimal sklearn-like outlier detector: score_samples is HIGHER = MORE NORMAL."""

    def score_samples(self, X):
        return -np.asarray(X, dtype=float)[:, 0]


@pytest.mark.parametrize(
    ("scorer", "metric"),
    [(image_auroc_scorer, image_auroc), (image_ap_scorer, image_ap), (f1_max_scorer, f1_max)],
)
def test_scorers_negate_score_samples_and_accept_both_label_conventions(scorer, metric):
    anomaly = np.array([0.1, 0.7, 0.3, 0.9, 0.6, 0.2])
    y01 = np.array([0, 1, 0, 1, 0, 1])
    X = anomaly[:, None]
    expected = metric(y01, anomaly)
    assert scorer(FakeDetector(), X, y01) == pytest.approx(expected)
    assert scorer(FakeDetector(), X, np.where(y01 == 1, -1, 1)) == pytest.approx(expected)


def test_auroc_scorer_avoids_the_one_minus_auroc_trap():
    anomaly = np.array([0.1, 0.7, 0.3, 0.9, 0.6, 0.2])
    y01 = np.array([0, 1, 0, 1, 0, 1])
    X = anomaly[:, None]
    naive = roc_auc_score(y01, FakeDetector().score_samples(X))  # what "roc_auc" computes
    assert image_auroc_scorer(FakeDetector(), X, y01) == pytest.approx(1.0 - naive)
    assert image_auroc_scorer(FakeDetector(), X, y01) > 0.5


@pytest.mark.parametrize("scorer", [image_auroc_scorer, image_ap_scorer, f1_max_scorer])
def test_scorers_pickle_by_name_and_document_their_metric(scorer):
    assert pickle.loads(pickle.dumps(scorer)) is scorer  # joblib workers receive the same one
    name = scorer.__name__.removesuffix("_scorer")
    assert getattr(metrics, scorer.__name__) is scorer
    assert f":func:`{name}`" in scorer.__doc__ and "{what}" not in scorer.__doc__


def test_scorer_requires_labels():
    with pytest.raises(ValueError, match="needs ground-truth labels"):
        image_auroc_scorer(FakeDetector(), np.zeros((3, 1)), None)


def test_scorer_works_in_cross_validation_with_an_sklearn_detector():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 2))
    y = np.tile([0, 0, 0, 1], 10)
    X[y == 1] *= 10.0  # scattered far from the normal cluster
    scores = cross_val_score(
        IsolationForest(n_estimators=10, random_state=0), X, y, scoring=image_auroc_scorer, cv=2
    )
    assert np.all(scores > 0.9)


# --------------------------------------------------------------------------------------------
# evaluate
# --------------------------------------------------------------------------------------------


def test_evaluate_image_only_returns_image_keys():
    y, s = [0, 1, 0, 1], [0.1, 0.8, 0.3, 0.4]
    result = evaluate(y, s)
    assert result == {
        "image_auroc": image_auroc(y, s),
        "image_ap": image_ap(y, s),
        "image_f1_max": f1_max(y, s),
    }


def test_evaluate_with_masks_matches_individual_metrics():
    masks, maps = random_masks_and_maps(seed=5, quantize=True)
    y = np.array([int(m.any()) for m in masks])
    s = np.array([a.max() for a in maps])
    result = evaluate(y, s, masks, maps)
    assert set(result) == {
        "image_auroc",
        "image_ap",
        "image_f1_max",
        "pixel_auroc",
        "pixel_ap",
        "pixel_f1_max",
        "aupro",
    }
    assert result["pixel_auroc"] == pytest.approx(pixel_auroc(masks, maps), abs=1e-12)
    assert result["pixel_ap"] == pytest.approx(pixel_ap(masks, maps), abs=1e-12)
    assert result["pixel_f1_max"] == pytest.approx(pixel_f1_max(masks, maps), abs=1e-12)
    assert result["aupro"] == pytest.approx(aupro(masks, maps), abs=1e-12)
    assert all(isinstance(v, float) for v in result.values())


def test_evaluate_requires_masks_and_maps_together_and_matching_image_count():
    masks, maps = random_masks_and_maps(seed=6)
    y, s = [0, 1, 1], [0.1, 0.5, 0.9]
    with pytest.raises(ValueError, match="together"):
        evaluate(y, s, masks=masks)
    with pytest.raises(ValueError, match="together"):
        evaluate(y, s, maps=maps)
    with pytest.raises(ValueError, match="4 labels"):
        evaluate([0, 1, 1, 0], [0.1, 0.5, 0.9, 0.2], masks, maps)


# --------------------------------------------------------------------------------------------
# Error cases
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", [image_auroc, image_ap, f1_max])
def test_image_metrics_reject_a_single_class(metric):
    with pytest.raises(ValueError, match="all samples are normal"):
        metric([0, 0, 0], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="all samples are anomalous"):
        metric([1, 1], [0.1, 0.2])


@pytest.mark.parametrize("metric", [image_auroc, image_ap, f1_max])
def test_image_metrics_reject_bad_inputs(metric):
    with pytest.raises(ValueError, match="mismatched lengths"):
        metric([0, 1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="NaN"):
        metric([0, 1], [0.1, np.nan])
    with pytest.raises(ValueError, match="infinite"):
        metric([0, 1], [0.1, np.inf])
    with pytest.raises(ValueError, match="as_anomaly_labels"):
        metric([-1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="1-D"):
        metric([[0, 1]], [[0.1, 0.2]])
    with pytest.raises(ValueError, match="empty"):
        metric([], [])


@pytest.mark.parametrize("metric", [pixel_auroc, pixel_ap, pixel_f1_max, aupro])
def test_pixel_metrics_reject_bad_inputs(metric):
    mask = np.array([[0, 1], [0, 0]], dtype=np.uint8)
    amap = np.array([[0.1, 0.9], [0.2, 0.3]])
    with pytest.raises(ValueError, match="Shape mismatch"):
        metric([mask], [np.zeros((2, 3))])
    with pytest.raises(ValueError, match="number of images"):
        metric([mask, mask], [amap])
    with pytest.raises(ValueError, match="NaN"):
        metric([mask], [np.where(mask > 0, np.nan, amap)])
    with pytest.raises(ValueError, match="binary mask"):
        metric([mask.astype(float) * np.nan], [amap])
    with pytest.raises(ValueError, match="binary mask"):
        metric([mask.astype(int) - 1], [amap])
    with pytest.raises(ValueError, match="binary mask"):
        metric([np.array([["a", "b"], ["c", "d"]])], [amap])
    with pytest.raises(ValueError, match="2-D"):
        metric([mask[None]], [amap[None]])


@pytest.mark.parametrize("metric", [pixel_auroc, pixel_ap, pixel_f1_max])
def test_pixel_metrics_reject_a_single_class(metric):
    amap = np.array([[0.1, 0.9], [0.2, 0.3]])
    with pytest.raises(ValueError, match="all samples are normal"):
        metric([np.zeros((2, 2))], [amap])
    with pytest.raises(ValueError, match="all samples are anomalous"):
        metric([np.ones((2, 2))], [amap])


def test_aupro_rejects_missing_regions_or_normal_pixels_and_bad_parameters():
    amap = np.array([[0.1, 0.9], [0.2, 0.3]])
    mask = np.array([[0, 1], [0, 0]])
    with pytest.raises(ValueError, match="no anomalous region|at least one anomalous region"):
        aupro([np.zeros((2, 2))], [amap])
    with pytest.raises(ValueError, match="normal pixels"):
        aupro([np.ones((2, 2))], [amap])
    for bad in (0.0, -0.1, 1.5, np.nan, "0.3", True):
        with pytest.raises(ValueError, match="max_fpr"):
            aupro([mask], [amap], max_fpr=bad)
    for bad in (1, 0, 2.5, True):
        with pytest.raises(ValueError, match="num_thresholds"):
            aupro([mask], [amap], num_thresholds=bad)
