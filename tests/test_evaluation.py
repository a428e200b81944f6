import copy
import csv
import json
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from skuniad import UniADDetector
from skuniad.datasets import load_mask, load_mvtec, write_synthetic
from skuniad.evaluation import (
    METRICS,
    PIXEL_METRICS,
    check_test_set,
    evaluate_detector,
    operating_point_table,
    results_markdown,
    results_table,
    run_experiment,
    scores_and_maps,
    write_results,
)
from skuniad.metrics import evaluate

CATEGORIES = ("parts", "stripes")  # load_mvtec sorts by name


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synthetic")
    return write_synthetic(folder, categories=CATEGORIES, n_train=6, n_test=6, image_size=32)


@pytest.fixture(scope="module")
def test_set(root):
    """The synthetic test split: 6 images per category, 3 of them anomalous."""
    return load_mvtec(root, "test")


@pytest.fixture(scope="module")
def fitted(root, tiny_settings):
    train = load_mvtec(root, "train")
    return UniADDetector(**{**tiny_settings, "max_epochs": 1}).fit(train.paths)


class OracleDetector:
    """Answers with the ground-truth masks (plus a constant), as a perfect detector would."""

    image_size = 64
    image_score = "max"

    def __init__(self, dataset, offset=0.25):
        self.maps = {
            path: (
                np.zeros((64, 64), np.float32)
                if mask is None
                else load_mask(mask, size=(64, 64)).astype(np.float32)
            )
            + offset
            for path, mask in zip(dataset.paths, dataset.mask_paths, strict=True)
        }

    def anomaly_maps(self, X, size="input"):
        assert size == "model"
        return np.stack([self.maps[p] for p in X])


def test_scores_and_maps_match_the_detector(fitted, test_set):
    scores, maps = scores_and_maps(fitted, test_set.paths)
    np.testing.assert_allclose(scores, -fitted.score_samples(test_set.paths), rtol=1e-6)
    np.testing.assert_array_equal(maps, fitted.anomaly_maps(test_set.paths, size="model"))
    assert maps.shape == (len(test_set), 64, 64)


def test_perfect_maps_score_one_everywhere(test_set):
    results = evaluate_detector(OracleDetector(test_set), test_set)
    assert list(results["categories"]) == list(CATEGORIES)
    for row in [*results["categories"].values(), results["mean"]]:
        for key in METRICS:
            assert row[key] == pytest.approx(1.0)


def test_results_follow_the_metrics_module(fitted, test_set):
    results = evaluate_detector(fitted, test_set)
    subset = test_set.subset("parts")
    maps = fitted.anomaly_maps(subset.paths, size="model")
    masks = np.stack(
        [
            np.zeros((64, 64), bool) if m is None else load_mask(m, (64, 64))
            for m in subset.mask_paths
        ]
    )
    expected = evaluate(subset.labels, -fitted.score_samples(subset.paths), masks, maps)
    row = results["categories"]["parts"]
    for key in METRICS:
        assert row[key] == pytest.approx(expected[key])
        assert 0.0 <= row[key] <= 1.0
    assert (row["n_images"], row["n_anomalous"]) == (6, 3)
    assert (results["n_images"], results["n_anomalous"], results["image_size"]) == (12, 6, 64)
    for key in METRICS:
        per_category = [r[key] for r in results["categories"].values()]
        assert results["mean"][key] == pytest.approx(np.mean(per_category))


def test_overlays_show_image_and_map_side_by_side(test_set, tmp_path):
    results = evaluate_detector(
        OracleDetector(test_set), test_set, overlay_dir=tmp_path, n_overlays=3
    )
    files = sorted(tmp_path.rglob("*.png"))
    assert [str(p) for p in files] == sorted(results["overlays"])
    assert {p.parent.name for p in files} == set(CATEGORIES)
    assert len(files) == 2 * 3  # one normal + two anomalous per category
    assert sum(p.name.startswith("good_") for p in files) == 2
    with Image.open(files[0]) as image:
        assert image.size == (128, 64)


