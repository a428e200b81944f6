import pickle
import re
import subprocess
import sys
import warnings
from pathlib import Path

import joblib
import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.base import clone, is_outlier_detector
from sklearn.exceptions import NotFittedError

from skuniad import UniADDetector
from skuniad._thresholds import contamination_threshold
from skuniad.weights import BackboneWeightsError


def test_constructor_stores_arguments_verbatim(tiny_params):
    det = UniADDetector(**tiny_params, device="cuda:7", contamination=0.2)
    params = det.get_params()
    assert params["device"] == "cuda:7" and params["contamination"] == 0.2
    for key, value in tiny_params.items():
        assert params[key] == value
    assert not hasattr(det, "device_")
    assert clone(det).get_params() == params
    det.set_params(max_epochs=3)
    assert det.max_epochs == 3
    assert is_outlier_detector(det)
    with pytest.raises(TypeError):
        UniADDetector("tf_efficientnet_lite0")  # keyword-only


def test_default_parameters_are_the_papers():
    p = UniADDetector().get_params()
    assert p["backbone"] == "tf_efficientnet_b4.aa_in1k"
    assert (p["hidden_dim"], p["num_heads"], p["dim_feedforward"]) == (256, 8, 1024)
    assert (p["num_encoder_layers"], p["num_decoder_layers"], p["neighbor_size"]) == (4, 4, 7)
    assert (p["jitter_scale"], p["jitter_prob"], p["max_epochs"], p["batch_size"]) == (
        20.0,
        1.0,
        1000,
        8,
    )
    assert (p["learning_rate"], p["weight_decay"], p["grad_clip"]) == (1e-4, 1e-4, 0.1)
    # the reference's preprocessing and B4 padding
    assert (p["resize"], p["static_padding_size"], p["image_size"]) == ("pil-uint8", "auto", 224)


@pytest.mark.parametrize(
    ("param", "value", "match"),
    [
        ("max_epochs", 0, "max_epochs"),
        ("contamination", 0.7, "contamination"),
        ("precision", "fp16", "precision"),
        ("jitter_prob", 1.5, "jitter_prob"),
        ("num_heads", 3, "divisible"),
        ("neighbor_size", 4, "odd"),
        ("image_size", 16, "image_size"),
        ("checkpoint_every", 0, "checkpoint_every"),
        ("checkpoint_interval", -1.0, "checkpoint_interval"),
        ("warm_start", "yes", "warm_start"),
        ("resize", "bilinear", "resize"),
        ("static_padding_size", "native", "static_padding_size"),
    ],
)
def test_parameters_are_validated_at_fit(tiny_params, images, param, value, match):
    tiny_params[param] = value
    det = UniADDetector(**tiny_params)  # no error here: validation happens in fit
    with pytest.raises(ValueError, match=match):
        det.fit(images)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"backbone": "no_such_net"}, "unknown or unsupported timm backbone 'no_such_net'"),
        ({"neighbor_size": 7}, "hides every key of some query on a 4x4 grid"),  # 64 px: 4x4
        ({"backbone_weights": "missing.pth"}, "backbone weights file not found: .*missing.pth"),
        ({"backbone_weights": "garbage.pth"}, "cannot read backbone weights from .*garbage.pth"),
        ({"checkpoint_path": "garbage.ckpt"}, "cannot read the training checkpoint"),
        ({"checkpoint_path": "other.ckpt"}, "other.ckpt is not a skuniad training checkpoint"),
    ],
)
def test_what_would_fail_after_feature_extraction_fails_before_it(
    tiny_params, images, monkeypatch, tmp_path, change, match
):
    import skuniad._fitting
    import skuniad.detector

    def work(*args, **kwargs):
        raise AssertionError("the fit started its work: a split, a process group, features")

    monkeypatch.setattr(skuniad.detector, "partition", work)
    monkeypatch.setattr(skuniad._fitting, "extract_features", work)
    (tmp_path / "garbage.pth").write_bytes(b"not a weights file")
    (tmp_path / "garbage.ckpt").write_bytes(b"not a checkpoint")
    torch.save({"model": {"weight": torch.zeros(2)}}, tmp_path / "other.ckpt")
    files = ("backbone_weights", "checkpoint_path")
    change = {k: tmp_path / v if k in files else v for k, v in change.items()}
    with pytest.raises((ValueError, BackboneWeightsError), match=match):
        UniADDetector(**{**tiny_params, **change}).fit(images)


