"""Safe model files (save / load) and pickling of fitted detectors."""

import dataclasses
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

import skuniad.persistence as persistence
from skuniad import UniADDetector
from skuniad._spec import training_fingerprint


@pytest.fixture(scope="module")
def saved(fitted_tiny, tmp_path_factory):
    det, X = fitted_tiny
    path = tmp_path_factory.mktemp("model") / "model.skuniad"
    det.save(path)
    return det, X, path


def _rewrite_metadata(source, target, change) -> None:
    """Copy a model file, letting ``change`` edit its JSON metadata (the copy has no digest)."""
    with safe_open(str(source), framework="pt") as f:
        metadata = json.loads(f.metadata()["skuniad"])
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    del metadata["sha256"]
    change(metadata)
    save_file(tensors, str(target), metadata={"skuniad": json.dumps(metadata)})


def test_save_load_round_trip_gives_identical_scores_and_masks(saved):
    det, X, path = saved
    torch.manual_seed(0)
    expected_draw = torch.rand(3)
    torch.manual_seed(0)
    loaded = UniADDetector.load(path)
    assert torch.equal(torch.rand(3), expected_draw)  # loading leaves the global RNG alone
    np.testing.assert_array_equal(loaded.score_samples(X), det.score_samples(X))
    np.testing.assert_array_equal(loaded.predict_masks(X), det.predict_masks(X))
    assert loaded.get_params() == det.get_params()
    assert isinstance(loaded.out_indices, tuple)
    for name in ("offset_", "pixel_threshold_", "n_epochs_", "loss_curve_", "feature_shape_"):
        assert getattr(loaded, name) == getattr(det, name), name
    assert (loaded.backbone_.mean, loaded.backbone_.std) == (det.backbone_.mean, det.backbone_.std)


def test_model_file_is_one_safetensors_file_with_json_metadata(saved):
    det, _, path = saved
    with safe_open(str(path), framework="pt") as f:
        header = f.metadata()
        names = set(f.keys())
    assert set(header) == {"skuniad"}  # one entry: safetensors orders several at random
    metadata = json.loads(header["skuniad"])
    assert (
        metadata["format"] == "skuniad" and metadata["format_version"] == persistence.FORMAT_VERSION
    )
    assert set(metadata) == {
        *("format", "format_version", "params", "fitted", "backbone", "versions", "sha256")
    }
    assert set(metadata["versions"]) == {"skuniad", "torch", "timm"}
    assert metadata["params"]["out_indices"] == [0, 1, 2, 3]
    assert metadata["fitted"]["feature_shape_"] == list(det.feature_shape_)
    expected = {f"backbone.{k}" for k in det.backbone_.state_dict()}
    expected |= {f"model.{k}" for k in det.model_.state_dict()}
    assert names == expected


def test_load_never_reads_backbone_weights_from_elsewhere(fitted_tiny, tiny_params, tmp_path):
    det, X = fitted_tiny
    weights = tmp_path / "gone.pth"
    torch.save(det.backbone_.body.state_dict(), weights)
    fitted = UniADDetector(**{**tiny_params, "backbone_weights": str(weights)}).fit(X)
    fitted.save(tmp_path / "m.skuniad")
    weights.unlink()  # not there when loading
    loaded = UniADDetector.load(tmp_path / "m.skuniad")
    assert loaded.backbone_weights == str(weights)
    np.testing.assert_array_equal(loaded.score_samples(X), fitted.score_samples(X))


def test_load_honours_the_device_argument(saved, monkeypatch):
    _, _, path = saved
    assert UniADDetector.load(path, device="cpu").device_ == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    det = UniADDetector.load(path, device="auto")
    assert det.device_ == torch.device("cpu")
    assert all(p.device.type == "cpu" for p in det.model_.parameters())
    with pytest.raises(ValueError, match="CUDA is not available"):
        UniADDetector.load(path, device="cuda")


def test_crafted_pickle_is_rejected_without_running_its_code(tmp_path):
    sentinel = tmp_path / "payload_ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(sentinel), "w"))

    path = tmp_path / "evil.skuniad"
    path.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(ValueError, match="not a skuniad model file.*pickle"):
        UniADDetector.load(path)
    assert not sentinel.exists()
    pickle.loads(path.read_bytes())  # control: the payload is live when unpickled
    assert sentinel.exists()


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"just some text, not a model\n", "not a skuniad model file"),
        (b"", "not a skuniad model file"),
        (b"PK\x03\x04" + bytes(60), "zip archive"),
    ],
)
def test_files_of_other_kinds_are_rejected(tmp_path, content, match):
    path = tmp_path / "model.skuniad"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=match):
        UniADDetector.load(path)


