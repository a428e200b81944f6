"""skuniad import-reference and export: the reference checkpoint and ONNX on the command line."""

import copy

import numpy as np
import pytest
from typer.testing import CliRunner

from skuniad import UniADDetector
from skuniad.cli import app


@pytest.fixture
def cli():
    runner = CliRunner()
    return lambda *args: runner.invoke(app, [str(a) for a in args])


@pytest.mark.slow
def test_cli_imports_calibrates_and_exports(cli, reference, imported, reference_images, tmp_path):
    from PIL import Image

    folder = tmp_path / "normal"
    folder.mkdir()
    for i, image in enumerate(reference_images):
        Image.fromarray(image).save(folder / f"{i}.png")
    model = tmp_path / "imported.skuniad"
    result = cli("import-reference", reference[0], "-o", model, "--calibrate", folder, "--quiet")
    assert result.exit_code == 0, result.output
    assert "epoch 7" in result.output and "on 3 normal images" in result.output
    det = UniADDetector.load(model, device="cpu")
    expected = copy.deepcopy(imported).calibrate(reference_images)
    assert (det.offset_, det.pixel_threshold_) == (expected.offset_, expected.pixel_threshold_)
    np.testing.assert_array_equal(
        det.anomaly_maps(reference_images), expected.anomaly_maps(reference_images)
    )

    result = cli("export", model, "--format", "onnx", "--output", tmp_path / "uniad.onnx")
    assert result.exit_code == 0, result.output
    assert "opset 17" in result.output and "(batch, 3, 64, 64)" in result.output
    assert "mean (0.485, 0.456, 0.406)" in result.output
    assert (tmp_path / "uniad.onnx").stat().st_size > 0

    result = cli("export", model, "-f", "reference", "-o", tmp_path / "ckpt.pth.tar")
    assert result.exit_code == 0, result.output
    again = UniADDetector.from_reference_checkpoint(tmp_path / "ckpt.pth.tar", device="cpu")
    np.testing.assert_array_equal(
        again.score_samples(reference_images), det.score_samples(reference_images)
    )


def test_cli_import_without_calibration_says_so(cli, reference, tmp_path):
    model = tmp_path / "imported.skuniad"
    result = cli("import-reference", reference[0], "--output", model, "--no-reference-padding")
    assert result.exit_code == 0, result.output
    assert "Not calibrated" in result.output and "--calibrate DIR" in result.output
    det = UniADDetector.load(model, device="cpu")
    assert not hasattr(det, "offset_") and det.static_padding_size is None


def test_cli_import_reads_the_checkpoint_before_creating_the_output_folder(cli, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    output = tmp_path / "new" / "m.skuniad"
    result = cli("import-reference", text, "-o", output)
    assert result.exit_code == 1 and "Traceback" not in result.output
    (line,) = result.output.splitlines()
    assert line.startswith("Error: ") and "is not a UniAD reference checkpoint" in line
    assert not output.parent.exists()


def test_cli_refuses_bad_input(cli, tmp_path, fitted_tiny):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    result = cli("import-reference", text, "-o", tmp_path / "m.skuniad")
    assert result.exit_code == 1 and "UniAD reference checkpoint" in result.output
    result = cli("import-reference", tmp_path / "missing.pth.tar", "-o", tmp_path / "m.skuniad")
    assert result.exit_code == 1 and "checkpoint not found" in result.output
    fitted_tiny[0].save(tmp_path / "lite0.skuniad")
    result = cli("export", tmp_path / "lite0.skuniad", "-f", "reference", "-o", tmp_path / "c")
    assert result.exit_code == 1 and "no reference checkpoint layout" in result.output
    result = cli("export", tmp_path / "lite0.skuniad", "--opset", "13", "-o", tmp_path / "m.onnx")
    assert result.exit_code == 2
