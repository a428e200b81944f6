"""skuniad calibrate with labelled folders, evaluate --calibrate-with, and info's report."""

import json

import pytest
from typer.testing import CliRunner

from skuniad import UniADDetector
from skuniad.cli import app
from skuniad.datasets import load_mvtec

runner = CliRunner()


@pytest.fixture(scope="module")
def root(synthetic_mvtec):
    """6 training and 14 test images (7 defective) per category."""
    return synthetic_mvtec(n_test=14)


@pytest.fixture
def mvtec(root, tiny_params, tmp_path):
    model = tmp_path / "model.skuniad"
    UniADDetector(**tiny_params).fit(load_mvtec(root, "train").paths).save(model)
    return root, model


def test_calibrate_on_labelled_folders_with_masks_per_category(mvtec, tmp_path):
    root, model = mvtec
    out = tmp_path / "calibrated.skuniad"
    args = ["calibrate", str(model), "-o", str(out), "--objective", "f1", "--per-category", "-q"]
    for category in ("grain", "parts"):
        args += ["--defects", str(root / category / "test")]
        args += ["--masks", str(root / category / "ground_truth")] if category == "grain" else []
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "one --masks per --defects" in result.output
    args = args[: args.index("--masks")] + args[args.index("--masks") + 2 :]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "Calibrated on 14 normal and 14 defective images" in result.output
    det = UniADDetector.load(out)
    report = det.thresholds_.calibration
    assert report["objective"] == "f1" and set(det.group_image_thresholds_) == {"grain", "parts"}
    test = load_mvtec(root, "test")
    expected = UniADDetector.load(model).calibrate(
        test.paths, test.labels, groups=test.categories, objective="f1"
    )
    assert det.thresholds_ == expected.thresholds_
    info = runner.invoke(app, ["info", str(out)])
    assert "Calibrated for f1; on the calibration images:" in info.output
    assert "grain images: recall" in info.output


def test_calibrate_masks_choose_the_pixel_threshold(mvtec, tmp_path):
    root, model = mvtec
    out = tmp_path / "calibrated.skuniad"
    grain = root / "grain"
    result = runner.invoke(
        app,
        ["calibrate", str(model), "-o", str(out), "--defects", str(grain / "test"),
         "--masks", str(grain / "ground_truth"), "--objective", "recall", "--target", "0.5", "-q"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = UniADDetector.load(out).thresholds_.calibration
    assert report["target"] == 0.5 and report["pooled"]["pixel"]["recall"] >= 0.5
    missing = runner.invoke(
        app,
        ["calibrate", str(model), "-o", str(out), "--defects", str(grain / "test"),
         "--masks", str(tmp_path), "--objective", "f1", "-q"],
    )  # fmt: skip
    assert missing.exit_code == 1 and "no mask for" in missing.output


def test_calibrate_refuses_an_objective_without_what_it_needs(mvtec, tmp_path):
    root, model = mvtec
    out = tmp_path / "calibrated.skuniad"
    normal = str(root / "grain" / "train" / "good")
    result = runner.invoke(
        app, ["calibrate", str(model), normal, "-o", str(out), "--objective", "f1"]
    )
    assert result.exit_code == 1 and "needs labels y" in result.output
    result = runner.invoke(
        app,
        ["calibrate", str(model), "-o", str(out), "--defects", str(root / "grain" / "test"),
         "--objective", "false-alarms", "--target", "2"],
    )  # fmt: skip
    assert result.exit_code == 1 and "target in (0, 1)" in result.output
    result = runner.invoke(
        app,
        ["calibrate", str(model), "-o", str(out), "--defects", str(root / "grain" / "test"),
         "--objective", "recall", "--target", "0.5", "--defect-rate", "0.1"],
    )  # fmt: skip
    assert result.exit_code == 1 and "defect_rate is for objective='f1'" in result.output
    assert not out.exists()


def test_calibrate_f1_aims_at_the_defect_rate_given(mvtec, tmp_path):
    root, model = mvtec
    out = tmp_path / "calibrated.skuniad"
    grain = root / "grain" / "test"
    result = runner.invoke(
        app,
        ["calibrate", str(model), "-o", str(out), "--defects", str(grain), "--objective", "f1",
         "--defect-rate", "0.05", "-q"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    test = load_mvtec(root, "test").subset("grain")
    expected = UniADDetector.load(model).calibrate(
        test.paths, test.labels, objective="f1", defect_rate=0.05
    )
    assert UniADDetector.load(out).image_threshold_ == expected.image_threshold_
    info = runner.invoke(app, ["info", str(out)])
    assert "(aimed at a defect rate of 5.0 %)" in info.output


def test_evaluate_a_model_calibrated_on_k_test_images(mvtec, tmp_path):
    root, model = mvtec
    args = ["evaluate", "--root", str(root), "--model", str(model), "-q", "-o", str(tmp_path)]
    result = runner.invoke(app, [*args, "--calibrate-with", "5", "--objective", "f1"])
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["calibration"] == {"images_per_class": 5, "objective": "f1", "target": None}
    assert results["n_images"] == 8  # 14 per category, 10 of them calibrate
    assert "R@5%FA" in result.output
    too_many = runner.invoke(app, [*args, "--calibrate-with", "7"])
    assert too_many.exit_code == 1 and "leaves none to report" in too_many.output
