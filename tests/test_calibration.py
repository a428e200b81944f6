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
    smoothed_f1_threshold,
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


# quarters: distinct values stay distinct after any scale and shift below
scores = st.lists(st.integers(-200, 200).map(lambda v: v / 4), min_size=2, max_size=30)


@settings(max_examples=60, deadline=None)
@given(scores, scores, st.floats(0.05, 0.95), st.floats(0.1, 10), st.floats(-100, 100))
def test_smoothed_f1_threshold_moves_with_the_scores_units(defects, normals, rate, scale, shift):
    # the same images flagged (where F1 is flat between two values, any threshold there will do)
    values = np.r_[defects, normals]
    t = smoothed_f1_threshold(defects, normals, rate)
    moved = smoothed_f1_threshold(
        np.array(defects) * scale + shift, np.array(normals) * scale + shift, rate
    )
    np.testing.assert_array_equal(values * scale + shift > moved, values > t)


@settings(max_examples=60, deadline=None)
@given(scores, scores, st.floats(0.05, 0.9), st.floats(0.01, 0.09))
def test_smoothed_f1_threshold_flags_more_for_a_higher_defect_rate(defects, normals, rate, more):
    # a higher defect rate weighs recall more against false alarms: what a lower rate
    # flags stays flagged
    values = np.r_[defects, normals]
    higher = smoothed_f1_threshold(defects, normals, rate + more)
    lower = smoothed_f1_threshold(defects, normals, rate)
    assert np.all(values[values > lower] > higher)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=5, max_size=30), st.integers(5, 30), st.floats(0.1, 0.9))
def test_smoothed_f1_threshold_separates_well_separated_classes(normals, n_defects, rate):
    normals = np.array(normals)
    defects = np.linspace(20, 21, n_defects)  # far above every normal value
    t = smoothed_f1_threshold(defects, normals, rate)
    assert normals.max() < t < defects.min()


def test_one_far_defect_does_not_blur_the_smoothed_f1_threshold():
    normals = np.linspace(0, 1, 20)
    defects = np.r_[np.linspace(10, 11, 9), 1000.0]  # the spread comes from the quartiles
    assert 1 < smoothed_f1_threshold(defects, normals, 0.8) < 10


def test_smoothed_f1_threshold_takes_a_step_for_a_class_of_equal_values():
    assert 1 <= smoothed_f1_threshold([3.0, 3.0, 3.0], [1.0, 1.0], 0.5) < 3
    assert smoothed_f1_threshold([2.0, 2.0], [2.0, 2.0], 0.5) < 2  # no ranking: flag all


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
    assert calibrated.image_threshold_ == smoothed_f1_threshold(scores[6:], scores[:6], 0.5)
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
        (dict(objective="recall", target=0.9, defect_rate=0.1), "defect_rate is for"),
        (dict(objective="f1", defect_rate=1.0), r"defect_rate must be a share in \(0, 1\)"),
        (dict(objective="f1", defect_rate={"a": 0.1}), r"names group\(s\) 'a' that no"),
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


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.booleans(), st.integers(0, 9), st.integers(1, 3)), min_size=2, max_size=30
    ).filter(lambda rows: any(label for label, *_ in rows))
)
def test_f1_weights_count_a_value_that_many_times(rows):
    labels = np.array([label for label, *_ in rows])
    values = np.array([value for _, value, _ in rows], dtype=np.float64)
    weights = np.array([weight for *_, weight in rows])
    repeated = f1_threshold(np.repeat(labels, weights), np.repeat(values, weights))
    assert f1_threshold(labels, values, weights) == repeated


@pytest.fixture(scope="module")
def held_out_fit(tiny_settings):
    from skuniad import UniADDetector

    rng = np.random.default_rng(5)
    X = rng.integers(0, 256, size=(20, 40, 48, 3), dtype=np.uint8)
    groups = np.array(["a", "b"] * 10)
    params = {**tiny_settings, "validation_fraction": 0.5}
    return UniADDetector(**params).fit(X, groups=groups), X, groups