def test_category_without_anomalies_is_reported_as_undefined(test_set):
    keep = (test_set.labels == 0) | (np.array(test_set.categories) == "stripes")
    parts_normal_only = test_set.select(keep)
    with pytest.warns(UserWarning, match="category 'parts' has no anomalous test image.*NaN"):
        results = evaluate_detector(OracleDetector(test_set), parts_normal_only)
    assert all(np.isnan(results["categories"]["parts"][key]) for key in METRICS)
    for key in METRICS:  # the other category is evaluated, and the mean is over it alone
        assert results["categories"]["stripes"][key] == pytest.approx(1.0)
        assert results["mean"][key] == pytest.approx(1.0)
    assert "| nan |" in results_markdown(results)


def test_curves_of_a_category_without_anomalies_are_undefined(root, test_set, tiny_params):
    keep = (test_set.labels == 0) | (np.array(test_set.categories) == "stripes")
    with pytest.warns(UserWarning, match="category 'parts' has no anomalous test image"):
        results = run_experiment(
            load_mvtec(root, "train"), test_set.select(keep), {**tiny_params, "max_epochs": 1},
            eval_every=1,
        )  # fmt: skip
    curve = results["runs"][0]["curve"]
    assert np.isnan(curve["categories"]["parts"]["image_auroc"]).all()
    stripes = curve["categories"]["stripes"]
    for key in ("image_auroc", "pixel_auroc"):  # the mean is over the category that has them
        assert curve["mean"][key] == stripes[key] and 0 <= stripes[key][0] <= 1


def test_markdown_and_json_reports(test_set, tmp_path):
    results = evaluate_detector(OracleDetector(test_set, offset=0.0), test_set)
    results["run"] = {"backbone": "oracle"}
    json_path, md_path = write_results(results, tmp_path / "out")
    document = json.loads(json_path.read_text())
    assert document.pop("schema_version") == 1
    assert document == {k: v for k, v in results.items() if k != "images"}
    with open(tmp_path / "out" / "scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["path"] for r in rows] == [str(p) for p in test_set.paths]
    assert [int(r["label"]) for r in rows] == test_set.labels.tolist()
    assert {r["category"] for r in rows} == set(CATEGORIES)
    assert all(float(r["score"]) >= 0 for r in rows)
    markdown = md_path.read_text()
    assert markdown == results_markdown(results)
    assert "- backbone: oracle" in markdown
    rows = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| Category | Image AUROC | Pixel AUROC | AUPRO")
    assert [r.split(" | ")[0] for r in rows[1:]] == ["| parts", "| stripes", "| **mean**"]
    assert "| 100.0 |" in rows[1]


def test_curve_points_are_the_evaluation_of_the_model_at_that_epoch(
    root, test_set, tmp_path, tiny_params
):
    from skuniad.evaluation import CurveRecorder

    train = load_mvtec(root, "train")
    recorder = CurveRecorder(test_set, every=2, last=3, path=tmp_path / "curve.json")
    det = UniADDetector(**{**tiny_params, "max_epochs": 3, "precision": "fp32"})
    det.fit(train.paths, on_epoch_end=recorder)
    curve = recorder.curve
    assert curve["epoch"] == [2, 3] and len(curve["loss_curve"]) == 3
    assert curve["loss"] == [det.loss_curve_[1], det.loss_curve_[2]]
    assert curve["fit_seconds"][0] < curve["fit_seconds"][1]
    final = evaluate_detector(det, test_set)
    for name in CATEGORIES:
        for key in ("image_auroc", "pixel_auroc", "image_auroc_mean", "image_auroc_std"):
            assert curve["categories"][name][key][-1] == pytest.approx(
                final["categories"][name][key], abs=1e-6
            )
    assert curve["mean"]["pixel_auroc"][-1] == pytest.approx(final["mean"]["pixel_auroc"])
    assert json.loads((tmp_path / "curve.json").read_text()) == {"runs": [curve]}


def test_a_fit_resumed_from_its_checkpoint_keeps_the_curve_of_the_epochs_before(
    root, test_set, tmp_path, tiny_params
):
    from skuniad.evaluation import CurveRecorder

    train = load_mvtec(root, "train").paths
    path = tmp_path / "curve.json"
    params = {**tiny_params, "max_epochs": 4, "precision": "fp32", "checkpoint_every": 1}
    params["checkpoint_path"] = tmp_path / "fit.ckpt"
    first = CurveRecorder(test_set, every=1, last=4, path=path)

    def stop_after_two(det, epoch, loss):
        first(det, epoch, loss)
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        UniADDetector(**params).fit(train, on_epoch_end=stop_after_two)
    resumed = CurveRecorder(test_set, every=1, last=4, path=path)
    det = UniADDetector(**params).fit(train, on_epoch_end=resumed)
    curve = resumed.curve
    assert curve["epoch"] == [1, 2, 3, 4]
    assert curve["loss_curve"] == pytest.approx(det.loss_curve_)
    for key in ("epoch", "loss", "fit_seconds"):  # epochs 1-2 (checkpointed) from the first run
        assert curve[key][:2] == first.curve[key]
    assert curve["mean"]["image_auroc"][:2] == first.curve["mean"]["image_auroc"]
    assert curve["fit_seconds"] == sorted(curve["fit_seconds"])  # the clock goes on
    assert json.loads(path.read_text()) == {"runs": [curve]}


def test_a_curve_file_that_cannot_be_continued_is_started_again_with_a_warning(test_set, tmp_path):
    from skuniad.evaluation import CurveRecorder

    path = tmp_path / "curve.json"
    path.write_text("{not json")
    recorder = CurveRecorder(test_set, every=5, last=10, path=path)
    with pytest.warns(UserWarning, match="curve before epoch 3 could not be kept"):
        recorder(None, 3, 0.5)  # not a scoring epoch: only the loss is recorded
    assert recorder.curve["loss_curve"] == [0.5] and recorder.curve["epoch"] == []


def test_read_curves_reads_a_finished_experiment_a_running_fit_and_the_old_bare_curve(tmp_path):
    from skuniad.evaluation import read_curves

    curve = {"epoch": [2, 4], "loss": [0.5, 0.25]}
    documents = {
        "running": {"runs": [curve]},  # CurveRecorder's, from its first point
        "done": {"setting": "unified", "runs": [{"seed": 0, **curve}, {"seed": 1, **curve}]},
        "old": curve,  # CurveRecorder's before the file had one layout
    }
    for name, document in documents.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "curve.json").write_text(json.dumps(document))
    assert read_curves(tmp_path / "running") == [curve]
    assert [run["seed"] for run in read_curves(tmp_path / "done")] == [0, 1]
    assert read_curves(tmp_path / "old") == [curve]