def test_methods_before_fit_raise_not_fitted(images):
    det = UniADDetector()
    for method in (
        "score_samples",
        "decision_function",
        "predict",
        "anomaly_maps",
        "predict_masks",
    ):
        with pytest.raises(NotFittedError):
            getattr(det, method)(images)


def test_outlier_semantics(fitted_tiny):
    """How the score is made (the pooled map) and what fit leaves.

    sklearn's outlier-detector contract on held-out images:
    test_sklearn.py::test_outlier_semantics_and_contamination_fraction.
    """
    det, X = fitted_tiny
    scores = det.score_samples(X)
    assert scores.shape == (len(X),) and scores.dtype == np.float64
    np.testing.assert_allclose(det.decision_function(X), scores - det.offset_)
    labels = det.predict(X)
    assert labels.dtype.kind == "i" and set(labels) <= {-1, 1}
    np.testing.assert_array_equal(labels == -1, det.decision_function(X) < 0)
    # the score is the negated max of the 16x16-pooled model-size map
    maps = torch.from_numpy(det.anomaly_maps(X, size="model"))
    pooled = torch.nn.functional.avg_pool2d(maps[:, None], 16, 1).amax((1, 2, 3))
    np.testing.assert_allclose(scores, -pooled.numpy(), rtol=1e-5)
    assert det.feature_shape_ == (192, 4, 4)
    assert det.n_epochs_ == 2 and len(det.loss_curve_) == 2
    assert isinstance(det.model_, torch.nn.Module)


def test_fit_predict_equals_fit_then_predict(tiny_params, images):
    a = UniADDetector(**tiny_params).fit_predict(images)
    b = UniADDetector(**tiny_params).fit(images).predict(images)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("contamination", [0.1, 0.25, 0.5])
def test_float_contamination_flags_that_fraction_of_training_images(tiny_params, contamination):
    """Over several fractions; fit_predict on the training images, as sklearn's
    check_outliers_fit_predict: test_sklearn.py::test_outlier_semantics_and_contamination_fraction.
    """
    X = np.random.default_rng(0).integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
    det = UniADDetector(**tiny_params, contamination=contamination).fit(X)
    flagged = np.mean(det.predict(X) == -1)
    assert flagged == pytest.approx(contamination, abs=1 / len(X))


def test_auto_thresholds_accept_typical_training_images(fitted_tiny):
    det, X = fitted_tiny  # fitted on X, contamination="auto": calibrated on X
    assert det.contamination == "auto" and det.validation_fraction is None
    # the rule itself: median + 3 robust standard deviations of the training values
    assert -det.offset_ == contamination_threshold(-det.score_samples(X), "auto")
    per_image_max = det.anomaly_maps(X, size="model").reshape(len(X), -1).max(1)
    assert det.pixel_threshold_ == contamination_threshold(per_image_max, "auto")
    assert det.thresholds_.image == -det.offset_ and det.thresholds_.groups == {}
    assert np.mean(det.predict(X) == 1) >= 0.5
    assert np.mean(per_image_max <= det.pixel_threshold_) >= 0.5