def test_plain_safetensors_file_is_rejected(tmp_path):
    path = tmp_path / "weights.safetensors"
    save_file({"w": torch.zeros(2)}, str(path), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="safetensors file but not a skuniad model"):
        UniADDetector.load(path)


def test_truncated_file_is_rejected(saved, tmp_path):
    _, _, path = saved
    data = path.read_bytes()
    for size in (5, 200, len(data) // 2, len(data) - 1):
        cut = tmp_path / f"cut{size}.skuniad"
        cut.write_bytes(data[:size])
        with pytest.raises(ValueError, match="truncated"):
            UniADDetector.load(cut)


def test_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.skuniad"):
        UniADDetector.load(tmp_path / "nope.skuniad")


def test_newer_format_version_says_what_differs(saved, tmp_path):
    _, _, path = saved
    newer = tmp_path / "newer.skuniad"

    def bump(metadata):
        metadata["format_version"] = persistence.FORMAT_VERSION + 1
        metadata["versions"]["skuniad"] = "9.0.0"

    _rewrite_metadata(path, newer, bump)
    newest = persistence.FORMAT_VERSION
    expected = rf"format version {newest + 1}, written by skuniad 9\.0\.0.*up to {newest}"
    with pytest.raises(ValueError, match=expected):
        UniADDetector.load(newer)


def test_older_compatible_file_loads_with_defaults_for_newer_parameters(saved, tmp_path):
    det, X, path = saved
    older = tmp_path / "older.skuniad"

    def age(metadata):
        metadata["versions"] = {"skuniad": "0.0.1", "torch": "2.1.0", "timm": "1.0.0"}
        for name in ("warm_start", "checkpoint_path", "checkpoint_every"):
            metadata["params"].pop(name, None)

    _rewrite_metadata(path, older, age)
    loaded = UniADDetector.load(older)
    assert (loaded.warm_start, loaded.checkpoint_path, loaded.checkpoint_every) == (
        False,
        None,
        None,
    )
    np.testing.assert_array_equal(loaded.score_samples(X), det.score_samples(X))


def test_a_model_file_keeps_no_checkpoint_settings_of_the_run_that_wrote_it(saved, tmp_path):
    det, X, path = saved
    assert not {"checkpoint_path", "checkpoint_every", "checkpoint_interval"} & set(
        persistence.read_metadata(path)["params"]
    )
    older = tmp_path / "older.skuniad"  # written before, with the run's settings; then moved

    def with_run_settings(metadata):
        metadata["params"].update(checkpoint_path="/gone/m.skuniad.ckpt", checkpoint_every=5)

    _rewrite_metadata(path, older, with_run_settings)
    loaded = UniADDetector.load(older)
    assert (loaded.checkpoint_path, loaded.checkpoint_every) == (None, None)  # warm start: no


def test_files_and_pickles_from_before_resize_keep_their_preprocessing(saved, tmp_path):
    # written before resize and static_padding_size existed: float resize, timm's padding
    det, X, path = saved
    older = tmp_path / "older.skuniad"

    def age(metadata):
        del metadata["params"]["resize"], metadata["params"]["static_padding_size"]

    _rewrite_metadata(path, older, age)
    loaded = UniADDetector.load(older)
    assert (loaded.resize, loaded.static_padding_size) == ("float", None)
    assert UniADDetector().resize == "pil-uint8"
    as_fitted = pickle.loads(pickle.dumps(det)).set_params(resize="float")
    as_fitted.network_spec_ = dataclasses.replace(as_fitted.network_spec_, resize="float")
    np.testing.assert_array_equal(loaded.score_samples(X), as_fitted.score_samples(X))
    state = det.__getstate__()
    del state["resize"], state["static_padding_size"]
    unpickled = UniADDetector.__new__(UniADDetector)
    unpickled.__setstate__(state)
    assert (unpickled.resize, unpickled.static_padding_size) == ("float", None)


def test_resize_is_saved_and_part_of_the_training_fingerprint(saved, tmp_path):
    det, X, path = saved
    assert UniADDetector.load(path).resize == det.resize == "pil-uint8"
    assert training_fingerprint(det.get_params(), 0)["resize"] == "pil-uint8"
    changed = clone(det).set_params(resize="float").get_params()
    assert training_fingerprint(changed, 0)["resize"] == "float"


def test_unknown_parameters_are_named(saved, tmp_path):
    _, _, path = saved
    other = tmp_path / "other.skuniad"
    _rewrite_metadata(path, other, lambda m: m["params"].update(future_knob=3))
    with pytest.raises(ValueError, match="future_knob"):
        UniADDetector.load(other)


@pytest.mark.parametrize("failure", [OSError("disk full"), KeyboardInterrupt()])
def test_failed_save_keeps_the_previous_file_and_leaves_no_temporary(
    fitted_tiny, tmp_path, monkeypatch, failure
):
    det, _ = fitted_tiny
    path = tmp_path / "model.skuniad"
    det.save(path)
    good = path.read_bytes()

    def write_half_then_fail(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(good[: len(good) // 2])
        raise failure

    monkeypatch.setattr(persistence, "save_file", write_half_then_fail)
    with pytest.raises(type(failure)):
        det.save(path)
    assert path.read_bytes() == good
    assert os.listdir(tmp_path) == ["model.skuniad"]


def test_saving_an_unfitted_detector_raises_not_fitted(tmp_path):
    with pytest.raises(NotFittedError):
        UniADDetector().save(tmp_path / "m.skuniad")
    assert not os.listdir(tmp_path)


def test_pickled_state_holds_cpu_tensors_not_modules(fitted_tiny):
    det, _ = fitted_tiny
    state = det.__getstate__()
    assert "model_" not in state and "backbone_" not in state
    assert not any(isinstance(v, torch.nn.Module) for v in state.values())
    tensors = state["_module_tensors"]
    assert all(t.device.type == "cpu" for t in tensors.values())
    assert len(tensors) == len(det.backbone_.state_dict()) + len(det.model_.state_dict())
    assert "model_" in vars(det)  # getting the state did not strip the detector


def test_gpu_fitted_model_unpickles_on_a_cpu_only_machine(fitted_tiny, monkeypatch):
    det, X = fitted_tiny
    on_gpu = pickle.loads(pickle.dumps(det))
    on_gpu.device_ = torch.device("cuda:0")  # as if fitted on a GPU
    data = pickle.dumps(on_gpu)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    restored = pickle.loads(data)
    assert restored.device_ == torch.device("cpu")
    assert all(p.device.type == "cpu" for p in restored.model_.parameters())
    np.testing.assert_array_equal(restored.score_samples(X), det.score_samples(X))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_fitted_model_loads_in_a_process_without_cuda(tiny_params, images, tmp_path):
    import joblib

    det = UniADDetector(**tiny_params, device="cuda").fit(images)
    joblib.dump(det, tmp_path / "det.joblib")
    det.save(tmp_path / "det.skuniad")
    np.save(tmp_path / "images.npy", images)
    script = (
        "import sys, joblib, numpy as np, torch\n"
        "from skuniad import UniADDetector\n"
        "assert not torch.cuda.is_available()\n"
        "X = np.load(sys.argv[1] + '/images.npy')\n"
        "a = joblib.load(sys.argv[1] + '/det.joblib')\n"
        "b = UniADDetector.load(sys.argv[1] + '/det.skuniad')\n"
        "assert a.device_.type == b.device_.type == 'cpu'\n"
        "print(np.isfinite(a.score_samples(X)).all() and np.isfinite(b.score_samples(X)).all())\n"
    )
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m["fitted"].update(offset_=float("nan")), "offset_ is nan"),
        (lambda m: m["fitted"].update(pixel_threshold_=float("inf")), "pixel_threshold_ is inf"),
        (lambda m: m["backbone"].update(std=[0.0, 0.2, 0.2]), "std must be positive"),
        (
            lambda m: m["fitted"].update(group_thresholds=[["good", float("nan"), 1.0]]),
            "image threshold of group 'good' is nan",
        ),
        (
            lambda m: m["fitted"].update(group_thresholds=[["good", 1.0, float("nan")]]),
            "pixel threshold of group 'good' is nan",
        ),
    ],
)
def test_a_model_file_that_would_score_nan_is_refused(saved, tmp_path, change, message):
    _, _, path = saved
    damaged = tmp_path / "damaged.skuniad"
    _rewrite_metadata(path, damaged, change)
    with pytest.raises(ValueError, match=message):
        UniADDetector.load(damaged)


def test_non_finite_weights_are_refused_on_load(saved, tmp_path):
    _, _, path = saved
    with safe_open(str(path), framework="pt") as f:
        header = f.metadata()
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    name = next(k for k in tensors if k.startswith("model.") and tensors[k].is_floating_point())
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] = float("nan")
    save_file(tensors, str(tmp_path / "nan.skuniad"), metadata=header)
    with pytest.raises(ValueError, match=f"tensor '{name}' holds NaN"):
        UniADDetector.load(tmp_path / "nan.skuniad")


