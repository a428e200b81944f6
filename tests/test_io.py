import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from skuniad import io
from skuniad.io import ImageLoadError, check_images, iter_batches, read_image, to_float_rgb


def _batch(X, size=32):
    images, sizes = next(iter_batches(check_images(X), size, (0, 0, 0), (1, 1, 1), 64))
    return images, sizes


_ELEMENTS = {
    np.uint8: st.integers(0, 255),
    np.uint16: st.integers(0, 65535),
    np.float32: st.floats(0, 1, width=32),
    np.float64: st.floats(0, 1),
    np.bool_: st.booleans(),
}


@st.composite
def valid_images(draw):
    dtype = draw(st.sampled_from(list(_ELEMENTS)))
    shape = draw(
        st.one_of(
            st.tuples(st.integers(8, 20), st.integers(8, 20)),
            st.tuples(st.integers(8, 20), st.integers(8, 20), st.sampled_from([1, 3, 4])),
        )
    )
    return draw(hnp.arrays(dtype, shape, elements=_ELEMENTS[dtype]))


@settings(max_examples=40, deadline=None)
@given(valid_images())
def test_any_valid_array_becomes_rgb_in_unit_range(image):
    rgb = to_float_rgb(image)
    assert rgb.shape == image.shape[:2] + (3,) and rgb.dtype == np.float32
    assert 0 <= rgb.min() and rgb.max() <= 1
    tensor, sizes = _batch([image])
    assert tensor.shape == (1, 3, 32, 32) and sizes == [image.shape[:2]]
    assert 0 <= float(tensor.min()) and float(tensor.max()) <= 1


def test_dtypes_of_the_same_picture_agree():
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, size=(20, 24, 3), dtype=np.uint8)
    variants = [u8, u8.astype(np.float64) / 255, u8.astype(np.uint16) * 257, u8.astype(np.int64)]
    tensors = [_batch([v])[0] for v in variants]
    for t in tensors[1:]:
        torch.testing.assert_close(t, tensors[0], atol=1e-6, rtol=0)


def test_gray_is_replicated_and_alpha_dropped():
    gray = np.arange(16 * 16, dtype=np.uint8).reshape(16, 16)
    rgba = np.dstack([gray, gray, gray, np.zeros_like(gray)])
    assert np.array_equal(to_float_rgb(gray)[..., 1], gray / np.float32(255))
    assert np.array_equal(to_float_rgb(rgba), to_float_rgb(gray))


@pytest.mark.parametrize("mode", ["RGBA", "P", "CMYK", "L", "I;16", "1", "LA"])
def test_pil_modes_and_files_are_converted_not_rejected(tmp_path, mode):
    base = Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 20, 3), np.uint8))
    if mode == "I;16":
        img = Image.fromarray(np.full((16, 20), 65535, np.uint16))
    else:
        img = base.convert(mode)
    image, size = read_image(img, 0)
    assert image.shape == (16, 20, 3) and size == (16, 20)
    if mode == "I;16":
        assert np.allclose(image, 1.0)
    suffix = ".tiff" if mode == "CMYK" else ".png"
    path = tmp_path / f"x{suffix}"
    img.save(path)
    from_file, _ = read_image(path, 0)
    assert from_file.shape == (16, 20, 3)


def test_large_jpeg_is_decoded_at_reduced_scale(tmp_path):
    path = tmp_path / "big.jpg"
    Image.new("RGB", (3000, 2000), (200, 10, 10)).save(path)
    image, size = read_image(path, 0, max_side=64)
    assert size == (2000, 3000)
    assert max(image.shape[:2]) <= 500
    assert abs(float(image[..., 0].mean()) - 200 / 255) < 0.02


