"""The thresholds on the command line: fit options, calibrate, info MODEL, predict."""

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from skuniad import UniADDetector
from skuniad.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def data_root(synthetic_mvtec):
    """10 training images per category, so that half of each can be held out for thresholds."""
    return synthetic_mvtec(n_train=10)


@pytest.fixture(scope="module")
def grouped_model(data_root, tmp_path_factory, tiny_args):
    """Fitted on both categories, half of each held out, thresholds per category."""
    path = tmp_path_factory.mktemp("model") / "model.skuniad"
    args = ["fit", str(data_root), "--dataset", "mvtec", "-o", str(path), "--epochs", "1"]
    result = runner.invoke(
        app, [*args, "--validation-fraction", "0.5", "--per-category", *tiny_args]
    )
    assert result.exit_code == 0, result.output
    assert "Thresholds: image" in result.output and "  grain: image" in result.output
    return path


def _rows(folder: Path) -> list[dict]:
    with open(folder / "scores.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_fit_holds_out_a_share_per_category_and_saves_per_category_thresholds(grouped_model):
    det = UniADDetector.load(grouped_model, device="cpu")
    assert det.validation_fraction == 0.5
    assert set(det.group_image_thresholds_) == {"grain", "parts"}


@pytest.mark.slow
def test_predict_applies_the_category_of_each_folder_and_counts_flagged_per_category(
    grouped_model, data_root, tmp_path
):
    result = runner.invoke(
        app, ["predict", str(grouped_model), str(data_root), "-o", str(tmp_path), "--no-overlays"]
    )
    assert result.exit_code == 0, result.output
    rows = _rows(tmp_path)
    det = UniADDetector.load(grouped_model, device="cpu")
    assert {r["category"] for r in rows} == {"grain", "parts"}
    paths = [r["path"] for r in rows]
    groups = [r["category"] for r in rows]
    assert [int(r["label"]) for r in rows] == det.predict(paths, groups=groups).tolist()
    for row in rows:
        assert float(row["threshold"]) == pytest.approx(
            det.group_image_thresholds_[row["category"]], rel=1e-7
        )
    for name in ("grain", "parts"):
        flagged = sum(r["label"] == "-1" for r in rows if r["category"] == name)
        total = sum(r["category"] == name for r in rows)
        assert f"  {name}: {flagged} of {total} flagged" in result.output
    assert "Image thresholds: per category" in result.output

    # --pooled: one threshold for all
    pooled = tmp_path / "pooled"
    result = runner.invoke(
        app, ["predict", str(grouped_model), str(data_root), "-o", str(pooled), "--pooled"]
    )
    assert result.exit_code == 0, result.output
    thresholds = [float(r["threshold"]) for r in _rows(pooled)]
    assert thresholds == pytest.approx([det.image_threshold_] * len(thresholds), rel=1e-7)


def test_predict_threshold_options_and_masks_at_input_size(grouped_model, data_root, tmp_path):
    folder = data_root / "parts" / "test"
    wide = tmp_path / "wide.png"  # not the model's size, nor square
    Image.open(next(folder.rglob("*.png"))).resize((48, 40)).save(wide)
    args = ["predict", str(grouped_model), str(folder), str(wide), "-o", str(tmp_path)]
    result = runner.invoke(app, [*args, "--threshold", "0", "--pixel-threshold", "0.25", "--masks"])
    assert result.exit_code == 0, result.output
    rows = _rows(tmp_path)
    assert all(r["label"] == "-1" and float(r["threshold"]) == 0 for r in rows)
    assert "Image threshold: 0 (--threshold)" in result.output
    assert "Pixel threshold: 0.25 (--pixel-threshold)" in result.output
    det = UniADDetector.load(grouped_model, device="cpu")
    for row in rows:
        mask = np.asarray(Image.open(row["mask"]))
        expected = det.predict_masks([row["path"]], threshold=0.25)[0]
        assert mask.shape == expected.shape == np.asarray(Image.open(row["path"])).shape[:2]
        np.testing.assert_array_equal(mask > 0, expected)


def test_calibrate_command_replaces_the_thresholds(grouped_model, data_root, tmp_path):
    output = tmp_path / "recalibrated.skuniad"
    normal = data_root / "grain" / "train" / "good"
    result = runner.invoke(
        app, ["calibrate", str(grouped_model), str(normal), "-o", str(output), "-q"]
    )
    assert result.exit_code == 0, result.output
    assert "Calibrated on 10 normal images" in result.output
    before = UniADDetector.load(grouped_model, device="cpu")
    after = UniADDetector.load(output, device="cpu")
    expected = before.calibrate(sorted(normal.glob("*.png")))
    assert after.offset_ == expected.offset_ and after.group_image_thresholds_ == {}
    np.testing.assert_array_equal(
        after.score_samples(sorted(normal.glob("*.png"))),
        before.score_samples(sorted(normal.glob("*.png"))),
    )  # the weights are unchanged

    # folders as categories
    result = runner.invoke(
        app,
        ["calibrate", str(grouped_model), str(data_root), "--dataset", "mvtec"]
        + ["--per-category", "-o", str(output), "-q"],
    )
    assert result.exit_code == 0, result.output
    assert set(UniADDetector.load(output).group_image_thresholds_) == {"grain", "parts"}


def test_info_describes_a_model(grouped_model):
    result = runner.invoke(app, ["info", str(grouped_model)])
    assert result.exit_code == 0, result.output
    det = UniADDetector.load(grouped_model, device="cpu")
    assert "Trained: 1 epochs" in result.output
    assert f"image (anomaly_score): {det.image_threshold_:.6g}" in result.output
    assert f"pixel (anomaly map): {det.pixel_threshold_:.6g}" in result.output
    assert f"category grain: image {det.group_image_thresholds_['grain']:.6g}" in result.output
    assert "a held-out share (0.5)" in result.output
    assert "* validation_fraction = 0.5" in result.output
    assert "torch " in result.output and "skuniad " in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--validation-fraction", "0.2"], "validation_fraction=0.2 splits the 20 images"),
        (["--per-category", "--validation-fraction", "0.6"], "of group 'grain' into 4"),
    ],
)
def test_bad_threshold_settings_are_one_line_errors(data_root, tmp_path, args, message, tiny_args):
    result = runner.invoke(
        app,
        ["fit", str(data_root), "--dataset", "mvtec", "-o", str(tmp_path / "m.skuniad")]
        + ["--epochs", "1", *tiny_args, *args],
    )
    assert result.exit_code == 1
    error = result.output.strip().splitlines()[-1]
    assert error.startswith("Error: ") and message in error


def test_fit_per_category_names_categories_after_the_folders(data_root, tmp_path, tiny_args):
    output = tmp_path / "m.skuniad"
    folders = [str(data_root / c / "train" / "good") for c in ("grain", "parts")]
    result = runner.invoke(
        app, ["fit", *folders, "--per-category", "-o", str(output), "--epochs", "1", *tiny_args]
    )
    # both folders are named "good": the categories would collide
    assert result.exit_code == 1 and "both named 'good'" in result.output


def test_evaluate_reports_the_operating_point(grouped_model, data_root, tmp_path):
    result = runner.invoke(
        app,
        ["evaluate", "--root", str(data_root), "--model", str(grouped_model), "-o", str(tmp_path)]
        + ["-q"],
    )
    assert result.exit_code == 0, result.output
    assert "At the model's own thresholds" in result.output and "I-recall" in result.output
    report = (tmp_path / "results.md").read_text()
    assert "Image false alarms" in report and "Pixel recall" in report
    # a model given with --model keeps its thresholds: --per-category is a training option
    again = runner.invoke(
        app,
        ["evaluate", "--root", str(data_root), "--model", str(grouped_model), "--per-category"],
    )
    assert again.exit_code == 2 and "--per-category" in again.output