def test_fit_keeps_the_held_out_normal_values_and_the_file_keeps_them(held_out_fit, tmp_path):
    from skuniad import UniADDetector

    det = held_out_fit[0]
    held_out = det.thresholds_.held_out
    assert len(held_out["scores"]) == len(held_out["map_maxima"]) == 10
    assert sorted(held_out["groups"]) == ["a"] * 5 + ["b"] * 5  # half of each group
    # they are the values the thresholds came from: the images the model did not train on
    assert det.image_threshold_ == contamination_threshold(held_out["scores"], "auto")
    path = tmp_path / "m.skuniad"
    det.save(path)
    assert UniADDetector.load(path).thresholds_.held_out == held_out


def test_false_alarms_and_f1_count_the_held_out_normals(held_out_fit, labelled):
    det = copy.deepcopy(held_out_fit[0])
    _, X, y = labelled
    scores = -det.score_samples(X)
    extra = np.asarray(det.thresholds_.held_out["scores"])
    det.calibrate(X, y, objective="false_alarms", target=0.2)
    assert det.image_threshold_ == false_alarm_threshold(np.r_[scores[:6], extra], 0.2)
    assert det.thresholds_.held_out is not None  # kept for the next calibration
    det.calibrate(X, y, objective="f1")  # the defect rate stays the given images' share
    assert det.image_threshold_ == smoothed_f1_threshold(scores[6:], np.r_[scores[:6], extra], 0.5)
    det.calibrate(X[:6])  # normal images only: the contamination rule, the held-out ones kept
    assert det.thresholds_.held_out == held_out_fit[0].thresholds_.held_out


def test_per_group_calibration_counts_each_groups_own_held_out_normals(held_out_fit, labelled):
    det = copy.deepcopy(held_out_fit[0])
    _, X, y = labelled
    groups = np.array(["a", "b"] * 6)
    scores = -det.score_samples(X)
    held_out = det.thresholds_.held_out
    det.calibrate(
        np.r_[X, X], np.r_[y, y], groups=np.r_[groups, groups], objective="false_alarms", target=0.3
    )
    for group in ("a", "b"):
        mine = np.r_[scores, scores][(np.r_[groups, groups] == group) & (np.r_[y, y] == 0)]
        extra = [
            s for s, g in zip(held_out["scores"], held_out["groups"], strict=True) if g == group
        ]
        assert det.group_image_thresholds_[group] == false_alarm_threshold(np.r_[mine, extra], 0.3)


def test_f1_aims_at_the_defect_rate_given_pooled_or_per_group(labelled):
    det, X, y = labelled
    scores = -det.score_samples(X)
    det.calibrate(X, y, objective="f1", defect_rate=0.9)
    assert det.image_threshold_ == smoothed_f1_threshold(scores[6:], scores[:6], 0.9)
    X, y, scores = np.r_[X, X], np.r_[y, y], np.r_[scores, scores]  # 6 of each class per group
    groups = np.array(["a", "b"] * 12)
    det.calibrate(X, y, groups=groups, objective="f1", defect_rate={"a": 0.2})
    report = det.thresholds_.calibration  # the rate each part aimed at, kept with the model
    assert [(g, part["defect_rate"]) for g, part in report["groups"]] == [("a", 0.2), ("b", 0.5)]
    assert report["pooled"]["defect_rate"] == 0.5
    for group, rate in (("a", 0.2), ("b", 0.5)):  # b: its own share of defective images
        mine = groups == group
        expected = smoothed_f1_threshold(scores[mine & (y == 1)], scores[mine & (y == 0)], rate)
        assert det.group_image_thresholds_[group] == expected
    assert det.image_threshold_ == smoothed_f1_threshold(scores[y == 1], scores[y == 0], 0.5)