def test_experiment_over_seeds_reports_mean_and_sample_std(root, test_set, tiny_params):
    from skuniad.evaluation import run_experiment

    train = load_mvtec(root, "train")
    params = {**tiny_params, "max_epochs": 1}
    results = run_experiment(train, test_set, params, seeds=[0, 1])
    assert [run["seed"] for run in results["runs"]] == [0, 1]
    per_seed = [run["mean"]["pixel_auroc"] for run in results["runs"]]
    assert per_seed[0] != per_seed[1]
    assert results["mean"]["pixel_auroc"] == pytest.approx(np.mean(per_seed))
    assert results["std"]["mean"]["pixel_auroc"] == pytest.approx(np.std(per_seed, ddof=1))
    # seed 0 alone is the same fit: the first run is a plain evaluation of it
    alone = evaluate_detector(
        UniADDetector(**{**params, "random_state": 0}).fit(train.paths), test_set
    )
    assert results["runs"][0]["categories"] == alone["categories"]
    assert results["paper"] == {}  # synthetic categories are not the paper's
    fit_seconds = sum(run["fit_seconds"] for run in results["runs"])
    assert results["run"]["fit_seconds"] == pytest.approx(fit_seconds, abs=0.05)
    assert (results["run"]["epochs"], results["run"]["seeds"]) == (1, [0, 1])
    assert results["params"]["random_state"] is None  # one run per seed, listed in the run
    assert results["params"]["max_epochs"] == 1