def test_maps_and_masks_at_input_and_model_size(fitted_tiny):
    det, X = fitted_tiny
    maps = det.anomaly_maps(X)
    assert maps.shape == (len(X), 40, 48) and (maps >= 0).all()
    assert det.anomaly_maps(X, size="model").shape == (len(X), 64, 64)
    masks = det.predict_masks(X)
    assert masks.dtype == bool and masks.shape == maps.shape
    np.testing.assert_array_equal(masks, maps > det.pixel_threshold_)
    np.testing.assert_array_equal(det.predict_masks(X, threshold=-1), np.ones_like(masks))
    mixed = [X[0], X[1][:20, :30]]
    out = det.anomaly_maps(mixed)
    assert isinstance(out, list) and [m.shape for m in out] == [(40, 48), (20, 30)]
    with pytest.raises(ValueError, match="size"):
        det.anomaly_maps(X, size="huge")


def test_arrays_pil_images_and_paths_give_the_same_scores(fitted_tiny, image_files):
    """Kinds of image (PIL, files, floats, grey); kinds of container and memory layout:
    test_sklearn.py::test_containers_and_memory_layouts_score_the_same."""
    det, X = fitted_tiny
    paths = image_files(X)
    expected = det.score_samples(X)
    np.testing.assert_allclose(det.score_samples(list(X)), expected, rtol=1e-6)
    np.testing.assert_allclose(
        det.score_samples([Image.fromarray(x) for x in X]), expected, rtol=1e-6
    )
    np.testing.assert_allclose(det.score_samples(paths), expected, rtol=1e-6)
    np.testing.assert_allclose(det.score_samples([str(p) for p in paths]), expected, rtol=1e-6)
    np.testing.assert_allclose(det.score_samples(X.astype(np.float32) / 255), expected, rtol=1e-4)
    gray = det.score_samples(X[..., 0])
    assert gray.shape == (len(X),) and np.isfinite(gray).all()


def test_score_is_image_auroc_with_either_label_convention(fitted_tiny):
    det, X = fitted_tiny
    anomaly = -det.score_samples(X)
    y01 = (anomaly > np.median(anomaly)).astype(int)
    assert det.score(X, y01) == 1.0
    assert det.score(X, np.where(y01 == 1, -1, 1)) == 1.0
    assert det.score(X, 1 - y01) == 0.0  # never flipped


def test_same_seed_gives_bit_identical_fits(tiny_params, images):
    a = UniADDetector(**tiny_params).fit(images)
    b = UniADDetector(**tiny_params).fit(images)
    state_b = b.model_.state_dict()
    for name, value in a.model_.state_dict().items():
        assert torch.equal(value, state_b[name]), name
    np.testing.assert_array_equal(a.score_samples(images), b.score_samples(images))
    assert a.loss_curve_ == b.loss_curve_
    c = UniADDetector(**{**tiny_params, "random_state": 1}).fit(images)
    assert not np.array_equal(a.score_samples(images), c.score_samples(images))


_FIT_SAVE_AND_HASH = """
import hashlib, sys
import numpy as np, torch
torch.set_num_threads(2)
from skuniad import UniADDetector
X = np.random.default_rng(0).integers(0, 256, size=(6, 40, 48, 3), dtype=np.uint8)
det = UniADDetector(**{params!r}).fit(X)
det.save(sys.argv[1])
model = hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest()
print(model, hashlib.sha256(det.score_samples(X).tobytes()).hexdigest())
"""


@pytest.mark.slow
def test_same_seed_gives_bit_identical_fits_across_processes(tiny_params, tmp_path):
    script = _FIT_SAVE_AND_HASH.format(params=tiny_params)
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(tmp_path / f"{i}.skuniad")],
            cwd=Path(__file__).parents[1],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outputs = []
    for run in runs:
        out, err = run.communicate(timeout=300)
        assert run.returncode == 0, err
        outputs.append(out.split())
    assert len(outputs[0]) == 2 and outputs[0] == outputs[1]  # model file and scores


