"""Tests for skuniad.datasets.uniad_json: the UniAD authors' JSON lists, both directions."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from skuniad.datasets import (
    load_dataset,
    load_mvtec,
    load_uniad_json,
    write_synthetic,
    write_uniad_json,
)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mvtec")
    return write_synthetic(root, categories=("grain", "parts"), n_train=4, n_test=6, image_size=32)


def _same(a, b) -> None:
    assert a.paths == b.paths
    assert a.labels.tolist() == b.labels.tolist()
    assert a.defect_types == b.defect_types
    assert a.categories == b.categories
    assert a.mask_paths == b.mask_paths


@pytest.mark.parametrize("split", ["train", "test"])
def test_mvtec_to_json_and_back_gives_the_same_images_in_the_same_order(synthetic, tmp_path, split):
    dataset = load_mvtec(synthetic, split)
    path = write_uniad_json(dataset, tmp_path / "lists" / f"{split}.json", synthetic)
    assert path == tmp_path / "lists" / f"{split}.json"
    _same(load_uniad_json(synthetic, path, split), dataset)
    _same(load_dataset("uniad-json", synthetic, split, meta_file=path), dataset)


def test_written_lines_follow_the_authors_format(synthetic, tmp_path):
    test = load_mvtec(synthetic, "test")
    path = write_uniad_json(test, tmp_path / "test.json", synthetic)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == len(test)
    normal = lines[0]
    assert normal == {
        "filename": "grain/test/good/" + test.paths[0].name,
        "label": 0,
        "label_name": "good",
        "clsname": "grain",
    }
    anomalous = lines[int(np.flatnonzero(test.labels)[0])]
    assert list(anomalous) == ["filename", "label", "label_name", "maskname", "clsname"]
    assert anomalous["label"] == 1 and anomalous["maskname"].startswith("grain/ground_truth/")
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_authors_lines_read_with_their_defaults(tmp_path):
    _image(tmp_path / "bottle/test/good/000.png")
    _image(tmp_path / "bottle/test/broken/000.png")
    _mask(tmp_path / "bottle/ground_truth/broken/000_mask.png")
    path = _lines(
        tmp_path,
        {"filename": "bottle/test/good/000.png", "label": 0, "label_name": "good",
         "clsname": "bottle"},
        {"filename": "bottle/test/broken/000.png", "label": 1, "label_name": "defective",
         "maskname": "bottle/ground_truth/broken/000_mask.png", "clsname": "bottle"},
        "",
        {"filename": "bottle/test/broken/000.png", "label": 1, "clsname": "bottle"},
    )  # fmt: skip
    test = load_uniad_json(tmp_path, path, "test")
    assert test.defect_types == ["good", "defective", "defective"]
    assert test.mask_paths[1] == tmp_path / "bottle/ground_truth/broken/000_mask.png"
    assert test.mask_paths[0] is None and test.mask_paths[2] is None


def test_categories_in_list_order_or_as_requested(synthetic, tmp_path):
    test = load_mvtec(synthetic, "test", categories=["parts", "grain"])
    path = write_uniad_json(test, tmp_path / "test.json", synthetic)
    assert load_uniad_json(synthetic, path, "test").category_names == ["parts", "grain"]
    assert load_uniad_json(synthetic, path, "test", ["grain"]).paths == test.subset("grain").paths


def test_writing_refuses_images_outside_the_root_and_writes_nothing(synthetic, tmp_path):
    dataset = load_mvtec(synthetic, "train")
    with pytest.raises(ValueError, match="is not inside"):
        write_uniad_json(dataset, tmp_path / "out" / "train.json", synthetic / "grain")
    assert not (tmp_path / "out" / "train.json").exists()


# ----------------------------------------------------------------------------- bad input


def _image(path: Path, size=(10, 8)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), 90, dtype=np.uint8)).save(path)


def _mask(path: Path, size=(10, 8), defect=True) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    mask = np.zeros((size[1], size[0]), dtype=np.uint8)
    mask[1:3, 1:4] = 255 if defect else 0
    Image.fromarray(mask).save(path)


def _lines(root: Path, *entries) -> Path:
    path = root / "meta.json"
    path.write_text("\n".join(e if isinstance(e, str) else json.dumps(e) for e in entries) + "\n")
    return path


@pytest.fixture
def small(tmp_path):
    """A normal and an anomalous test image with its mask."""
    _image(tmp_path / "a/good.png")
    _image(tmp_path / "a/bad.png")
    _mask(tmp_path / "a/bad_mask.png")
    return tmp_path


NORMAL = {"filename": "a/good.png", "label": 0, "label_name": "good", "clsname": "a"}
ANOMALOUS = {
    "filename": "a/bad.png",
    "label": 1,
    "label_name": "defective",
    "maskname": "a/bad_mask.png",
    "clsname": "a",
}


def _error(root: Path, *entries, exc=ValueError, split="test", **kwargs) -> str:
    path = _lines(root, *entries)
    with pytest.raises(exc) as info:
        load_uniad_json(root, path, split, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    return message


def test_malformed_json_gives_file_and_line(small):
    message = _error(small, NORMAL, '{"filename": "a/bad.png", "label": 1,', ANOMALOUS)
    assert "meta.json line 2: not valid JSON" in message
    assert "line 3: expected a JSON object, got list" in _error(small, NORMAL, ANOMALOUS, "[1]")


def test_unknown_and_missing_keys(small):
    message = _error(small, NORMAL, {**ANOMALOUS, "bbox": [1, 2]})
    assert "line 2: unknown keys ['bbox']" in message
    message = _error(small, NORMAL, {k: v for k, v in ANOMALOUS.items() if k != "clsname"})
    assert "line 2: missing keys ['clsname']" in message


@pytest.mark.parametrize("label", [2, True, "1", None])
def test_label_must_be_0_or_1(small, label):
    assert "line 1: 'label' must be 0 (normal) or 1" in _error(small, {**NORMAL, "label": label})


def test_missing_image_and_mask_files_are_named(small):
    message = _error(
        small,
        {**NORMAL, "filename": "a/nowhere.png"},
        {**ANOMALOUS, "maskname": "a/no_mask.png"},
        exc=FileNotFoundError,
    )
    assert "2 file(s) listed in" in message
    assert "a/nowhere.png (line 1)" in message and "a/no_mask.png (line 2)" in message


def test_mask_of_another_size_is_refused(small):
    _mask(small / "a/bad_mask.png", size=(20, 16))
    message = _error(small, NORMAL, ANOMALOUS)
    assert "line 2: mask" in message and "20 x 16 pixels but its image" in message


def test_normal_label_with_a_defective_mask_is_refused(small):
    message = _error(small, {**NORMAL, "maskname": "a/bad_mask.png"}, ANOMALOUS)
    assert "line 1: the label says normal but the mask" in message
    _mask(small / "a/empty_mask.png", defect=False)
    path = _lines(small, {**NORMAL, "maskname": "a/empty_mask.png"}, ANOMALOUS)
    assert load_uniad_json(small, path, "test").mask_paths[0] is None


def test_anomalous_images_in_a_training_list_are_refused(small):
    message = _error(small, NORMAL, ANOMALOUS, split="train")
    assert "normal images only" in message and "bad.png (line 2)" in message


def test_unknown_category_and_empty_list(small):
    message = _error(small, NORMAL, ANOMALOUS, categories=["a", "b"])
    assert re.search(r"\['b'\] not found in .*meta.json; available: a", message)
    assert "lists no test images" in _error(small, "", "  ")


def test_missing_list_and_root_are_named(small):
    with pytest.raises(FileNotFoundError, match="data list not found: .*nothing.json"):
        load_uniad_json(small, small / "nothing.json")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_uniad_json(small / "nowhere", _lines(small, NORMAL))