def test_a_compiled_fit_leaves_no_compiled_module_in_files_pickles_or_clones(
    compile_eagerly, fast_params, images, tmp_path
):
    images = images[:4]  # one batch: one training graph, one scoring graph
    eager = UniADDetector(**fast_params).fit(images)
    det = UniADDetector(**fast_params, compile=True).fit(images)
    assert compile_eagerly["stats"]["unique_graphs"] >= 2  # training and scoring graphs
    assert type(det.model_) is type(eager.model_)
    assert not any("_orig_mod" in key for key in det.model_.state_dict())
    det.save(tmp_path / "compiled.skuniad")
    eager.save(tmp_path / "eager.skuniad")
    files = [safe_open(tmp_path / name, "pt") for name in ("compiled.skuniad", "eager.skuniad")]
    assert set(files[0].keys()) == set(files[1].keys())
    metadata = [json.loads(f.metadata()["skuniad"]) for f in files]
    assert metadata[0]["params"] == metadata[1]["params"]  # compile is not written
    assert "compile" not in metadata[0]["params"]
    assert UniADDetector.load(tmp_path / "compiled.skuniad").compile is False
    unpickled = pickle.loads(pickle.dumps(det))
    assert unpickled.compile is True and "model_" not in det.__getstate__()
    np.testing.assert_allclose(
        unpickled.score_samples(images), det.score_samples(images), rtol=1e-6
    )
    assert clone(det).compile is True


