"""Tests for skuniad.datasets.folders: images found in plain folders, categories from folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from skuniad.datasets import (
    DuplicateFolderNameError,
    find_images,
    folder_categories,
    images_and_categories,
)


def _image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(path)
    return path


def test_find_images_searches_nested_folders_in_path_order(tmp_path):
    root = tmp_path / "shots"
    expected = [
        _image(root / "a.png"),
        _image(root / "b" / "c.JPG"),
        _image(root / "b" / "d" / "e.bmp"),
        _image(root / "z.tiff"),
    ]
    (root / "notes.txt").write_text("not an image")
    _image(root / ".cache" / "hidden.png")
    _image(root / "b" / ".hidden.png")
    assert find_images([root]) == expected


def test_find_images_keeps_the_order_of_the_inputs(tmp_path):
    single = _image(tmp_path / "single.png")
    folder = tmp_path / "folder"
    inside = [_image(folder / "1.png"), _image(folder / "2.png")]
    assert find_images([str(folder), single]) == [*inside, single]
    assert find_images([single, folder]) == [single, *inside]


def test_find_images_skips_ground_truth_masks_only_when_asked(tmp_path):
    root = tmp_path / "bottle"
    image = _image(root / "test" / "broken" / "000.png")
    mask = _image(root / "ground_truth" / "broken" / "000_mask.png")
    assert find_images([root]) == [mask, image]
    assert find_images([root], skip_masks=True) == [image]
    # only folders below a searched one: a ground_truth folder given itself is searched
    assert find_images([root / "ground_truth"], skip_masks=True) == [mask]


def test_find_images_names_a_file_that_is_not_an_image(tmp_path):
    text = tmp_path / "readme.txt"
    text.write_text("hello")
    with pytest.raises(ValueError) as info:
        find_images([text])
    assert str(info.value) == f"not an image file (by extension): {text}"


def test_find_images_names_a_missing_input_and_a_folder_without_images(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as info:
        find_images([_image(tmp_path / "fine.png"), missing])
    assert str(info.value) == f"no such file or folder: {missing}"
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "data.csv").write_text("1,2")
    with pytest.raises(FileNotFoundError) as info:
        find_images([empty])
    assert str(info.value) == f"no image files found in {empty}"


def test_images_and_categories_names_each_image_after_its_input_folder(tmp_path):
    bottle = [_image(tmp_path / "bottle" / "x" / "1.png"), _image(tmp_path / "bottle" / "2.png")]
    screw = [_image(tmp_path / "screw" / "1.png")]
    loose = _image(tmp_path / "extra" / "cable" / "9.png")
    paths, categories = images_and_categories([tmp_path / "bottle", tmp_path / "screw", loose])
    assert paths == [*sorted(bottle), *screw, loose]
    assert categories == ["bottle", "bottle", "screw", "cable"]


def test_images_and_categories_refuses_two_folders_with_one_name(tmp_path):
    first = tmp_path / "a" / "good"
    second = tmp_path / "b" / "good"
    _image(first / "1.png")
    _image(second / "1.png")
    with pytest.raises(DuplicateFolderNameError) as info:
        images_and_categories([first, second])
    assert isinstance(info.value, ValueError)
    assert (info.value.first, info.value.second, info.value.name) == (first, second, "good")
    assert f"{first} and {second} are both named 'good'" in str(info.value)


def test_folder_categories_takes_the_nearest_folder_named_like_a_known_category(tmp_path):
    paths = [
        tmp_path / "bottle" / "test" / "broken" / "1.png",
        tmp_path / "bottle" / "more" / "screw" / "deep" / "2.png",
        tmp_path / "unknown" / "3.png",
    ]
    assert folder_categories(paths, ["bottle", "screw"]) == ["bottle", "screw", "unknown"]


def test_folder_categories_returns_the_known_label_itself(tmp_path):
    paths = [tmp_path / "7" / "a.png", tmp_path / "70" / "b.png", tmp_path / "7" / "x" / "c.png"]
    assert folder_categories(paths, [7, 3]) == [7, "70", 7]
    assert folder_categories([], ["bottle"]) == []
