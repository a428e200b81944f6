"""Decision thresholds: held-out calibration, per-group thresholds, their persistence."""

import dataclasses
import pickle

import numpy as np
import pytest
import sklearn
import torch
from sklearn.pipeline import make_pipeline
from sklearn.utils import check_random_state

from skuniad import UniADDetector
from skuniad._thresholds import contamination_threshold, validation_split
from skuniad.datasets import make_synthetic
from skuniad.preprocessing import ImageLoader


@pytest.fixture(scope="module")
def data():
    """12 normal images of two categories (6 each) and their group labels."""
    train = make_synthetic("train", ("stripes", "dots"), n_per_category=6, image_size=32)
    return np.stack(train.images), np.asarray(train.categories)


@pytest.fixture(scope="module")
def grouped(data, fast_params):
    X, groups = data
    return UniADDetector(**fast_params).fit(X, groups=groups)


def _fit_seed(random_state) -> int:
    """The integer seed fit draws from ``random_state`` first."""
    return int(check_random_state(random_state).randint(np.iinfo(np.int32).max))


def test_validation_fraction_trains_on_the_rest_and_calibrates_on_the_held_out_share(fast_params):
    X = np.stack(make_synthetic("train", "stripes", n_per_category=12, image_size=32).images)
    held = UniADDetector(**fast_params, validation_fraction=0.5).fit(X)

    train, held_out = validation_split(len(X), None, 0.5, _fit_seed(fast_params["random_state"]))
    assert len(held_out) == 6 and not set(train) & set(held_out)
    # the same model as one trained on the training part only, then calibrated on the rest
    expected = UniADDetector(**fast_params).fit(X[train])
    weights = zip(
        held.model_.state_dict().values(), expected.model_.state_dict().values(), strict=True
    )
    for a, b in weights:
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    trained_on = (expected.offset_, expected.pixel_threshold_)
    expected.calibrate(X[held_out])
    assert (held.offset_, held.pixel_threshold_) == (expected.offset_, expected.pixel_threshold_)
    assert (held.offset_, held.pixel_threshold_) != trained_on


def test_validation_split_is_seeded_and_stratified_by_group():
    groups = np.array(["a"] * 25 + ["b"] * 32, dtype=object)
    train, held_out = validation_split(57, groups, 0.2, seed=3)
    assert (groups[held_out] == "a").sum() == 5 and (groups[held_out] == "b").sum() == 7
    assert sorted([*train, *held_out]) == list(range(57))
    again = validation_split(57, groups, 0.2, seed=3)[1]
    other = validation_split(57, groups, 0.2, seed=4)[1]
    np.testing.assert_array_equal(again, held_out)
    assert not np.array_equal(other, held_out)
    assert validation_split(57, groups, None, seed=3) == (None, None)


@pytest.mark.parametrize(
    ("n", "fraction", "groups", "message"),
    [
        (12, 0.2, None, r"12 images into 9 for training and 3 for the thresholds"),
        (12, 0.7, None, r"into 3 for training and 9 for the thresholds"),
        (14, 0.5, ["a"] * 10 + ["b"] * 4, r"4 images of group 'b' into 2 for training and 2"),
    ],
)
def test_a_validation_share_leaving_too_few_images_is_refused(
    n, fraction, groups, message, fast_params
):
    X = np.zeros((n, 32, 32, 3), dtype=np.uint8)
    det = UniADDetector(**fast_params, validation_fraction=fraction)
    with pytest.raises(ValueError, match=message) as error:
        det.fit(X, groups=groups)
    assert "\n" not in str(error.value) and "at least 5" in str(error.value)
    assert not hasattr(det, "model_")  # refused before any training


def test_groups_get_their_own_thresholds_by_the_pooled_rule(grouped, data):
    X, groups = data
    det = grouped
    scores = -det.score_samples(X)
    maxima = det.anomaly_maps(X, size="model").reshape(len(X), -1).max(1)
    assert set(det.group_image_thresholds_) == {"stripes", "dots"}
    for group in ("stripes", "dots"):
        members = groups == group
        np.testing.assert_allclose(
            det.group_image_thresholds_[group],
            contamination_threshold(scores[members], "auto"),
            rtol=1e-5,
        )
        np.testing.assert_allclose(
            det.group_pixel_thresholds_[group],
            contamination_threshold(maxima[members], "auto"),
            rtol=1e-5,
        )
    np.testing.assert_allclose(
        det.image_threshold_, contamination_threshold(scores, "auto"), rtol=1e-5
    )
    assert det.image_threshold_ == -det.offset_