def test_compile_is_no_part_of_the_training_fingerprint(tiny_params):
    compiled = UniADDetector(**tiny_params, compile=True).get_params()
    assert training_fingerprint(compiled, 0) == training_fingerprint(
        {**compiled, "compile": False}, 0
    )


def test_a_pickle_from_before_compile_unpickles_with_compile_off(fitted_tiny):
    det, X = fitted_tiny
    state = det.__getstate__()
    del state["compile"]
    unpickled = UniADDetector.__new__(UniADDetector)
    unpickled.__setstate__(state)
    assert unpickled.compile is False
    np.testing.assert_array_equal(unpickled.score_samples(X), det.score_samples(X))


def _set(section, **values):
    return lambda metadata: metadata[section].update(values)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m["fitted"].pop("n_epochs_"), "lacks fitted.n_epochs_"),
        (_set("fitted", n_epochs_="3"), "fitted.n_epochs_ is '3'"),
        (_set("fitted", group_thresholds=5), "fitted.group_thresholds is 5"),
        (_set("fitted", group_thresholds=[[["a"], 1, 2]]), r"group_thresholds is \[\['a'\]"),
        (_set("fitted", group_thresholds=[["a", 1.0]]), r"group_thresholds is \['a', 1.0\]"),
        (_set("fitted", offset_="abc"), "fitted.offset_ is 'abc'"),
        (_set("fitted", held_out=5), "fitted.held_out is 5, not {scores, map_maxima"),
        (_set("fitted", held_out={"scores": [1.0], "map_maxima": []}), "fitted.held_out is"),
        (
            _set("fitted", held_out={"scores": [float("nan")], "map_maxima": [1.0]}),
            "fitted.held_out is .*lists of finite numbers",
        ),
        (
            _set("fitted", held_out={"scores": [1.0], "map_maxima": [1.0], "groups": [[1]]}),
            "groups: null or one per score",
        ),
        (_set("fitted", loss_curve_=["a"]), "fitted.loss_curve_"),
        (_set("fitted", feature_shape_=[192, 10**5, 10**5]), "a grid of 1 to 16384 tokens"),
        (_set("backbone", std=[0.2]), r"backbone.std is \[0.2\], not 3 numbers"),
        (_set("params", out_indices="abc"), "invalid parameters: The 'out_indices' parameter"),
        (_set("params", hidden_dim=None), "invalid parameters: The 'hidden_dim' parameter"),
        (_set("params", static_padding_size="junk"), "The 'static_padding_size' parameter"),
        (_set("params", batch_size=0), "The 'batch_size' parameter"),
        # sizes that would allocate GBs (768 GB here) are refused before anything is built
        (_set("params", hidden_dim=10**9), r"hidden_dim=1000000000 is more than the \d+ values"),
        (_set("params", dim_feedforward=10**9), "dim_feedforward=1000000000 is more than"),
        (
            _set("params", hidden_dim=40000),
            r"input_proj.weight. has shape \[32, 192\], but the saved parameters give \[40000",
        ),
        (_set("params", num_encoder_layers=10**9), "describe 1000000001 transformer layers"),
        (_set("params", image_size=200000), "image_size=200000 gives 192 x 12500 x 12500"),
    ],
)
def test_malformed_metadata_is_refused_in_one_line_before_building(
    saved, tmp_path, change, message
):
    from skuniad.errors import ModelFileError

    _, _, path = saved
    damaged = tmp_path / "damaged.skuniad"
    _rewrite_metadata(path, damaged, change)
    with pytest.raises(ModelFileError, match=message) as refused:
        UniADDetector.load(damaged)
    assert str(damaged) in str(refused.value) and "\n" not in str(refused.value)


