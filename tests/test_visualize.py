import numpy as np
import pytest
from PIL import Image

from skuniad.visualize import (
    DEFAULT_COLORMAP,
    GROUND_TRUTH_COLOR,
    THRESHOLD_COLOR,
    colorize,
    heatmap_overlay,
    outline,
    save_overlay,
)


def _luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb.astype(np.float64) @ [0.2126, 0.7152, 0.0722]


def test_default_colormap_is_perceptual_dark_to_light():
    assert DEFAULT_COLORMAP == "inferno"
    colors = colorize(np.linspace(0, 1, 256))
    assert colors.shape == (256, 3) and colors.dtype == np.uint8
    # lightness rises with the value: readable in grayscale, unlike a rainbow
    assert (np.diff(_luminance(colors)) > 0).mean() > 0.95
    assert _luminance(colors[-1]) - _luminance(colors[0]) > 200
    jet = colorize(np.linspace(0, 1, 256), "jet")
    assert (np.diff(_luminance(jet)) < 0).any()  # the old rainbow is not monotonic


def test_colorize_clips_and_uses_matplotlib():
    import matplotlib

    values = np.array([[-1.0, 0.0, 0.5], [1.0, 2.0, 0.25]])
    colors = colorize(values, "viridis")
    assert colors.shape == (2, 3, 3)
    np.testing.assert_array_equal(colors[0, 0], colors[0, 1])  # clipped below
    np.testing.assert_array_equal(colors[1, 0], colors[1, 1])  # clipped above
    expected = matplotlib.colormaps["viridis"](np.clip(values, 0, 1), bytes=True)[..., :3]
    np.testing.assert_array_equal(colors, expected)
    with pytest.raises(ValueError, match="unknown colormap 'nope'"):
        colorize(values, "nope")


def test_no_display_backend_is_touched():
    import subprocess
    import sys

    code = (
        "import sys, numpy as np; from skuniad.visualize import heatmap_overlay; "
        "heatmap_overlay(np.zeros((8, 8, 3), np.uint8), np.ones((4, 4))); "
        "print('matplotlib.pyplot' in sys.modules)"
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path)}  # no DISPLAY
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_outline_keeps_only_the_boundary():
    mask = np.zeros((7, 7), bool)
    mask[1:6, 1:6] = True
    edge = outline(mask)
    assert edge.sum() == 16 and not edge[2:5, 2:5].any() and not edge[~mask].any()
    assert outline(mask, width=2).sum() == 24
    assert not outline(np.zeros((4, 4), bool)).any()


def test_overlay_uses_the_fixed_colour_scale():
    image = np.full((20, 30, 3), 100, np.uint8)
    cold = heatmap_overlay(image, np.zeros((5, 5)), vmin=0, vmax=1, alpha=1.0)
    hot = heatmap_overlay(image, np.ones((5, 5)), vmin=0, vmax=1, alpha=1.0)
    assert cold.shape == (20, 30, 3)
    np.testing.assert_array_equal(cold[0, 0], colorize(0.0))
    np.testing.assert_array_equal(hot[0, 0], colorize(1.0))
    # the same value gets the same colour in every image, whatever else the map holds
    half = np.full((5, 5), 0.5)
    mixed = half.copy()
    mixed[0, 0] = 3.0
    alone = heatmap_overlay(image, half, vmin=0, vmax=4, alpha=1.0)
    among = heatmap_overlay(image, mixed, vmin=0, vmax=4, alpha=1.0)
    np.testing.assert_array_equal(alone[-1, -1], among[-1, -1])
    np.testing.assert_array_equal(alone[-1, -1], colorize(0.125))
    rainbow = heatmap_overlay(image, np.ones((5, 5)), vmin=0, vmax=1, alpha=1.0, cmap="jet")
    np.testing.assert_array_equal(rainbow[0, 0], colorize(1.0, "jet"))
    plain = heatmap_overlay(image, np.zeros((5, 5)), alpha=0.0)
    np.testing.assert_array_equal(plain, image)


def test_overlay_outlines_mask_and_threshold_region():
    image = np.zeros((16, 16), np.float32)
    amap = np.zeros((16, 16))
    amap[2:6, 2:6] = 1.0
    mask = np.zeros((16, 16), bool)
    mask[9:14, 9:14] = True
    out = heatmap_overlay(image, amap, mask=mask, threshold=0.5)
    np.testing.assert_array_equal(out[outline(mask)], [GROUND_TRUTH_COLOR] * 16)
    np.testing.assert_array_equal(out[outline(amap > 0.5)], [THRESHOLD_COLOR] * 12)