def test_report_shows_the_papers_numbers_and_the_difference():
    row = {k: 0.5 for k in METRICS} | {"image_auroc": 0.99, "pixel_auroc": 0.95}
    row |= {"image_auroc_max": 0.99, "image_auroc_mean": 0.9, "image_auroc_std": 0.8}
    results = {
        "categories": {"bottle": dict(row), "mystery": dict(row)},
        "mean": dict(row),
        "image_score": "mean",
        "paper": {"bottle": {"image_auroc": 99.7, "pixel_auroc": 98.1}},
    }
    columns, rows = results_table(results)
    assert columns[len(METRICS) : len(METRICS) + 3] == [
        "image_auroc_mean",
        "image_auroc_max",
        "image_auroc_std",
    ]  # the detector's own image score first
    assert columns[-4:] == ["paper_image_auroc", "paper_pixel_auroc", "delta_image", "delta_pixel"]
    assert rows[0][-4:] == ["99.7", "98.1", "-0.7", "-3.1"]
    assert rows[1][-4:] == ["", "", "", ""]  # not an MVTec AD category


def test_every_report_column_has_one_full_and_one_short_title():
    from skuniad.evaluation import COLUMN_TITLES, OPERATING_POINT_METRICS, TITLES

    row = dict.fromkeys([*METRICS, *OPERATING_POINT_METRICS, "image_auroc_max"], 0.5)
    paper = {"bottle": {"image_auroc": 99.7, "pixel_auroc": 98.1}}
    results = {"categories": {"bottle": row}, "mean": row, "paper": paper}
    columns = results_table(results)[0] + operating_point_table(results)[0]
    assert set(columns) == set(TITLES) - {"image_auroc_mean", "image_auroc_std"}
    assert len({title.short for title in TITLES.values()}) == len(TITLES)
    assert COLUMN_TITLES == {key: title.full for key, title in TITLES.items()}


# ------------------------------------------------------------ image-level-only categories
def _without_masks(dataset, category=None, keep=0):
    """The split with the masks of ``category`` (all categories by default) dropped,
    except the first ``keep`` anomalous images' masks."""
    masks, kept = [], 0
    for cat, label, mask in zip(
        dataset.categories, dataset.labels, dataset.mask_paths, strict=True
    ):
        drop = category is None or cat == category
        if drop and label == 1 and kept < keep:
            kept += 1
            drop = False
        masks.append(None if drop else mask)
    return replace(dataset, mask_paths=masks)


def test_category_without_masks_is_evaluated_at_image_level(test_set, tmp_path):
    partial = _without_masks(test_set, "stripes")
    assert check_test_set(partial) == ["parts"]
    results = evaluate_detector(OracleDetector(test_set, offset=0.0), partial)
    stripes, parts = results["categories"]["stripes"], results["categories"]["parts"]
    assert stripes["image_auroc"] == pytest.approx(1.0)  # the maps still rank the images
    assert all(stripes[key] is None for key in PIXEL_METRICS)
    assert all(parts[key] == pytest.approx(1.0) for key in PIXEL_METRICS)
    assert results["image_level_only"] == ["stripes"]
    for key in PIXEL_METRICS:  # the pixel means are over the categories that have masks
        assert results["mean"][key] == parts[key]
    json_path, md_path = write_results(results, tmp_path)
    assert json.loads(json_path.read_text())["categories"]["stripes"]["aupro"] is None
    markdown = md_path.read_text()
    stripes_row = next(line for line in markdown.splitlines() if line.startswith("| stripes"))
    assert stripes_row.count("n/a") == len(PIXEL_METRICS)
    assert "Image level only (no masks, pixel metrics n/a): stripes" in markdown


def test_some_masks_missing_is_an_error_naming_them_unless_ignored(test_set):
    partial = _without_masks(test_set, "parts", keep=1)
    unmasked = [
        str(p)
        for p, c, label, m in zip(
            partial.paths, partial.categories, partial.labels, partial.mask_paths, strict=True
        )
        if c == "parts" and label == 1 and m is None
    ]
    assert len(unmasked) == 2
    with pytest.raises(ValueError) as info:
        evaluate_detector(OracleDetector(test_set), partial)
    message = str(info.value)
    assert "category 'parts': 2 of 3 anomalous images have no ground-truth mask" in message
    assert all(path in message for path in unmasked) and "ignore_pixel_metrics" in message
    results = evaluate_detector(OracleDetector(test_set), partial, ignore_pixel_metrics=True)
    assert results["image_level_only"] == ["parts", "stripes"]
    assert all(results["mean"][key] is None for key in PIXEL_METRICS)
    assert results["mean"]["image_auroc"] == pytest.approx(1.0)
    assert check_test_set(partial, ignore_pixel_metrics=True) == []


