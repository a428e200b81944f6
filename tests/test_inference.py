"""The one scoring engine: one upsampler and one image reader for masks, maps and overlays."""

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from skuniad._inference import to_image_size
from skuniad.io import read_image
from skuniad.visualize import THRESHOLD_COLOR, heatmap_overlay, outline


def _outlined(overlay: np.ndarray) -> np.ndarray:
    return (overlay == np.array(THRESHOLD_COLOR, dtype=np.uint8)).all(axis=-1)


def test_to_image_size_keeps_model_size_maps_and_lists_unreadable_images_as_none():
    maps = np.random.default_rng(0).random((2, 8, 8), dtype=np.float32)
    assert to_image_size(maps, [(8, 8), (8, 8)], stack=True) is maps
    resized = to_image_size(maps, [(5, 11), None], stack=False)
    assert resized[0].shape == (5, 11) and resized[1] is None
    constant = np.full((1, 8, 8), 0.25, dtype=np.float32)
    np.testing.assert_allclose(to_image_size(constant, [(13, 3)], stack=True), 0.25)


def test_overlay_outline_marks_the_pixels_predict_masks_marks(fitted_tiny):
    det, _ = fitted_tiny
    image = np.random.default_rng(5).integers(0, 256, size=(50, 70, 3), dtype=np.uint8)
    model_map = det.anomaly_maps([image], size="model")[0]
    assert model_map.shape != image.shape[:2]
    threshold = float(np.median(det.anomaly_maps([image])[0]))
    mask = det.predict_masks([image], threshold=threshold)[0]
    assert 0.2 < mask.mean() < 0.8  # a region with a long border, where resizers differ
    overlay = heatmap_overlay(image, model_map, threshold=threshold)
    np.testing.assert_array_equal(_outlined(overlay), outline(mask))


@pytest.fixture
def predict_cli(fitted_tiny, tmp_path, monkeypatch):
    """Run ``skuniad predict`` in process on the shared tiny model."""
    from skuniad.cli import _common, app

    monkeypatch.setattr(_common, "_tune_runtime", lambda threads=None: None)
    det, _ = fitted_tiny
    model = tmp_path / "model.skuniad"
    det.save(model)

    def run(image_path, *options):
        out = tmp_path / "out"
        args = ["predict", str(model), str(image_path), "-o", str(out), "-q", *options]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        return out

    return run


def test_predict_writes_masks_that_the_overlay_outline_traces(predict_cli, fitted_tiny, tmp_path):
    image = np.random.default_rng(6).integers(0, 256, size=(50, 70, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "part.png")
    threshold = float(np.median(fitted_tiny[0].anomaly_maps([image])[0]))
    out = predict_cli(tmp_path / "part.png", "--masks", "--pixel-threshold", f"{threshold!r}")
    mask = np.asarray(Image.open(out / "masks" / "part.png")) > 0
    overlay = np.asarray(Image.open(out / "overlays" / "part.png").convert("RGB"))
    assert mask.shape == (50, 70) and overlay.shape == (50, 140, 3)
    assert mask.any() and not mask.all()
    np.testing.assert_array_equal(_outlined(overlay[:, 70:]), outline(mask))


def test_a_16_bit_png_overlay_shows_the_image_the_model_reads(predict_cli, tmp_path):
    ramp = np.linspace(0, 65535, 48 * 40).reshape(48, 40).astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode.startswith("I")
    out = predict_cli(path)
    overlay = np.asarray(Image.open(out / "overlays" / "deep.png").convert("RGB"))
    seen, size = read_image(path, 0, as_uint8=True)
    assert size == (48, 40)
    np.testing.assert_array_equal(overlay[:, :40], seen)
    assert len(np.unique(overlay[:, :40])) > 200  # the ramp, not a white (clipped) image