def test_overlay_resizes_the_mask_as_load_mask_does(tmp_path):
    from skuniad.datasets import load_mask

    small = np.zeros((4, 4), bool)
    small[1:3, 2] = True
    Image.fromarray(small.astype(np.uint8) * 255).save(tmp_path / "mask.png")
    out = heatmap_overlay(np.zeros((12, 12, 3), np.uint8), np.zeros((4, 4)), mask=small)
    resized = load_mask(tmp_path / "mask.png", size=(12, 12))
    expected = np.zeros((12, 12), bool)
    expected[3:9, 6:9] = True  # nearest neighbour: each pixel becomes a 3 x 3 block
    np.testing.assert_array_equal(resized, expected)
    np.testing.assert_array_equal((out == GROUND_TRUTH_COLOR).all(axis=-1), outline(expected))


def test_save_overlay_puts_the_image_on_the_left(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    path = save_overlay(tmp_path / "a" / "b.png", image, np.random.rand(6, 6))
    with Image.open(path) as saved:
        pixels = np.asarray(saved)
    assert pixels.shape == (24, 80, 3)
    np.testing.assert_array_equal(pixels[:, :40], image)


def test_bad_image_shape_is_rejected():
    with pytest.raises(ValueError, match="image must be"):
        heatmap_overlay(np.zeros((4, 4, 2)), np.zeros((4, 4)))


def _curve(seed, image, pixel):
    return {
        "seed": seed,
        "epoch": [1, 2],
        "loss": [1.0, 0.5],
        "loss_curve": [1.0, 0.5],
        "mean": {"image_auroc": image, "pixel_auroc": pixel},
        "categories": {"a": {"image_auroc": image, "pixel_auroc": pixel}},
    }


def test_learning_curve_plot_draws_loss_and_aurocs_per_run(tmp_path):
    from matplotlib.image import imread

    from skuniad.visualize import plot_learning_curves

    one = plot_learning_curves([_curve(0, [0.6, 0.7], [0.8, 0.9])], tmp_path / "one.png")
    two = plot_learning_curves(
        [_curve(0, [0.6, 0.7], [0.8, 0.9]), {**_curve(1, [0.5, 0.4], [0.7, 0.6]), "label": "x"}],
        tmp_path / "two.png",
        per_category=True,
    )
    a, b = imread(one), imread(two)
    assert a.shape == b.shape and a.shape[0] > 300
    assert not np.array_equal(a, b)  # the second run and the category lines are drawn


def test_shortcut_script_draws_runs_side_by_side(tmp_path, capsys, monkeypatch):
    import json
    import runpy
    import sys

    finished = {
        "setting": "unified",
        "image_score": "max",
        "runs": [_curve(0, [0.6, 0.8], [0.6, 0.8])],
    }
    (tmp_path / "uniad").mkdir()
    (tmp_path / "uniad" / "curve.json").write_text(json.dumps(finished))
    (tmp_path / "plain").mkdir()  # an older recorder's curve.json: the bare curve
    (tmp_path / "plain" / "curve.json").write_text(json.dumps(_curve(0, [0.7, 0.5], [0.7, 0.5])))
    args = [
        f"{tmp_path / 'uniad'}:UniAD",
        f"{tmp_path / 'plain'}:plain",
        "-o",
        str(tmp_path / "c.png"),
    ]
    monkeypatch.setattr(sys, "argv", ["shortcut_curves.py", *args])
    runpy.run_path("benchmarks/shortcut_curves.py", run_name="__main__")
    printed = capsys.readouterr().out
    assert "| UniAD | 2 | 0.5000 | 80.0 | 80.0 |" in printed
    assert "| plain | 2 | 0.5000 | 50.0 | 50.0 |" in printed
    assert (tmp_path / "c.png").stat().st_size > 10_000


def test_overlay_style_is_the_detectors_threshold_scale():
    from types import SimpleNamespace

    from skuniad.visualize import overlay_style

    assert overlay_style(SimpleNamespace(pixel_threshold_=0.25)) == {
        "vmin": 0.0,
        "vmax": 0.5,
        "threshold": 0.25,
    }
    assert overlay_style(SimpleNamespace()) == {}  # no thresholds: the map's own range