def test_warm_start_continues_from_the_fitted_weights(tiny_params, images):
    det = UniADDetector(**tiny_params).fit(images)
    before = {k: v.clone() for k, v in det.model_.state_dict().items()}
    first_curve = list(det.loss_curve_)
    det.set_params(warm_start=True, max_epochs=1, learning_rate=1e-9, weight_decay=0.0)
    det.fit(images)
    assert det.n_epochs_ == 3 and det.loss_curve_[:2] == first_curve
    after = det.model_.state_dict()
    for name, value in before.items():  # a tiny learning rate barely moves them
        torch.testing.assert_close(after[name], value, rtol=0, atol=1e-6)
    assert any(not torch.equal(after[name], value) for name, value in before.items())

    det.set_params(warm_start=False, max_epochs=2, learning_rate=1e-4, weight_decay=1e-4)
    det.fit(images)  # a cold fit starts over: the first fit again
    assert det.n_epochs_ == 2 and det.loss_curve_ == first_curve


def test_warm_start_refuses_a_changed_architecture(tiny_params, images):
    det = UniADDetector(**tiny_params).fit(images)
    det.set_params(warm_start=True, hidden_dim=16)
    with pytest.raises(ValueError, match="hidden_dim=32 when fitted, 16 now"):
        det.fit(images)
    assert det.model_.input_proj.out_features == 32  # the fitted model is untouched


def test_fit_does_not_disturb_the_global_torch_rng(tiny_params, images):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    UniADDetector(**tiny_params).fit(images)
    assert torch.equal(torch.rand(3), expected)


def test_pickle_round_trip_keeps_scores(fitted_tiny, tmp_path):
    """pickle and joblib files keep scores and masks; sklearn's check_estimators_pickle (with a
    read-only memmap): test_sklearn.py::test_pickle_round_trip_including_read_only_memmap."""
    det, X = fitted_tiny
    restored = pickle.loads(pickle.dumps(det))
    np.testing.assert_array_equal(restored.score_samples(X), det.score_samples(X))
    joblib.dump(det, tmp_path / "det.joblib")
    again = joblib.load(tmp_path / "det.joblib")
    np.testing.assert_array_equal(again.predict_masks(X), det.predict_masks(X))


def test_keyboard_interrupt_keeps_last_finished_epoch(tiny_params, images, monkeypatch):
    import skuniad.training as training

    calls = {"n": 0}
    original = training.F.mse_loss

    def interrupt_in_third_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # 6 images, batch 4 -> 2 steps per epoch
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(training.F, "mse_loss", interrupt_in_third_epoch)
    det = UniADDetector(**{**tiny_params, "max_epochs": 5})
    # re-raised (a KeyboardInterrupt: loops stop), the detector fitted with epoch 2
    with pytest.raises(KeyboardInterrupt, match="after 2 of 5 epochs.*fitted.*n_epochs_=2") as info:
        det.fit(images)
    assert isinstance(info.value, training.TrainingInterrupted)
    assert info.value.loss_curve == det.loss_curve_
    assert det.n_epochs_ == 2 and len(det.loss_curve_) == 2
    monkeypatch.setattr(training.F, "mse_loss", original)
    assert np.isfinite(det.offset_) and np.isfinite(det.score_samples(images)).all()


@pytest.mark.filterwarnings("ignore:fit trains on every image")
def test_keyboard_interrupt_in_a_search_loop_stops_the_loop(tiny_params, images, monkeypatch):
    from sklearn.model_selection import GridSearchCV

    import skuniad.training as training

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(training.F, "mse_loss", interrupt)
    search = GridSearchCV(UniADDetector(**tiny_params), {"max_epochs": [1, 2]}, cv=2)
    y = np.array([1, 1, 1, -1, -1, -1])
    with pytest.raises(KeyboardInterrupt, match="no epoch finished"):
        search.fit(images, y)
    det = UniADDetector(**tiny_params)
    with pytest.raises(KeyboardInterrupt):
        det.fit(images)
    assert not hasattr(det, "model_")  # interrupted before an epoch: left unfitted