def test_experiment_on_an_image_level_only_set_checks_first_and_draws_curves(
    root, tmp_path, tiny_params
):
    train = load_mvtec(root, "train")
    test = _without_masks(load_mvtec(root, "test"))
    with pytest.raises(ValueError, match="no ground-truth mask"):
        run_experiment(train, _without_masks(load_mvtec(root, "test"), "parts", keep=1), {})
    results = run_experiment(
        train, test, {**tiny_params, "max_epochs": 1}, eval_every=1, output_dir=tmp_path,
        run_details={"dataset": "synthetic"},
    )  # fmt: skip
    run = ["skuniad", "dataset", "fit_seconds", "evaluate_seconds", "seeds"]
    assert list(results["run"])[5:] == run  # the model's entries, then the details
    assert results["image_level_only"] == list(CATEGORIES)
    assert results["mean"]["pixel_auroc"] is None and 0 <= results["mean"]["image_auroc"] <= 1
    curve = results["runs"][0]["curve"]
    assert curve["mean"]["pixel_auroc"] == [None] and len(curve["mean"]["image_auroc"]) == 1
    assert (tmp_path / "curve.png").is_file()
    assert "- dataset: synthetic" in (tmp_path / "results.md").read_text()


def test_evaluation_records_precision_and_thresholds(fitted, test_set):
    results = evaluate_detector(fitted, test_set.subset("parts"))
    assert results["precision"] in ("fp32", "bf16")
    assert results["thresholds"] == {
        "offset_": fitted.offset_,
        "pixel_threshold_": fitted.pixel_threshold_,
    }
    scores = [row["score"] for row in results["images"]]
    np.testing.assert_allclose(scores, -fitted.score_samples(test_set.subset("parts").paths))


def test_an_interrupted_experiment_keeps_the_model_it_was_training(
    root, test_set, tmp_path, tiny_params
):
    import skuniad.training as training
    from skuniad.evaluation import run_experiment

    train = load_mvtec(root, "train")
    original, calls = training.F.mse_loss, {"n": 0}

    def interrupt_in_second_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # 12 images, batch 4: 3 steps per epoch
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(training.F, "mse_loss", interrupt_in_second_epoch)
        with pytest.raises(KeyboardInterrupt, match="after 1 of 3 epochs.*model.skuniad"):
            run_experiment(
                train, test_set, {**tiny_params, "max_epochs": 3}, seeds=[0], output_dir=tmp_path
            )
    assert UniADDetector.load(tmp_path / "model.skuniad").n_epochs_ == 1


def test_experiment_checks_its_fits_before_writing_anything(root, test_set, tmp_path, tiny_params):
    import torch

    train = load_mvtec(root, "train")
    output = tmp_path / "new"
    with pytest.raises(ValueError, match="neighbor_size=7 hides every key"):  # 64 px: 4x4 grid
        run_experiment(train, test_set, {**tiny_params, "neighbor_size": 7}, output_dir=output)
    assert not output.exists()
    output.mkdir()
    torch.save({"weights": torch.zeros(2)}, output / "model_parts.skuniad.ckpt")
    with pytest.raises(ValueError, match="model_parts.skuniad.ckpt is not a skuniad training"):
        run_experiment(
            train, test_set, tiny_params, setting="separate", output_dir=output,
            checkpoint_interval=60.0,
        )  # fmt: skip
    assert [p.name for p in output.iterdir()] == ["model_parts.skuniad.ckpt"]