@pytest.mark.parametrize(
    ("X", "error", "match"),
    [
        ([], ValueError, "empty"),
        (np.zeros((0, 16, 16, 3), np.uint8), ValueError, "empty"),
        (np.zeros((16, 16), np.uint8), ValueError, r"\(n, H, W\)"),
        (np.zeros((2, 16, 16, 5), np.uint8), ValueError, "channels last"),
        (np.full((2, 16, 16), np.nan), ValueError, "NaN"),
        (np.full((2, 16, 16), np.inf), ValueError, "NaN or infinite"),
        (np.full((2, 16, 16), 3.0), ValueError, r"\[0, 1\]"),
        (np.full((2, 16, 16), 300, np.int32), ValueError, "8-bit"),
        ([np.zeros((1, 1), np.uint8)], ValueError, "at least"),
        ([np.zeros((0, 5), np.uint8)], ValueError, "at least"),
        ([np.zeros((16, 16), np.uint8), "a.png"], TypeError, "mixes array and path"),
        ([np.zeros((16, 16), np.uint8), 3], TypeError, "image 1 has unsupported type int"),
        ("image.png", TypeError, "single path"),
        (5, TypeError, "must be an image array"),
    ],
)
def test_bad_inputs_get_clear_errors(X, error, match):
    with pytest.raises(error, match=match):
        check_images(X)


def test_sparse_matrix_is_refused():
    sparse = pytest.importorskip("scipy.sparse")
    with pytest.raises(TypeError, match="sparse"):
        check_images(sparse.csr_matrix(np.eye(16)))


def test_file_errors_name_the_file(tmp_path):
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(ImageLoadError, match="dir.png is a directory"):
        check_images([tmp_path / "dir.png"])
    with pytest.raises(ImageLoadError, match="missing.png"):
        check_images([str(tmp_path / "missing.png")])
    text = tmp_path / "notes.png"
    text.write_text("hello")
    with pytest.raises(ImageLoadError, match="image 0: .*notes.png is not a readable image"):
        read_image(text, 0)
    good = tmp_path / "good.png"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(good)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:60])
    with pytest.raises(ImageLoadError, match="truncated.png"):
        read_image(truncated, 3)


def test_mixed_sizes_keep_their_original_sizes():
    X = [np.zeros((16, 30), np.uint8), np.zeros((40, 20, 3), np.uint8)]
    images, sizes = _batch(X)
    assert images.shape == (2, 3, 32, 32) and sizes == [(16, 30), (40, 20)]


