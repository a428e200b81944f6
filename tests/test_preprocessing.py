import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from sklearn.utils.validation import check_is_fitted

from skuniad.io import ImageLoadError, load_resized, read_image, resize
from skuniad.preprocessing import ImageLoader


def _write_png(path, array):
    Image.fromarray(array).save(path)
    return path


def test_paths_pil_images_and_arrays_load_to_the_same_uint8_rgb(tmp_path):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (20 + 4 * i, 30, 3), dtype=np.uint8) for i in range(3)]
    paths = [_write_png(tmp_path / f"{i}.png", x) for i, x in enumerate(images)]
    for X in (paths, [str(p) for p in paths], [Image.fromarray(x) for x in images], images):
        out = ImageLoader().fit_transform(X)
        assert isinstance(out, list) and len(out) == 3
        for loaded, original in zip(out, images, strict=True):
            assert loaded.dtype == np.uint8 and loaded.flags.c_contiguous
            np.testing.assert_array_equal(loaded, original)


def test_grayscale_alpha_and_palette_become_rgb(tmp_path):
    gray = np.arange(200, dtype=np.uint8).reshape(10, 20)
    rgba = np.dstack([np.full((10, 20, 3), 7, np.uint8), np.zeros((10, 20), np.uint8)])
    out = ImageLoader().transform([gray, rgba])
    np.testing.assert_array_equal(out[0], np.repeat(gray[..., None], 3, axis=-1))
    np.testing.assert_array_equal(out[1], np.full((10, 20, 3), 7, np.uint8))  # alpha dropped
    colours = np.array([[255, 0, 0], [0, 128, 0], [20, 40, 250]], dtype=np.uint8)
    indices = (np.arange(200) % 3).astype(np.uint8).reshape(10, 20)
    palette = Image.new("P", (20, 10))
    palette.putdata(indices.ravel().tolist())
    palette.putpalette(colours.ravel().tolist())
    palette.save(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").mode == "P"
    (loaded,) = ImageLoader().transform([tmp_path / "p.png"])
    assert loaded.shape == (10, 20, 3)
    np.testing.assert_array_equal(loaded, colours[indices])  # each index looked up


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 255), st.integers(0, 255))
def test_eight_bit_values_survive_the_float_round_trip(low, high):
    image = np.linspace(low, high, 64).round().astype(np.uint8).reshape(8, 8)
    (loaded,) = ImageLoader().transform(np.stack([image]))
    np.testing.assert_array_equal(loaded[..., 0], image)


def test_sixteen_bit_and_float_images_are_rescaled_to_eight_bits():
    sixteen = np.array([[0, 257, 65535] * 4] * 8, dtype=np.uint16)  # 257 * v <-> v
    floats = sixteen.astype(np.float64) / 65535
    for X in (sixteen[None], floats[None]):
        (loaded,) = ImageLoader().transform(X)
        np.testing.assert_array_equal(loaded[0, :3, 0], [0, 1, 255])


def test_size_stacks_images_resized_like_the_detector():
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in [(40, 60, 3), (32, 32)]]
    out = ImageLoader(size=16).transform(images)
    assert out.shape == (2, 16, 16, 3) and out.dtype == np.uint8
    in_float = ImageLoader(size=16, resize="float").transform(images)
    for i, image in enumerate(images):
        # the default: what the detector feeds its backbone, exactly (times 255)
        tensor, _ = load_resized(image, i, 16, "pil-uint8")
        np.testing.assert_array_equal(out[i], (tensor * 255).round().byte().permute(1, 2, 0))
        rgb = image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=-1)
        pillow = Image.fromarray(rgb).resize((16, 16), Image.Resampling.BILINEAR)
        np.testing.assert_array_equal(out[i], np.asarray(pillow))
        expected = resize(read_image(image, i)[0], 16).permute(1, 2, 0).numpy()
        np.testing.assert_array_equal(in_float[i], np.rint(expected * 255).astype(np.uint8))
    assert not np.array_equal(out, in_float)  # Pillow's 8-bit filter vs torch's float one


def test_loader_is_stateless():
    loader = ImageLoader(size=16)
    before = dict(vars(loader))
    X = np.zeros((2, 20, 20, 3), np.uint8)
    assert loader.fit(X) is loader and vars(loader) == before  # fit learns nothing
    check_is_fitted(loader)  # requires_fit=False: usable without fit
    assert ImageLoader(size=16).transform(X).shape == (2, 16, 16, 3)


@pytest.mark.parametrize("size", [4, 0, "big", 2.5, (16, 16)])
def test_invalid_size_is_rejected_at_fit_and_transform(size):
    X = np.zeros((1, 20, 20, 3), np.uint8)
    with pytest.raises(ValueError, match="'size' parameter"):
        ImageLoader(size=size).fit(X)
    with pytest.raises(ValueError, match="'size' parameter"):
        ImageLoader(size=size).transform(X)


def test_errors_name_the_offending_image(tmp_path):
    good = _write_png(tmp_path / "good.png", np.zeros((10, 10, 3), np.uint8))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(ImageLoadError, match="image 1: file not found"):
        ImageLoader().fit([good, tmp_path / "missing.png"])
    with pytest.raises(ImageLoadError, match=r"image 1: .*broken\.png"):
        ImageLoader().transform([good, broken])
    with pytest.raises(TypeError, match="single path"):
        ImageLoader().transform(good)


def test_pipeline_set_output_reaches_past_the_loader(tiny_params):
    from sklearn.pipeline import make_pipeline

    from skuniad import UniADDetector

    pipe = make_pipeline(ImageLoader(size=64), UniADDetector(**tiny_params))
    assert pipe.set_output(transform="default") is pipe
    loader = ImageLoader(size=16)
    assert loader.set_output(transform="pandas") is loader
    X = np.zeros((2, 20, 20, 3), np.uint8)
    assert isinstance(loader.fit_transform(X), np.ndarray)  # images stay arrays
    with pytest.raises(ValueError, match="transform must be"):
        loader.set_output(transform="arrow")
