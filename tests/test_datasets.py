"""Tests for skuniad.datasets: the MVTec layout reader and the synthetic generator."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from skuniad.datasets import (
    DEFECT_TYPES,
    SYNTHETIC_CATEGORIES,
    AnomalyDataset,
    list_categories,
    load_image,
    load_mask,
    load_mvtec,
    make_synthetic,
    write_synthetic,
)

REAL_AD = Path("/work/shared/data/real-ad")
MVTEC_AD = Path("/work/shared/data/mvtec-ad")


def _save(path: Path, value: int = 128, size: int = 8, mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "RGB":
        array = np.full((size, size, 3), value, dtype=np.uint8)
    else:
        array = np.full((size, size), value, dtype=np.uint8)
    Image.fromarray(array).save(path)
    return path


def _make_category(
    root: Path,
    name: str,
    n_train: int = 3,
    n_good: int = 2,
    defects: dict[str, int] | None = None,
    ext: str = ".png",
    mask_suffix: str = "_mask",
    mask_ext: str = ".png",
) -> Path:
    """Create a small MVTec-style category folder with constant images."""
    folder = root / name
    for i in range(n_train):
        _save(folder / "train" / "good" / f"{i:03d}{ext}", value=100 + i)
    for i in range(n_good):
        _save(folder / "test" / "good" / f"{i:03d}{ext}", value=50 + i)
    for defect, count in (defects or {"crack": 2}).items():
        for i in range(count):
            _save(folder / "test" / defect / f"{i:03d}{ext}", value=200)
            mask = np.zeros((8, 8), dtype=np.uint8)
            mask[: i + 1, : i + 2] = 255
            mask_path = folder / "ground_truth" / defect / f"{i:03d}{mask_suffix}{mask_ext}"
            mask_path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask).save(mask_path)
    return folder


# --------------------------------------------------------------------------- synthetic


def test_write_synthetic_then_load_mvtec_round_trips_counts_labels_and_masks(tmp_path):
    cats = ["stripes", "parts"]
    root = write_synthetic(tmp_path / "syn", categories=cats, n_train=5, n_test=8, image_size=32)
    assert root == tmp_path / "syn"
    assert list_categories(root) == ["parts", "stripes"]

    train = load_mvtec(root, "train")
    assert len(train) == 10
    assert train.labels.dtype == np.int64
    assert train.labels.tolist() == [0] * 10
    assert train.categories == ["parts"] * 5 + ["stripes"] * 5
    assert set(train.defect_types) == {"good"}
    assert train.mask_paths == [None] * 10

    test = load_mvtec(root, "test", categories=cats)
    assert len(test) == 16
    assert test.categories == ["stripes"] * 8 + ["parts"] * 8
    assert test.labels.sum() == 8
    assert test.defect_types[:8] == ["good"] * 4 + sorted(DEFECT_TYPES)

    generated = make_synthetic("test", cats, n_per_category=8, image_size=32)
    by_key: dict[tuple[str, str, int], int] = {}
    counters: dict[tuple[str, str], int] = {}
    for i, key in enumerate(zip(generated.categories, generated.defect_types, strict=True)):
        by_key[(*key, counters.get(key, 0))] = i
        counters[key] = counters.get(key, 0) + 1
    for path, cat, defect, label, mask_path in zip(
        test.paths, test.categories, test.defect_types, test.labels, test.mask_paths, strict=True
    ):
        j = by_key[(cat, defect, int(path.stem))]
        assert label == generated.labels[j]
        np.testing.assert_array_equal(load_image(path), generated.images[j])
        loaded_mask = load_mask(mask_path, (32, 32))
        np.testing.assert_array_equal(loaded_mask, generated.masks[j])
        assert (mask_path is None) == (defect == "good")


def test_write_synthetic_refuses_a_non_empty_category_folder_unless_overwrite(tmp_path):
    write_synthetic(tmp_path, categories="grain", n_train=2, n_test=4, image_size=16)
    with pytest.raises(FileExistsError, match=re.escape(str(tmp_path / "grain"))):
        write_synthetic(tmp_path, categories="grain", n_train=1, n_test=2, image_size=16)
    write_synthetic(
        tmp_path, categories="grain", n_train=1, n_test=2, image_size=16, overwrite=True
    )
    assert len(load_mvtec(tmp_path, "train")) == 1
    assert len(load_mvtec(tmp_path, "test")) == 2


def test_make_synthetic_is_deterministic_by_seed():
    a = make_synthetic("test", n_per_category=6, image_size=32, seed=7)
    b = make_synthetic("test", n_per_category=6, image_size=32, seed=7)
    assert len(a) == 24
    assert a.categories == b.categories and a.defect_types == b.defect_types
    np.testing.assert_array_equal(a.labels, b.labels)
    for x, y, mx, my in zip(a.images, b.images, a.masks, b.masks, strict=True):
        np.testing.assert_array_equal(x, y)
        np.testing.assert_array_equal(mx, my)


def test_make_synthetic_differs_across_seeds_and_splits():
    a = make_synthetic("train", n_per_category=4, image_size=32, seed=0)
    b = make_synthetic("train", n_per_category=4, image_size=32, seed=1)
    t = make_synthetic("test", n_per_category=4, anomaly_ratio=0.0, image_size=32, seed=0)
    for x, y, z in zip(a.images, b.images, t.images, strict=True):
        assert not np.array_equal(x, y)
        assert not np.array_equal(x, z)
    # Images within one split are distinct too.
    flat = {img.tobytes() for img in a.images}
    assert len(flat) == len(a.images)


def test_make_synthetic_output_types_labels_and_layout():
    data = make_synthetic("test", n_per_category=8, anomaly_ratio=0.5, image_size=48, seed=2)
    assert data.categories == [c for c in SYNTHETIC_CATEGORIES for _ in range(8)]
    assert data.labels.dtype == np.int64
    assert data.labels.tolist() == ([0] * 4 + [1] * 4) * len(SYNTHETIC_CATEGORIES)
    assert data.defect_types[:8] == ["good"] * 4 + list(DEFECT_TYPES)
    for image, mask in zip(data.images, data.masks, strict=True):
        assert image.dtype == np.uint8 and image.shape == (48, 48, 3)
        assert mask.dtype == bool and mask.shape == (48, 48)
    train = make_synthetic("train", n_per_category=3, image_size=16)
    assert train.labels.tolist() == [0] * 12
    assert set(train.defect_types) == {"good"}


def test_masks_are_non_empty_exactly_for_anomalous_images():
    data = make_synthetic("test", n_per_category=10, anomaly_ratio=0.6, image_size=64, seed=4)
    assert data.labels.sum() == 6 * len(SYNTHETIC_CATEGORIES)
    for label, mask, defect in zip(data.labels, data.masks, data.defect_types, strict=True):
        assert bool(mask.any()) == bool(label)
        assert (defect == "good") == (label == 0)


def test_mask_is_exactly_the_set_of_pixels_the_defect_changed():
    # With anomaly_ratio=0 the image at the same position is the defect-free counterpart.
    data = make_synthetic("test", n_per_category=8, image_size=64, seed=5)
    clean = make_synthetic("test", n_per_category=8, anomaly_ratio=0.0, image_size=64, seed=5)
    for i in np.flatnonzero(data.labels):
        changed = (data.images[i] != clean.images[i]).any(axis=-1)
        np.testing.assert_array_equal(data.masks[i], changed)
    for i in np.flatnonzero(data.labels == 0):
        np.testing.assert_array_equal(data.images[i], clean.images[i])


def test_planted_defects_are_large_and_high_contrast():
    data = make_synthetic("test", n_per_category=16, image_size=64, seed=6)
    clean = make_synthetic("test", n_per_category=16, anomaly_ratio=0.0, image_size=64, seed=6)
    for i in np.flatnonzero(data.labels):
        mask = data.masks[i]
        assert 0.01 <= mask.mean() <= 0.04, (data.categories[i], data.defect_types[i])
        diff = np.abs(data.images[i].astype(int) - clean.images[i].astype(int)).max(axis=-1)
        assert diff[mask].mean() >= 60, (data.categories[i], data.defect_types[i])
        assert diff[~mask].max() == 0
        if data.defect_types[i] in ("hole", "stain", "missing"):
            rows, cols = np.nonzero(mask)
            assert np.ptp(rows) + 1 >= 8 and np.ptp(cols) + 1 >= 8


def test_normal_images_vary_mildly_compared_with_defects():
    data = make_synthetic("train", "parts", n_per_category=12, image_size=64, seed=8)
    stack = np.stack(data.images).astype(float)
    assert stack.std(axis=0).mean() < 15


def test_make_synthetic_categories_subset_gives_the_same_images():
    full = make_synthetic("test", n_per_category=4, image_size=32, seed=9)
    dots = make_synthetic("test", "dots", n_per_category=4, image_size=32, seed=9)
    start = full.categories.index("dots")
    for k, image in enumerate(dots.images):
        np.testing.assert_array_equal(image, full.images[start + k])


def test_make_synthetic_defect_types_restricts_planted_defects():
    data = make_synthetic("test", "grain", n_per_category=6, defect_types=["hole"], seed=1)
    assert data.defect_types == ["good"] * 3 + ["hole"] * 3


def test_make_synthetic_is_fast():
    import time

    start = time.perf_counter()
    make_synthetic("test", n_per_category=50, image_size=64)
    assert time.perf_counter() - start < 2.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"categories": ["stripes", "wood"]}, r"wood.*available: stripes, grain, dots, parts"),
        ({"image_size": 15}, "image_size"),
        ({"n_per_category": 0}, "n_per_category"),
        ({"anomaly_ratio": 1.5}, "anomaly_ratio"),
        ({"seed": -1}, "seed"),
        ({"split": "val"}, "split"),
        ({"defect_types": ["dent"]}, r"dent.*available"),
    ],
)
def test_make_synthetic_rejects_invalid_arguments(kwargs, message):
    kwargs = {"split": "test", **kwargs}
    with pytest.raises(ValueError, match=message):
        make_synthetic(**kwargs)


# --------------------------------------------------------------------------- mvtec reader


def test_load_mvtec_reads_labels_defects_and_masks_in_sorted_order(tmp_path):
    _make_category(tmp_path, "screw", defects={"thread": 1, "crack": 2})
    _make_category(tmp_path, "bottle", n_train=2)
    (tmp_path / "license.txt").write_text("licence")
    (tmp_path / "screw" / "readme.txt").write_text("readme")
    (tmp_path / "screw" / "train" / "good" / "notes.txt").write_text("not an image")
    (tmp_path / "not_a_category").mkdir()
    assert list_categories(tmp_path) == ["bottle", "screw"]

    train = load_mvtec(tmp_path)
    assert [p.name for p in train.paths] == ["000.png", "001.png", "000.png", "001.png", "002.png"]
    assert train.categories == ["bottle"] * 2 + ["screw"] * 3

    test = load_mvtec(tmp_path, "test", categories="screw")
    assert test.defect_types == ["good", "good", "crack", "crack", "thread"]
    assert test.labels.tolist() == [0, 0, 1, 1, 1]
    assert test.mask_paths[:2] == [None, None]
    assert test.mask_paths[2] == tmp_path / "screw" / "ground_truth" / "crack" / "000_mask.png"
    assert load_mask(test.mask_paths[3]).sum() == 2 * 3


def test_validation_folder_is_ignored_by_default_and_added_when_asked(tmp_path):
    folder = _make_category(tmp_path, "tire", n_train=3)
    _save(folder / "validation" / "good" / "000.png")
    _save(folder / "validation" / "good" / "001.png")
    assert len(load_mvtec(tmp_path, "train")) == 3
    with_val = load_mvtec(tmp_path, "train", include_validation=True)
    assert len(with_val) == 5
    assert [p.parent.parent.name for p in with_val.paths] == ["train"] * 3 + ["validation"] * 2
    assert with_val.labels.tolist() == [0] * 5
    assert len(load_mvtec(tmp_path, "test", include_validation=True)) == 4


def test_mask_named_like_the_image_is_used_as_fallback(tmp_path):
    # BTAD style: .bmp images, masks named <stem>.png.
    _make_category(tmp_path, "01", ext=".bmp", mask_suffix="", mask_ext=".png")
    test = load_mvtec(tmp_path, "test")
    assert [m.name if m else None for m in test.mask_paths] == [None, None, "000.png", "001.png"]
    assert [p.suffix for p in test.paths] == [".bmp"] * 4


def test_mask_with_suffix_is_preferred_over_the_plain_stem(tmp_path):
    folder = _make_category(tmp_path, "cable", defects={"cut": 1})
    _save(folder / "ground_truth" / "cut" / "000.png", mode="L")
    test = load_mvtec(tmp_path, "test")
    assert test.mask_paths[-1].name == "000_mask.png"


def test_single_category_root_is_read_as_one_category(tmp_path):
    folder = _make_category(tmp_path, "carpet", n_train=4)
    assert list_categories(folder) == ["carpet"]
    train = load_mvtec(folder, "train")
    assert len(train) == 4 and train.categories == ["carpet"] * 4
    assert load_mvtec(folder, "test", categories=["carpet"]).labels.tolist() == [0, 0, 1, 1]


def test_load_mvtec_missing_root_names_the_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        load_mvtec(missing)
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        list_categories(missing)


def test_load_mvtec_root_that_is_a_file_names_the_path(tmp_path):
    file = _save(tmp_path / "image.png")
    with pytest.raises(ValueError, match=re.escape(str(file))):
        load_mvtec(file)


def test_load_mvtec_root_without_categories_names_the_path(tmp_path):
    (tmp_path / "images").mkdir()
    _save(tmp_path / "images" / "a.png")
    with pytest.raises(ValueError, match=re.escape(str(tmp_path)) + ".*not an MVTec"):
        load_mvtec(tmp_path)


def test_load_mvtec_unknown_category_lists_the_available_ones(tmp_path):
    _make_category(tmp_path, "bottle")
    _make_category(tmp_path, "screw")
    with pytest.raises(ValueError, match=r"\['wood'\] not found in .*available: bottle, screw"):
        load_mvtec(tmp_path, categories=["bottle", "wood"])
    with pytest.raises(ValueError, match=re.escape(str(tmp_path))):
        load_mvtec(tmp_path, categories="wood")


def test_load_mvtec_empty_train_split_names_the_folder(tmp_path):
    folder = _make_category(tmp_path, "bottle", n_train=0)
    (folder / "train" / "good").mkdir(parents=True)
    (folder / "train" / "good" / "readme.txt").write_text("no images")
    with pytest.raises(FileNotFoundError, match=re.escape(str(folder / "train" / "good"))):
        load_mvtec(tmp_path, "train")
    assert len(load_mvtec(tmp_path, "test")) == 4


def test_load_mvtec_empty_test_split_names_the_folder(tmp_path):
    folder = tmp_path / "bottle"
    _save(folder / "train" / "good" / "000.png")
    (folder / "test" / "good").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=re.escape(str(folder / "test"))):
        load_mvtec(tmp_path, "test")


def test_anomalous_image_without_mask_gets_none(tmp_path):
    folder = _make_category(tmp_path, "bottle", defects={"broken": 2})
    (folder / "ground_truth" / "broken" / "001_mask.png").unlink()
    test = load_mvtec(tmp_path, "test")
    assert test.labels.tolist() == [0, 0, 1, 1]
    assert test.mask_paths[2] == folder / "ground_truth" / "broken" / "000_mask.png"
    assert test.mask_paths[3] is None  # evaluation names it (see test_evaluation.py)


def test_category_without_ground_truth_is_image_level_only(tmp_path):
    import shutil

    folder = _make_category(tmp_path, "tile", defects={"crack": 2, "hole": 1})
    shutil.rmtree(folder / "ground_truth")
    test = load_mvtec(tmp_path, "test")
    assert test.labels.tolist() == [0, 0, 1, 1, 1]
    assert test.mask_paths == [None] * 5


def test_ground_truth_without_any_matching_mask_names_image_and_tried_paths(tmp_path):
    # ground_truth/ is there, so the masks are meant to exist: a naming problem.
    folder = _make_category(tmp_path, "bottle", defects={"broken": 1})
    (folder / "ground_truth" / "broken" / "000_mask.png").rename(
        folder / "ground_truth" / "broken" / "000_gt.png"
    )
    image = folder / "test" / "broken" / "000.png"
    gt = folder / "ground_truth" / "broken"
    with pytest.raises(FileNotFoundError) as info:
        load_mvtec(tmp_path, "test")
    message = str(info.value)
    assert str(image) in message and "no mask for any anomalous image" in message
    assert str(gt / "000_mask.png") in message and str(gt / "000.bmp") in message


def test_mask_of_another_size_is_refused(tmp_path):
    folder = _make_category(tmp_path, "bottle", defects={"broken": 1})
    mask = folder / "ground_truth" / "broken" / "000_mask.png"
    Image.fromarray(np.zeros((8, 9), dtype=np.uint8)).save(mask)
    with pytest.raises(ValueError, match=re.escape(f"mask {mask} is 9 x 8 pixels but its image")):
        load_mvtec(tmp_path, "test")


def test_load_mvtec_rejects_unknown_split(tmp_path):
    _make_category(tmp_path, "bottle")
    with pytest.raises(ValueError, match="split"):
        load_mvtec(tmp_path, "validation")


def test_load_mask_thresholds_resizes_nearest_and_handles_none(tmp_path):
    mask = np.zeros((4, 6), dtype=np.uint8)
    mask[1:3, 2:4] = 1  # non-zero values other than 255 count as defect
    path = tmp_path / "m.png"
    Image.fromarray(mask).save(path)
    np.testing.assert_array_equal(load_mask(path), mask > 0)
    big = load_mask(path, (8, 12))
    assert big.dtype == bool and big.shape == (8, 12)
    np.testing.assert_array_equal(big, np.kron(mask > 0, np.ones((2, 2), dtype=bool)))
    rgb = np.zeros((4, 6, 3), dtype=np.uint8)
    rgb[0, 0, 2] = 255
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    assert load_mask(tmp_path / "rgb.png").sum() == 1
    empty = load_mask(None, (5, 7))
    assert empty.shape == (5, 7) and not empty.any()
    with pytest.raises(ValueError, match="size"):
        load_mask(None)


def test_load_image_returns_rgb_uint8_and_resizes(tmp_path):
    path = _save(tmp_path / "gray.png", value=77, size=10, mode="L")
    image = load_image(path)
    assert image.shape == (10, 10, 3) and image.dtype == np.uint8 and (image == 77).all()
    assert load_image(path, (4, 6)).shape == (4, 6, 3)


def test_load_image_reads_a_16_bit_image_as_the_model_does(tmp_path):
    from skuniad.io import load_resized, read_image

    ramp = np.linspace(0, 65535, 16 * 32).round().astype(np.uint16).reshape(16, 32)
    path = tmp_path / "deep.png"
    Image.fromarray(ramp).save(path)
    with Image.open(path) as img:
        assert img.mode == "I;16"
    image = load_image(path)
    # rescaled to 8 bits, every level used; Pillow's convert("RGB") clips 99.6 % to 255
    rescaled = np.rint(ramp / 65535 * 255).astype(np.uint8)
    np.testing.assert_array_equal(image, np.repeat(rescaled[..., None], 3, axis=-1))
    assert len(np.unique(image)) == 256
    np.testing.assert_array_equal(image, read_image(path, 0, as_uint8=True)[0])
    # and resized, the pixels of the network's input (resize="pil-uint8")
    model_input, _ = load_resized(path, 0, 12, mode="pil-uint8")
    seen = (model_input.permute(1, 2, 0) * 255).round().byte().numpy()
    np.testing.assert_array_equal(load_image(path, size=(12, 12)), seen)


def test_load_image_refuses_what_the_model_refuses(tmp_path):
    with pytest.raises(ValueError, match="file not found"):
        load_image(tmp_path / "missing.png")
    tiny = _save(tmp_path / "tiny.png", size=4)
    with pytest.raises(ValueError, match="at least 8x8"):
        load_image(tiny)


def test_anomaly_dataset_subset_and_select(tmp_path):
    _make_category(tmp_path, "bottle")
    _make_category(tmp_path, "screw", defects={"crack": 1, "thread": 1})
    test = load_mvtec(tmp_path, "test")
    assert test.category_names == ["bottle", "screw"]
    screw = test.subset("screw")
    assert len(screw) == 4 and set(screw.categories) == {"screw"}
    assert screw.defect_types == ["good", "good", "crack", "thread"]
    picked = test.select(test.labels == 1)
    assert picked.labels.tolist() == [1] * 4 and None not in picked.mask_paths
    assert test.select([3, 0]).paths == [test.paths[3], test.paths[0]]
    assert len(test.select([])) == 0
    with pytest.raises(ValueError, match="available: bottle, screw"):
        test.subset("wood")
    with pytest.raises(ValueError, match="equal lengths"):
        AnomalyDataset(
            paths=[Path("a.png")],
            labels=np.array([0, 1]),
            defect_types=["good"],
            categories=["x"],
            mask_paths=[None],
        )


# --------------------------------------------------------------------------- real data smoke


@pytest.mark.skipif(not REAL_AD.is_dir(), reason="real-ad data set not available")
def test_real_ad_train_split_has_three_categories_and_1249_images():
    assert list_categories(REAL_AD) == ["kolektorsdd", "magnetic_tile", "tire"]
    train = load_mvtec(REAL_AD, "train")
    assert len(train) == 1249
    assert train.category_names == ["kolektorsdd", "magnetic_tile", "tire"]
    assert int(train.labels.sum()) == 0
    assert len(load_mvtec(REAL_AD, "train", "tire", include_validation=True)) == 210 + 29
    test = load_mvtec(REAL_AD, "test", "tire")
    assert len(test) == 112 and int(test.labels.sum()) == 87
    assert all(m is not None and m.is_file() for m in test.select(test.labels == 1).mask_paths)


@pytest.mark.skipif(not MVTEC_AD.is_dir(), reason="mvtec-ad data set not available")
def test_mvtec_bottle_counts():
    assert list_categories(MVTEC_AD) == ["bottle"]
    assert len(load_mvtec(MVTEC_AD, "train")) == 209
    test = load_mvtec(MVTEC_AD, "test")
    assert len(test) == 83 and int(test.labels.sum()) == 63