def test_fit_flushes_denormals_only_while_it_runs(tiny_params, images, monkeypatch):
    import skuniad.training as training

    seen = []
    original = training._train_epoch

    def spy(*args, **kwargs):
        tiny = torch.tensor([1e-40], dtype=torch.float32)  # a denormal
        seen.append(float(tiny * 1.0))
        return original(*args, **kwargs)

    monkeypatch.setattr(training, "_train_epoch", spy)
    UniADDetector(**tiny_params).fit(images)
    assert seen and all(value == 0.0 for value in seen)
    assert float(torch.tensor([1e-40], dtype=torch.float32) * 1.0) != 0.0


@pytest.mark.parametrize("method", ["mean", "std"])
def test_image_score_parameter_chooses_how_maps_become_scores(fitted_tiny, method):
    det, X = fitted_tiny
    other = clone(det).set_params(image_score=method).fit(X)  # same seed: same weights
    maps = det.anomaly_maps(X, size="model").reshape(len(X), -1)
    expected = maps.mean(1) if method == "mean" else maps.std(1)
    np.testing.assert_allclose(-other.score_samples(X), expected, rtol=1e-5)
    np.testing.assert_array_equal(other.anomaly_maps(X), det.anomaly_maps(X))


def test_layer_queries_parameter_builds_the_ablated_decoder(tiny_params, images):
    det = UniADDetector(**{**tiny_params, "num_decoder_layers": 2, "layer_queries": "first"})
    det.fit(images)
    assert [layer.layer_queries is not None for layer in det.model_.decoder] == [True, False]


def test_scoring_does_not_disturb_the_global_torch_rng(fitted_tiny):
    det, X = fitted_tiny
    before = torch.get_rng_state()
    det.score_samples(X)
    assert torch.equal(torch.get_rng_state(), before)


def test_set_params_after_fit_changes_neither_scoring_nor_the_saved_model(
    tiny_params, images, tmp_path
):
    det = UniADDetector(**tiny_params).fit(images)
    expected = det.score_samples(images)
    det.set_params(image_size=96, hidden_dim=16, out_indices=(1, 2))
    np.testing.assert_array_equal(det.score_samples(images), expected)
    assert det.anomaly_maps(images, size="model").shape == (len(images), 64, 64)
    det.save(tmp_path / "m.skuniad")
    loaded = UniADDetector.load(tmp_path / "m.skuniad", device="cpu")
    assert (loaded.image_size, loaded.hidden_dim, loaded.out_indices) == (64, 32, (0, 1, 2, 3))
    np.testing.assert_array_equal(loaded.score_samples(images), expected)
    restored = pickle.loads(pickle.dumps(det))
    np.testing.assert_array_equal(restored.score_samples(images), expected)
    det.fit(images)  # the next fit uses the new parameters
    assert det.anomaly_maps(images, size="model").shape == (len(images), 96, 96)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"out_indices": (1, 2, 3)}, "out_indices=[0, 1, 2, 3] when fitted, [1, 2, 3] now"),
        ({"backbone_weights": "imagenet"}, "backbone_weights=None when fitted, 'imagenet' now"),
        ({"static_padding_size": 96}, "static_padding_size='auto' when fitted, 96 now"),
        ({"resize": "float"}, "resize='pil-uint8' when fitted, 'float' now"),
        ({"image_size": 96}, "image_size=64 when fitted, 96 now"),
    ],
)
def test_warm_start_refuses_changes_the_reused_networks_would_ignore(
    fitted_tiny, images, change, named
):
    det = clone(fitted_tiny[0])
    det.__dict__.update({k: v for k, v in vars(fitted_tiny[0]).items() if k.endswith("_")})
    det.set_params(warm_start=True, **change)
    with pytest.raises(ValueError, match=re.escape(named)):
        det.fit(images)