@pytest.fixture(scope="module")
def larger_root(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synthetic14")
    return write_synthetic(folder, categories=CATEGORIES, n_train=6, n_test=14, image_size=32)


def test_calibrate_with_k_images_sets_thresholds_on_them_and_reports_the_rest(
    larger_root, fast_params, tmp_path
):
    from skuniad.evaluation._experiment import calibration_split

    train, test = load_mvtec(larger_root, "train"), load_mvtec(larger_root, "test")
    results = run_experiment(
        train,
        test,
        dict(fast_params),
        seeds=[3],
        calibrate_with=5,
        output_dir=tmp_path,
        objective="f1",
    )
    assert results["calibration"] == {"images_per_class": 5, "objective": "f1", "target": None}
    calibration, reported = calibration_split(test, 5, 3)
    assert len(calibration) == 20 and sorted(calibration.labels) == [0] * 10 + [1] * 10
    scored = {row["path"] for row in results["runs"][0]["images"]}
    assert scored == {str(p) for p in reported.paths}
    assert not scored & {str(p) for p in calibration.paths}
    assert results["n_images"] == 8 and results["categories"]["parts"]["n_images"] == 4
    det = UniADDetector.load(tmp_path / "model.skuniad")
    assert det.thresholds_.calibration["objective"] == "f1"
    assert set(det.group_image_thresholds_) == set(CATEGORIES)
    for category in CATEGORIES:
        row = results["categories"][category]
        assert 0 <= row["recall_at_1pct_false_alarms"] <= row["recall_at_5pct_false_alarms"] <= 1
    markdown = (tmp_path / "results.md").read_text()
    assert "calibrated per category on 5 defective and 5 good test images" in markdown


def test_f1_on_test_images_aims_at_each_categorys_share_of_defects_reported(
    larger_root, fitted_tiny
):
    from skuniad._thresholds import smoothed_f1_threshold
    from skuniad.evaluation._experiment import calibrate_on_test_images, calibration_split

    test = load_mvtec(larger_root, "test")
    categories = np.asarray(test.categories)
    first_good = [np.flatnonzero((test.labels == 0) & (categories == c))[0] for c in CATEGORIES]
    test = test.select(~np.isin(np.arange(len(test)), first_good))  # 7 defective, 6 good each
    det = copy.deepcopy(fitted_tiny[0])
    reported = calibrate_on_test_images(det, test, 5, seed=1, objective="f1")
    calibration = calibration_split(test, 5, 1)[0]
    scores = -det.score_samples(calibration.paths)
    for category in CATEGORIES:
        mine = np.asarray(calibration.categories) == category
        defective, good = mine & (calibration.labels == 1), mine & (calibration.labels == 0)
        assert np.mean(reported.subset(category).labels) == pytest.approx(2 / 3)
        expected = smoothed_f1_threshold(scores[defective], scores[good], 2 / 3)
        assert det.group_image_thresholds_[category] == expected


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(calibrate_with=7), "category 'parts' has 7 defective test images"),
        (dict(calibrate_with=3), "calibrate_with must be at least 5"),
        (dict(calibrate_with=5, objective="recall"), r"needs a target in \(0, 1\)"),
    ],
)
def test_calibration_options_are_checked_before_training(
    larger_root, tiny_params, monkeypatch, options, message
):
    train, test = load_mvtec(larger_root, "train"), load_mvtec(larger_root, "test")
    monkeypatch.setattr(UniADDetector, "fit", lambda *a, **k: pytest.fail("trained"))
    with pytest.raises(ValueError, match=message):
        run_experiment(train, test, tiny_params, **options)


def test_recall_at_false_alarms_is_what_the_ranking_allows():
    from skuniad.evaluation._evaluate import recall_at_false_alarms

    labels = np.array([0] * 100 + [1] * 4)
    scores = np.r_[np.arange(100.0), [98.5, 96.5, 94.5, 50.0]]
    recall = recall_at_false_alarms(labels, scores)
    # 1 % of 100 good images: one may be above the threshold (99 > 98): 98.5 is caught
    assert recall["recall_at_1pct_false_alarms"] == 0.25
    assert recall["recall_at_5pct_false_alarms"] == 0.75  # threshold 94: 98.5, 96.5, 94.5


def test_report_cells_a_spreadsheet_would_run_are_quoted(test_set, tmp_path):
    results = evaluate_detector(OracleDetector(test_set, offset=0.0), test_set)
    rows = [{"path": "=cmd|' /C calc'!A0", "category": "@x", "label": 1, "score": -1.5}]
    write_results({**results, "images": rows}, tmp_path)
    with open(tmp_path / "scores.csv", newline="") as f:
        (row,) = csv.DictReader(f)
    assert (row["path"], row["category"]) == ("'=cmd|' /C calc'!A0", "'@x")
    assert (row["label"], row["score"]) == ("1", "-1.5")  # numbers stay numbers