def test_predict_applies_each_groups_threshold_and_the_pooled_one_to_unknown_groups(grouped):
    det = grouped
    X = np.stack(
        make_synthetic("test", ("stripes", "dots"), n_per_category=4, image_size=32).images
    )
    groups = np.array(["stripes"] * 4 + ["dots"] * 2 + ["new", "new"])
    scores = -det.score_samples(X)
    table = det.group_image_thresholds_
    expected = np.array([table.get(g, det.image_threshold_) for g in groups])
    np.testing.assert_array_equal(det.decision_function(X, groups=groups), -scores + expected)
    np.testing.assert_array_equal(det.predict(X, groups=groups), np.where(scores > expected, -1, 1))
    # without groups: the pooled threshold, as before
    np.testing.assert_array_equal(det.predict(X), np.where(scores > det.image_threshold_, -1, 1))

    maps = det.anomaly_maps(X)
    pixel = np.array([det.group_pixel_thresholds_.get(g, det.pixel_threshold_) for g in groups])
    np.testing.assert_array_equal(
        det.predict_masks(X, groups=groups), maps > pixel[:, None, None].astype(np.float32)
    )
    # an explicit threshold applies to every image, groups or not
    np.testing.assert_array_equal(det.predict_masks(X, threshold=0.5, groups=groups), maps > 0.5)


def test_unknown_group_error_refuses_the_pooled_fallback(grouped, data):
    X, _ = data
    det = pickle.loads(pickle.dumps(grouped)).set_params(unknown_group="error")
    groups = ["stripes"] * 11 + ["screws"]
    for method in (det.predict, det.decision_function, det.predict_masks):
        with pytest.raises(ValueError, match=r"no threshold for group\(s\) 'screws'") as error:
            method(X, groups=groups)
        assert "\n" not in str(error.value)
    assert det.predict(X).shape == (12,)  # no groups: the pooled threshold is asked for


@pytest.mark.parametrize("method", ["fit", "predict", "decision_function", "predict_masks"])
def test_groups_of_the_wrong_length_are_refused(grouped, data, method, fast_params):
    X, groups = data
    det = UniADDetector(**fast_params) if method == "fit" else grouped
    with pytest.raises(ValueError, match=r"groups has 11 labels but there are 12 images"):
        getattr(det, method)(X, groups=groups[:-1])


def test_calibrate_with_groups_replaces_every_threshold(grouped, data):
    X, groups = data
    det = pickle.loads(pickle.dumps(grouped))
    det.calibrate(X[:10], groups=[1] * 5 + [2] * 5)
    assert set(det.group_image_thresholds_) == {1, 2}
    assert det.predict(X[:2], groups=np.array([1, 2])).shape == (2,)  # numpy ints match
    det.calibrate(X)
    assert det.group_image_thresholds_ == {} and det.group_pixel_thresholds_ == {}
    with pytest.raises(ValueError, match=r"group 'x' has 3 calibration images; .* at least 5"):
        det.calibrate(X[:8], groups=["x"] * 3 + ["y"] * 5)
    with pytest.raises(ValueError, match=r"groups must be strings or integers, got 1.5"):
        det.calibrate(X[:2], groups=[1.5, 2.5])


def test_group_thresholds_survive_save_load_and_pickle(grouped, data, tmp_path):
    X, groups = data
    det = pickle.loads(pickle.dumps(grouped))
    det.calibrate(X, groups=[7] * 6 + ["dots"] * 6)  # int and str labels together
    det.save(tmp_path / "m.skuniad")
    for copy in (UniADDetector.load(tmp_path / "m.skuniad"), pickle.loads(pickle.dumps(det))):
        assert copy.group_image_thresholds_ == det.group_image_thresholds_
        assert copy.group_pixel_thresholds_ == det.group_pixel_thresholds_
        np.testing.assert_array_equal(
            copy.predict(X, groups=[7] * 12), det.predict(X, groups=[7] * 12)
        )


def test_groups_are_routed_through_a_pipeline_with_metadata_routing(data, image_files, fast_params):
    X, groups = data
    paths = image_files(X)
    with sklearn.config_context(enable_metadata_routing=True):
        det = (
            UniADDetector(**fast_params)
            .set_fit_request(groups=True)
            .set_predict_request(groups=True)
        )
        pipe = make_pipeline(ImageLoader(), det).fit(paths, groups=groups)
        assert set(pipe[-1].group_image_thresholds_) == {"stripes", "dots"}
        assert pipe.predict(paths, groups=groups).shape == (12,)