def test_decoding_workers_use_only_cores_the_model_leaves_free(monkeypatch):
    from skuniad import io

    monkeypatch.setattr(io.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.setattr(io.torch, "get_num_threads", lambda: 14)
    assert io.decoding_workers("cpu") == 2
    assert io.decoding_workers("cuda") == 4  # the model holds one core; at most 4
    monkeypatch.setattr(io.torch, "get_num_threads", lambda: 16)
    assert io.decoding_workers("cpu") == 0


def test_worker_decoding_gives_the_same_batches_as_in_process(tmp_path, monkeypatch):
    from skuniad import io

    rng = np.random.default_rng(0)
    paths = []
    for i in range(6):
        path = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (20 + i, 24, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    X = check_images(paths)

    def batches(workers):
        monkeypatch.setattr(io, "decoding_workers", lambda device="cpu": workers)
        return list(iter_batches(X, 16, (0.5,) * 3, (0.5,) * 3, 2))

    serial, parallel = batches(0), batches(2)
    assert (
        [s for _, s in serial]
        == [s for _, s in parallel]
        == [[(20, 24), (21, 24)], [(22, 24), (23, 24)], [(24, 24), (25, 24)]]
    )
    for (a, _), (b, _) in zip(serial, parallel, strict=True):
        assert torch.equal(a, b)


def test_pil_uint8_resize_rounds_to_eight_bits_before_resizing():
    from skuniad.io import load_resized

    sixteen = np.random.default_rng(5).integers(0, 65536, (30, 40), dtype=np.uint16)
    eight = np.rint(sixteen / 65535 * 255).astype(np.uint8)
    reference, size = load_resized(sixteen, 0, 16, "pil-uint8")
    assert size == (30, 40) and reference.shape == (3, 16, 16)
    torch.testing.assert_close(
        reference, load_resized(eight, 0, 16, "pil-uint8")[0], rtol=0, atol=0
    )
    assert torch.equal(reference * 255, (reference * 255).round())  # 8-bit levels
    in_float, _ = load_resized(sixteen, 0, 16, "float")
    assert not torch.equal(in_float * 255, (in_float * 255).round())  # 16-bit precision kept
    with pytest.raises(ValueError, match="resize must be one of"):
        load_resized(eight, 0, 16, "nearest")


def test_one_color_image_is_refused_with_how_to_pass_it():
    with pytest.raises(ValueError, match=r"one 48x40 color image: pass .*image\[None\]"):
        check_images(np.zeros((48, 40, 3), np.uint8))


def test_a_string_array_is_a_list_of_paths(tmp_path):
    paths = []
    for i in range(2):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.new("RGB", (20, 16), (10 * i, 2, 3)).save(paths[-1])
    X = check_images(np.array(paths))
    assert X == paths
    images, sizes = _batch(np.array(paths))
    expected, _ = _batch(paths)
    assert torch.equal(images, expected) and sizes == [(16, 20), (16, 20)]
    with pytest.raises(ImageLoadError, match="image 1: file not found"):
        check_images(np.array([paths[0], str(tmp_path / "missing.png")]))


def test_a_channels_first_tensor_is_a_batch_of_images():
    array = np.random.default_rng(0).random((2, 16, 20, 3), dtype=np.float32)
    tensor = torch.from_numpy(array).permute(0, 3, 1, 2)  # (N, 3, H, W), as torchvision
    np.testing.assert_array_equal(check_images(tensor), array)
    assert torch.equal(_batch(tensor)[0], _batch(array)[0])
    gray = torch.zeros(2, 1, 16, 20)
    assert check_images(gray).shape == (2, 16, 20)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\).*image\[None\]"):
        check_images(tensor[0])
    with pytest.raises(ValueError, match=r"channels first.*tensor.numpy\(\)"):
        check_images(torch.zeros(2, 16, 20, 3))


def test_unreadable_files_are_reported_with_their_index_in_the_whole_input(tmp_path):
    from skuniad.io import iter_loaded

    paths = []
    for i in range(5):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", (16, 16), (i, 0, 0)).save(paths[-1])
    paths[3].write_text("not an image")
    with pytest.raises(ImageLoadError, match="image 3: .*3.png is not a readable image"):
        list(iter_batches(paths, 16, (0, 0, 0), (1, 1, 1), 2))
    batches = list(iter_loaded(paths, 16, (0, 0, 0), (1, 1, 1), 2))
    sizes = [s for _, batch_sizes, _ in batches for s in batch_sizes]
    errors = [e for _, _, batch_errors in batches for e in batch_errors]
    assert sizes == [(16, 16)] * 3 + [None, (16, 16)]
    assert [e is None for e in errors] == [True, True, True, False, True]
    assert errors[3].index == 3 and errors[3].reason.endswith("3.png is not a readable image file")


# ------------------------------------------------------ decoding for a GPU (faked)
def test_decoded_images_are_pinned_for_a_gpu(monkeypatch, current_gpu):
    made = []

    class Loader(torch.utils.data.DataLoader):
        def __init__(self, *args, pin_memory=False, **kwargs):
            made.append(pin_memory)
            super().__init__(*args, pin_memory=False, **kwargs)  # no GPU to pin for here

    monkeypatch.setattr(torch.utils.data, "DataLoader", Loader)
    X = np.zeros((2, 16, 16, 3), dtype=np.uint8)
    for device in ("cuda", "cpu"):
        list(io.iter_batches(X, 16, (0.5,) * 3, (0.5,) * 3, 2, torch.device(device)))
    assert made == [True, False]


def test_images_for_a_second_gpu_are_pinned_for_that_gpu(monkeypatch, current_gpu):
    pinned_on = []

    class Loader(torch.utils.data.DataLoader):
        def __init__(self, *args, pin_memory=False, **kwargs):
            super().__init__(*args, pin_memory=False, **kwargs)  # no GPU to pin for here

        def __iter__(self):  # the DataLoader pins each batch for the current GPU
            for batch in super().__iter__():
                pinned_on.append(current_gpu[0])
                yield batch

    monkeypatch.setattr(torch.utils.data, "DataLoader", Loader)
    X = np.zeros((4, 16, 16, 3), dtype=np.uint8)
    list(io.iter_batches(X, 16, (0.5,) * 3, (0.5,) * 3, 2, torch.device("cuda", 1)))
    assert pinned_on == [1, 1] and current_gpu == [0]  # GPU 0 untouched, and left current


def test_torchrun_ranks_decode_on_their_own_cores(monkeypatch, recorder):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert io.decoding_cores() == [4, 5, 6, 7]
    assert io.decoding_workers("cuda") == 3  # 4 cores, one for the rank's own process
    pinned = recorder()
    monkeypatch.setattr(os, "sched_setaffinity", pinned, raising=False)
    io._keep_worker_on([4, 5, 6, 7], worker_id=0)
    assert pinned == [((0, [4, 5, 6, 7]), {})]
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert io.decoding_cores() == list(range(16))


def test_a_decompression_bomb_is_an_unreadable_file_not_a_crash(bomb_png, tmp_path):
    from skuniad.io import iter_loaded

    with pytest.raises(ImageLoadError, match=r"image 0: .*bomb.png is refused unread"):
        read_image(bomb_png, 0)
    good = tmp_path / "good.png"
    Image.new("RGB", (16, 16), (9, 0, 0)).save(good)
    ((_, sizes, errors),) = list(iter_loaded([good, bomb_png], 16, (0, 0, 0), (1, 1, 1), 2))
    assert sizes == [(16, 16), None] and errors[0] is None
    assert errors[1].index == 1 and "bomb.png" in errors[1].reason


def test_the_pixel_limit_holds_when_pillows_is_switched_off(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    monkeypatch.setattr(io, "MAX_IMAGE_PIXELS", 16 * 16 - 1)
    path = tmp_path / "big.png"
    Image.new("RGB", (16, 16)).save(path)
    with pytest.raises(ImageLoadError, match=r"big.png declares 16x16 pixels, more than the 255"):
        read_image(path, 0)
    assert read_image(Image.new("RGB", (16, 16)), 0)[1] == (16, 16)  # decoded already: kept


def test_data_set_checks_refuse_a_decompression_bomb_in_one_line(bomb_png):
    from skuniad.datasets import load_mask
    from skuniad.datasets._checks import image_size, mask_has_defect

    for read in (image_size, mask_has_defect, load_mask):
        with pytest.raises(ValueError, match="bomb.png"):
            read(bomb_png)


def test_float_files_in_the_unit_range_read_like_their_8_bit_version(tmp_path):
    gray = np.random.default_rng(0).integers(0, 256, (12, 16)).astype(np.uint8)
    Image.fromarray(gray).save(tmp_path / "g8.png")
    Image.fromarray(gray.astype(np.float32) / 255, mode="F").save(tmp_path / "f01.tif")
    Image.fromarray(gray.astype(np.float32), mode="F").save(tmp_path / "f255.tif")
    expected, _ = read_image(tmp_path / "g8.png", 0, as_uint8=True)
    for name in ("f01.tif", "f255.tif"):
        assert np.array_equal(read_image(tmp_path / name, 0, as_uint8=True)[0], expected), name
        assert np.allclose(read_image(tmp_path / name, 0)[0], expected / 255, atol=1e-6), name
    Image.fromarray(np.full((12, 16), -0.5, np.float32), mode="F").save(tmp_path / "neg.tif")
    with pytest.raises(ImageLoadError, match=r"neg.tif is a float image with values in \[-0.5"):
        read_image(tmp_path / "neg.tif", 0)


def test_exif_orientation_is_applied_to_files(tmp_path):
    from PIL import ImageOps

    picture = np.zeros((16, 24, 3), np.uint8)
    picture[:8] = 255  # top half white
    img = Image.fromarray(picture)
    exif = img.getexif()
    exif[0x0112] = 6  # stored rotated: shown turned 90 degrees clockwise
    img.save(tmp_path / "turned.jpg", exif=exif, quality=100)
    img.save(tmp_path / "plain.png")
    image, size = read_image(tmp_path / "turned.jpg", 0, as_uint8=True)
    with Image.open(tmp_path / "turned.jpg") as stored:
        shown = np.asarray(ImageOps.exif_transpose(stored).convert("RGB"))
    assert size == io.image_size(tmp_path / "turned.jpg", 0) == (24, 16)
    assert np.array_equal(image, shown) and image[:, 8:].mean() > 200 > 50 > image[:, :8].mean()
    plain, _ = read_image(tmp_path / "plain.png", 0, as_uint8=True)
    assert np.array_equal(plain, picture)  # no orientation: as stored, bit for bit