def test_deeply_nested_metadata_is_refused_in_one_line(saved, tmp_path):
    from skuniad.errors import ModelFileError

    _, _, path = saved
    with safe_open(str(path), framework="pt") as f:
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    nested = '{"format": "skuniad", "x": ' + "[" * 100_000 + "]" * 100_000 + "}"
    save_file(tensors, str(tmp_path / "deep.skuniad"), metadata={"skuniad": nested})
    with pytest.raises(ModelFileError, match="nested too deeply"):
        UniADDetector.load(tmp_path / "deep.skuniad")


@pytest.mark.parametrize("backbone", ["hf-hub:attacker/evil-model", "local-dir:/etc"])
def test_a_model_file_never_names_a_hub_or_folder_backbone(saved, tmp_path, monkeypatch, backbone):
    import timm

    from skuniad.errors import ModelFileError

    def no_network(*args, **kwargs):
        raise AssertionError("a backbone was built from the hub or a folder")

    monkeypatch.setattr(timm, "create_model", no_network)
    _, _, path = saved
    damaged = tmp_path / "hub.skuniad"
    _rewrite_metadata(path, damaged, _set("params", backbone=backbone))
    with pytest.raises(ModelFileError, match="names a model hub or folder source"):
        UniADDetector.load(damaged)


def test_fit_refuses_a_hub_backbone_before_any_work(tiny_params, images, monkeypatch):
    import timm

    monkeypatch.setattr(timm, "create_model", None)  # never reached
    det = UniADDetector(**{**tiny_params, "backbone": "hf-hub:timm/resnet18.a1_in1k"})
    with pytest.raises(ValueError, match="timm's own architecture names only"):
        det.fit(images)


@pytest.mark.parametrize("dtype", [torch.int64, torch.float16])
def test_tensors_stored_in_another_dtype_are_refused(saved, tmp_path, dtype):
    from skuniad.errors import ModelFileError

    _, _, path = saved
    with safe_open(str(path), framework="pt") as f:
        header = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    cast = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    save_file(cast, str(tmp_path / "cast.skuniad"), metadata=header)
    with pytest.raises(ModelFileError, match=rf"is stored as {dtype}, not torch.float32"):
        UniADDetector.load(tmp_path / "cast.skuniad")


def test_a_damaged_or_edited_file_fails_its_integrity_check(saved, tmp_path):
    from skuniad.errors import ModelFileError

    _, _, path = saved
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01  # one bit of the last tensor: still finite, still loadable without a digest
    (tmp_path / "damaged.skuniad").write_bytes(bytes(data))
    with safe_open(str(path), framework="pt") as f:
        header = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    metadata = json.loads(header["skuniad"])
    metadata["params"]["backbone"] = "efficientnet_lite0"  # same tensors, other padding
    edited = {"skuniad": json.dumps(metadata)}
    save_file(tensors, str(tmp_path / "edited.skuniad"), metadata=edited)
    for name in ("damaged", "edited"):
        with pytest.raises(ModelFileError, match="fails its integrity check"):
            UniADDetector.load(tmp_path / f"{name}.skuniad")
    del metadata["sha256"]  # as written before digests
    metadata["params"]["backbone"] = json.loads(header["skuniad"])["params"]["backbone"]
    save_file(tensors, str(tmp_path / "old.skuniad"), metadata={"skuniad": json.dumps(metadata)})
    assert UniADDetector.load(tmp_path / "old.skuniad").n_epochs_ >= 1


def test_a_leftover_temporary_file_is_reported_and_kept(tmp_path):
    from skuniad.persistence import atomic_write

    target = tmp_path / "model.skuniad"
    leftover = tmp_path / ".model.skuniad.0123456789ab.tmp"  # a save killed before its rename
    leftover.write_bytes(b"complete copy")
    (tmp_path / ".other.skuniad.0123456789ab.tmp").write_bytes(b"")  # another target's
    with pytest.warns(UserWarning, match=r"1 temporary file\(s\) .*\.model\.skuniad\.0123"):
        with atomic_write(target) as temporary:
            temporary.write_bytes(b"new")
    assert target.read_bytes() == b"new" and leftover.read_bytes() == b"complete copy"
