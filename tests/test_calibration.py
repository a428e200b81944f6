"""Labelled calibration: thresholds for F1, a false-alarm budget or a recall target."""

import copy

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from skuniad._thresholds import (
    contamination_threshold,
    f1_threshold,
    false_alarm_threshold,
    recall_threshold,
)
from skuniad.metrics import operating_point


def _f1(labels, flagged):
    return operating_point(labels, flagged)["f1"]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.booleans(), st.integers(0, 12)), min_size=2, max_size=40).filter(
        lambda rows: any(label for label, _ in rows)
    )
)
def test_f1_threshold_reaches_the_best_f1_of_any_threshold(rows):
    labels = np.array([label for label, _ in rows])
    values = np.array([value for _, value in rows], dtype=np.float32) / 4
    best = max(_f1(labels, values > t) for t in np.r_[values, -1.0])
    assert _f1(labels, values > f1_threshold(labels, values)) == pytest.approx(best)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 20), min_size=1, max_size=50), st.floats(0.01, 0.99))
def test_false_alarm_threshold_is_the_lowest_within_the_budget(values, target):
    values = np.array(values, dtype=np.float64)
    t = false_alarm_threshold(values, target)
    assert np.mean(values > t) <= target
    lower = values[values < t]
    if len(lower):  # any lower candidate flags more than the budget
        assert np.mean(values > lower.max()) > target


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 20), min_size=1, max_size=50), st.floats(0.01, 0.99))
def test_recall_threshold_is_the_highest_that_catches_the_target(values, target):
    values = np.array(values, dtype=np.float32)
    t = recall_threshold(values, target)
    assert np.mean(values > np.float32(t)) >= target
    assert np.mean(values > values[values > t].min()) < target  # one step up misses it


@pytest.fixture
def labelled(fitted_tiny):
    det = copy.deepcopy(fitted_tiny[0])  # the shared detector stays as it is
    rng = np.random.default_rng(3)
    X = rng.integers(0, 256, size=(12, 40, 48, 3), dtype=np.uint8)
    X[6:, 10:30, 10:30] = 255  # a bright square: the "defects"
    y = np.array([0] * 6 + [1] * 6)
    return det, X, y


def test_f1_objective_sets_the_best_f1_threshold_and_reports_it(labelled):
    det, X, y = labelled
    scores = -det.score_samples(X)
    calibrated = det.calibrate(X, y, objective="f1")
    assert calibrated.image_threshold_ == f1_threshold(y, scores)
    report = calibrated.thresholds_.calibration
    assert report["objective"] == "f1" and report["pooled"]["pixel"] is None
    flagged = calibrated.predict(X) == -1
    assert report["pooled"]["image"]["f1"] == pytest.approx(_f1(y, flagged))
    assert report["pooled"]["image"]["false_alarm_rate"] == pytest.approx(np.mean(flagged[:6]))


def test_false_alarm_and_recall_objectives_meet_their_targets(labelled):
    det, X, y = labelled
    scores = -det.score_samples(X)
    det.calibrate(X, y, objective="false_alarms", target=0.2)
    assert np.mean(scores[:6] > det.image_threshold_) <= 0.2
    det.calibrate(X, y, objective="recall", target=0.8)
    assert np.mean(scores[6:] > det.image_threshold_) >= 0.8
    assert det.thresholds_.calibration["target"] == 0.8


def test_masks_choose_the_pixel_threshold_on_defect_pixels(labelled, tmp_path):
    det, X, y = labelled
    masks = [None] * 6 + [np.pad(np.ones((20, 20), bool), ((10, 10), (10, 18)))] * 6
    det.calibrate(X, y, masks=masks, objective="f1")
    maps = det.anomaly_maps(X[6:])
    truth = np.stack(masks[6:])
    assert det.pixel_threshold_ == f1_threshold(truth, maps)
    achieved = det.thresholds_.calibration["pooled"]["pixel"]
    assert achieved["f1"] == pytest.approx(_f1(truth, maps > np.float32(det.pixel_threshold_)))
    det.save(tmp_path / "m.skuniad")
    loaded = det.load(tmp_path / "m.skuniad")
    assert loaded.thresholds_ == det.thresholds_


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(objective="f1", y=None), "needs labels y"),
        (dict(objective="recall", target=1.5), r"target in \(0, 1\)"),
        (dict(objective="false_alarms"), r"target in \(0, 1\)"),
        (dict(objective="f1", target=0.5), "takes no target"),
        (dict(objective="best"), "objective must be one of"),
        (dict(objective="f1", masks=[np.zeros((3, 3), bool)] * 12), "mask 0 has shape"),
        (dict(objective="f1", y=[0] * 10 + [1] * 2), "has 2 defective calibration images"),
    ],
)
def test_bad_calibration_input_fails_before_any_work(labelled, monkeypatch, kwargs, message):
    det, X, y = labelled
    kwargs = {"y": y, **kwargs}
    monkeypatch.setattr(det, "_scorer", lambda: pytest.fail("scored before checking"))
    with pytest.raises(ValueError, match=message):
        det.calibrate(X, **kwargs)


def test_a_group_with_too_few_defects_keeps_the_pooled_threshold_or_fails(labelled):
    det, X, y = labelled
    groups = ["a"] * 5 + ["b"] + ["a"] * 5 + ["b"]
    with pytest.warns(UserWarning, match="group 'b' has 1 normal"):
        det.calibrate(X, y, groups=groups, objective="f1")
    assert set(det.group_image_thresholds_) == {"a"}
    det.set_params(unknown_group="error")
    with pytest.raises(ValueError, match="group 'b' has 1 normal calibration images"):
        det.calibrate(X, y, groups=groups, objective="f1")


def test_masks_without_a_defect_pixel_leave_the_pixel_rule_to_the_normal_images(labelled):
    det, X, y = labelled
    masks = [None] * 12  # normal images: empty masks; defective ones: unknown
    det.calibrate(X, y, masks=masks, objective="recall", target=0.5)
    assert det.thresholds_.calibration["pooled"]["pixel"] is None
    maxima = det.anomaly_maps(X[:6], size="model").reshape(6, -1).max(1)
    assert det.pixel_threshold_ == pytest.approx(contamination_threshold(maxima, "auto"), rel=1e-5)