def test_evaluation_reports_what_the_models_own_thresholds_do(grouped, tmp_path):
    from skuniad.datasets import load_mvtec, write_synthetic
    from skuniad.evaluation import evaluate_detector, results_markdown
    from skuniad.evaluation._evaluate import load_masks

    root = write_synthetic(tmp_path, categories=("stripes", "dots"), n_train=1, n_test=8)
    test = load_mvtec(root, "test")
    det = pickle.loads(pickle.dumps(grouped))
    groups = {g: pair for g, pair in det.thresholds_.groups.items() if g != "dots"}
    det.thresholds_ = dataclasses.replace(det.thresholds_, groups=groups)  # dots: the pooled ones
    results = evaluate_detector(det, test)
    for category in ("stripes", "dots"):
        subset = test.subset(category)
        row = results["categories"][category]
        groups = [category] * len(subset) if category == "stripes" else None
        flagged = det.predict(subset.paths, groups=groups) == -1
        labels = subset.labels == 1
        assert row["image_recall"] == flagged[labels].mean()
        assert row["image_false_alarm_rate"] == flagged[~labels].mean()
        precision = flagged[labels].sum() / flagged.sum() if flagged.any() else 0.0
        assert row["image_precision"] == pytest.approx(precision)
        maps = det.anomaly_maps(subset.paths, size="model")
        truth = load_masks(subset, maps.shape[1:])
        pixel_t = det.group_pixel_thresholds_.get(category, det.pixel_threshold_)
        marked = maps > np.float32(pixel_t)
        assert row["pixel_recall"] == pytest.approx(marked[truth].mean())
        assert row["pixel_false_alarm_rate"] == pytest.approx(marked[~truth].mean())
    assert "At the model's own thresholds" in results_markdown(results)
    assert results["mean"]["image_recall"] == pytest.approx(
        np.mean([results["categories"][c]["image_recall"] for c in ("stripes", "dots")])
    )


def test_operating_point_counts():
    from skuniad.metrics import operating_point

    op = operating_point([1, 1, 1, 0, 0, 0, 0], [True, True, False, True, False, False, False])
    assert op["recall"] == pytest.approx(2 / 3) and op["precision"] == pytest.approx(2 / 3)
    assert op["false_alarm_rate"] == 0.25 and op["f1"] == pytest.approx(2 / 3)
    assert (op["n_anomalous"], op["n_normal"], op["n_flagged"]) == (3, 4, 3)
    nothing = operating_point([0, 0], [False, False])
    assert nothing["precision"] == nothing["recall"] == nothing["false_alarm_rate"] == 0.0
    with pytest.raises(ValueError, match="shape"):
        operating_point([1, 0], [True])


def test_a_format_1_model_file_loads_without_group_thresholds(grouped, data, tmp_path):
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    X, groups = data
    grouped.save(tmp_path / "new.skuniad")
    with safe_open(str(tmp_path / "new.skuniad"), framework="pt") as f:
        metadata = json.loads(f.metadata()["skuniad"])
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    assert len(metadata["fitted"]["group_thresholds"]) == 2
    metadata["format_version"] = 1  # as skuniad wrote it before per-group thresholds
    del metadata["fitted"]["group_thresholds"], metadata["sha256"]  # and before digests
    for name in ("validation_fraction", "unknown_group"):
        del metadata["params"][name]
    save_file(tensors, str(tmp_path / "old.skuniad"), metadata={"skuniad": json.dumps(metadata)})
    old = UniADDetector.load(tmp_path / "old.skuniad")
    assert old.group_image_thresholds_ == {} and old.validation_fraction is None
    np.testing.assert_array_equal(old.predict(X, groups=groups), grouped.predict(X))


def test_a_group_too_small_for_its_own_thresholds_is_refused_before_training(data, fast_params):
    X, _ = data
    det = UniADDetector(**fast_params)
    with pytest.raises(ValueError, match=r"group 'b' has 2 calibration images") as error:
        det.fit(X, groups=["a"] * 10 + ["b"] * 2)
    assert "\n" not in str(error.value) and not hasattr(det, "model_")


def test_an_image_scored_nan_is_never_normal_and_thresholds_must_be_numbers():
    from skuniad._thresholds import decision_thresholds, labels_above

    labels = labels_above(np.array([0.5, np.nan, 2.0]), np.array([1.0, 1.0, 1.0]))
    np.testing.assert_array_equal(labels, [1, -1, -1])
    with pytest.raises(ValueError, match="threshold must be a finite number, got nan"):
        decision_thresholds(None, None, 3, threshold=float("nan"))
    with pytest.raises(ValueError, match="pixel_threshold must be a finite number"):
        decision_thresholds(None, None, 3, pixel_threshold=float("inf"))