@pytest.mark.parametrize(
    ("device", "match"),
    [
        ("gpu", "device='gpu' is not a device skuniad runs on: use 'auto', 'cpu'"),
        ("meta", "device='meta' is not a device"),
        ("cuda:0", "CUDA is not available"),
    ],
)
def test_unknown_or_absent_devices_are_refused_clearly(tiny_params, images, device, match):
    if device == "cuda:0" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match=match):
        UniADDetector(**tiny_params, device=device).fit(images)


@pytest.mark.parametrize(
    ("out_indices", "match"),
    [
        ((0, 9), r"out_indices=\(0, 9\) names a stage .* lacks: it has 5 feature stages, 0 to 4"),
        ((1, 1), "increasing without repeats"),
        ((2, 1), "increasing without repeats"),
        ((-1,), "stage numbers"),
        ((0.5,), "stage numbers"),
    ],
)
def test_out_indices_are_checked_against_the_backbone(tiny_params, images, out_indices, match):
    with pytest.raises(ValueError, match=match):
        UniADDetector(**{**tiny_params, "out_indices": out_indices}).fit(images)


def test_fit_warns_when_y_marks_images_anomalous(tiny_params, images):
    det = UniADDetector(**{**tiny_params, "max_epochs": 1})
    with pytest.warns(UserWarning, match="y marks 2 of 6 anomalous"):
        det.fit(images, np.array([0, 0, 0, 0, 1, 1]))
    with pytest.warns(UserWarning, match="y marks 1 of 6"):
        det.fit(images, [1, 1, 1, 1, 1, -1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        det.fit(images, np.ones(6))  # sklearn's "all inliers"
        det.fit(images, np.zeros(6))


def test_fit_restores_the_denormal_mode_it_found(tiny_params, images):
    from skuniad.device import denormals_flushed

    try:
        torch.set_flush_denormal(True)  # as tune_cpu_runtime() does
        det = UniADDetector(**{**tiny_params, "max_epochs": 1}).fit(images)
        det.score_samples(images)
        assert denormals_flushed()
    finally:
        torch.set_flush_denormal(False)
    det.score_samples(images)
    assert not denormals_flushed()


def _count_backbone_calls(det, monkeypatch) -> dict:
    calls = {"images": 0}
    forward = type(det.backbone_).forward

    def counting(module, images):
        calls["images"] += len(images)
        return forward(module, images)

    monkeypatch.setattr(type(det.backbone_), "forward", counting)
    return calls


def test_predict_all_runs_the_networks_once_and_equals_each_method(fitted_tiny, monkeypatch):
    det, X = fitted_tiny
    calls = _count_backbone_calls(det, monkeypatch)
    result = det.predict_all(X)
    assert calls["images"] == len(X)
    assert set(result) == {
        "score_samples",
        "decision_function",
        "predict",
        "anomaly_maps",
        "predict_masks",
    }
    np.testing.assert_array_equal(result.score_samples, det.score_samples(X))
    np.testing.assert_array_equal(result.decision_function, det.decision_function(X))
    np.testing.assert_array_equal(result.predict, det.predict(X))
    np.testing.assert_array_equal(result.anomaly_maps, det.anomaly_maps(X))
    np.testing.assert_array_equal(result.predict_masks, det.predict_masks(X))
    model_size = det.predict_all(list(X), size="model")
    np.testing.assert_array_equal(model_size.anomaly_maps, det.anomaly_maps(X, size="model"))


def test_predict_chunks_bounds_memory_and_skips_unreadable_files(fitted_tiny, image_files):
    det, X = fitted_tiny
    paths = image_files(X)
    whole = det.predict_all(paths)
    chunks = list(det.predict_chunks(paths, chunk_size=4))
    assert [list(c.indices) for c in chunks] == [[0, 1, 2, 3], [4, 5]]
    np.testing.assert_array_equal(
        np.concatenate([c.score_samples for c in chunks]), whole.score_samples
    )
    assert [m.shape for c in chunks for m in c.anomaly_maps] == [(40, 48)] * len(X)
    paths[1].write_bytes(b"broken")
    with pytest.raises(ValueError, match="image 1: .*1.png is not a readable image"):
        list(det.predict_chunks(paths, chunk_size=4))
    (first, second) = det.predict_chunks(paths, chunk_size=4, errors="skip")
    assert first.errors[1].endswith("1.png is not a readable image file")
    assert first.errors[0] is None and second.errors == [None, None]
    assert np.isnan(first.score_samples[1]) and first.predict[1] == 0
    assert first.anomaly_maps[1] is None and first.predict_masks[1] is None
    np.testing.assert_array_equal(first.score_samples[[0, 2, 3]], whole.score_samples[[0, 2, 3]])
    np.testing.assert_array_equal(first.predict[[0, 2, 3]], whole.predict[[0, 2, 3]])


def test_anomaly_maps_type_follows_the_input_not_the_sizes(fitted_tiny):
    det, X = fitted_tiny
    assert isinstance(det.anomaly_maps(X), np.ndarray)
    listed = det.anomaly_maps(list(X))  # all of one size, still a list
    assert isinstance(listed, list) and len(listed) == len(X)
    np.testing.assert_array_equal(np.stack(listed), det.anomaly_maps(X))
    assert isinstance(det.predict_masks(list(X)), list)
    assert isinstance(det.anomaly_maps(list(X), size="model"), np.ndarray)


def test_tensors_are_scored_like_arrays(fitted_tiny):
    det, X = fitted_tiny
    tensor = torch.from_numpy(X).permute(0, 3, 1, 2).float() / 255
    np.testing.assert_allclose(det.score_samples(tensor), det.score_samples(X), rtol=1e-5)
    assert isinstance(det.anomaly_maps(tensor), np.ndarray)


def test_verbose_scoring_shows_progress(fitted_tiny, capsys):
    det, X = fitted_tiny
    det = pickle.loads(pickle.dumps(det))
    det.set_params(verbose=1)
    det.score_samples(X)
    assert "scoring" in capsys.readouterr().out
    det.set_params(verbose=0)
    det.score_samples(X)
    assert capsys.readouterr().out == ""


# ---------------------------------------------------------- CUDA paths (faked)
def test_fit_forks_the_rng_of_the_gpu_in_use(gpus, monkeypatch, tiny_params, images, recorder):
    gpus(count=2, capabilities=[(8, 0)] * 2, current=1)
    forked = recorder()

    def fork_rng(*args, **kwargs):
        forked.append(kwargs)
        raise RuntimeError("stop here: the rest needs a real GPU")

    monkeypatch.setattr(torch.random, "fork_rng", fork_rng)
    det = UniADDetector(**{**tiny_params, "device": "cuda", "precision": "fp32"})
    with pytest.raises(RuntimeError, match="stop here"):
        det.fit(images)
    assert forked[0]["devices"] == [1]


@pytest.mark.slow
@pytest.mark.parametrize(("precision", "tolerance"), [("fp32", 1e-4), ("bf16", 3e-2)])
def test_compiled_and_eager_fits_give_the_same_maps_within_the_precisions_tolerance(
    precision, tolerance, tiny_params
):
    """TorchInductor for real: a training step and scoring (minutes of C++ compilation)."""
    X = np.random.default_rng(2).integers(0, 256, size=(8, 40, 48, 3), dtype=np.uint8)
    params = {**tiny_params, "precision": precision, "max_epochs": 1, "batch_size": 8}
    params.update(dropout=0.0, jitter_scale=0.0)  # no random numbers: the same maths
    eager = UniADDetector(**params).fit(X)
    compiled = UniADDetector(**params, compile=True).fit(X)
    expected = eager.anomaly_maps(X, size="model")
    maps = compiled.anomaly_maps(X, size="model")
    assert np.abs(maps - expected).max() <= tolerance * (expected.max() - expected.min())
    assert compiled.loss_curve_ == pytest.approx(eager.loss_curve_, rel=tolerance)
