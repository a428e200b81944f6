"""Tests for skuniad.datasets.visa: VisA's split-file format, read from small generated sets."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from skuniad.datasets import VISA_COLUMNS, load_dataset, load_mask, load_visa

HEADER = ",".join(VISA_COLUMNS)


def _image(path: Path, size=(12, 10), value: int = 128) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, dtype=np.uint8)).save(path)


def _mask(path: Path, size=(12, 10), defect: bool = True) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    mask = np.zeros((size[1], size[0]), dtype=np.uint8)
    if defect:
        mask[2:5, 3:7] = 255
    Image.fromarray(mask).save(path)


def make_visa(root: Path, objects=("candle", "pcb1"), n_train=3, n_normal=2, n_anomaly=2) -> Path:
    """A VisA-format set: images and masks as VisA names them, and split_csv/1cls.csv."""
    rows = [HEADER]
    for name in objects:
        images = f"{name}/Data/Images"
        for i in range(n_train + n_normal):
            _image(root / images / "Normal" / f"{i:04d}.JPG", value=100 + i)
            split = "train" if i < n_train else "test"
            rows.append(f"{name},{split},normal,{images}/Normal/{i:04d}.JPG,")
        for i in range(n_anomaly):
            _image(root / images / "Anomaly" / f"{i:03d}.JPG", value=200)
            _mask(root / name / "Data" / "Masks" / "Anomaly" / f"{i:03d}.png")
            rows.append(
                f"{name},test,anomaly,{images}/Anomaly/{i:03d}.JPG,"
                f"{name}/Data/Masks/Anomaly/{i:03d}.png"
            )
    _write_csv(root, rows)
    return root


def _write_csv(root: Path, rows: list[str]) -> Path:
    path = root / "split_csv" / "1cls.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(rows) + "\n")
    return path


def _rows(root: Path) -> list[str]:
    return (root / "split_csv" / "1cls.csv").read_text().splitlines()


def test_load_visa_reads_splits_labels_masks_in_file_order(tmp_path):
    root = make_visa(tmp_path)
    train = load_visa(root)
    assert len(train) == 6 and train.labels.tolist() == [0] * 6
    assert train.category_names == ["candle", "pcb1"]
    assert train.paths[0] == root / "candle/Data/Images/Normal/0000.JPG"
    assert train.mask_paths == [None] * 6

    test = load_visa(root, "test")
    assert test.categories == ["candle"] * 4 + ["pcb1"] * 4
    assert test.labels.tolist() == [0, 0, 1, 1] * 2
    assert test.defect_types[:4] == ["good", "good", "anomaly", "anomaly"]
    assert test.mask_paths[2] == root / "candle/Data/Masks/Anomaly/000.png"
    assert load_mask(test.mask_paths[2]).sum() == 12


def test_load_visa_categories_in_the_requested_order_and_by_format_name(tmp_path):
    root = make_visa(tmp_path)
    test = load_visa(root, "test", categories=["pcb1", "candle"])
    assert test.category_names == ["pcb1", "candle"]
    same = load_dataset("visa", root, "test", categories="pcb1")
    assert same.paths == test.subset("pcb1").paths


def test_anomalous_images_without_mask_are_image_level_only(tmp_path):
    root = make_visa(tmp_path, objects=("capsules",))
    rows = [re.sub(r",[^,]*\.png$", ",", row) for row in _rows(root)]
    _write_csv(root, rows)
    test = load_visa(root, "test")
    assert test.labels.tolist() == [0, 0, 1, 1]
    assert test.mask_paths == [None] * 4


def test_a_normal_row_with_an_all_zero_mask_is_accepted(tmp_path):
    root = make_visa(tmp_path, objects=("fryum",))
    _mask(root / "fryum/Data/Masks/Normal/0003.png", defect=False)
    rows = _rows(root)
    rows[4] = rows[4] + "fryum/Data/Masks/Normal/0003.png"
    _write_csv(root, rows)
    assert load_visa(root, "test").mask_paths[0] is None


def test_a_custom_split_file(tmp_path):
    root = make_visa(tmp_path)
    moved = tmp_path / "elsewhere.csv"
    (root / "split_csv" / "1cls.csv").rename(moved)
    assert len(load_visa(root, "test", split_file=moved)) == 8
    with pytest.raises(FileNotFoundError, match=re.escape(str(root / "split_csv" / "1cls.csv"))):
        load_visa(root)


# ----------------------------------------------------------------------------- bad input


def _error(root: Path, exc=ValueError, split="test", **kwargs) -> str:
    with pytest.raises(exc) as info:
        load_visa(root, split, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_malformed_line_gives_file_and_line(tmp_path):
    root = make_visa(tmp_path)
    rows = _rows(root)
    rows[3] = "candle,train,normal"
    _write_csv(root, rows)
    message = _error(root)
    assert "1cls.csv line 4: expected 5 fields" in message and "got 3" in message

    rows[3] = 'candle,train,normal,"candle/Data/Images/Normal/0002.JPG"x,'
    _write_csv(root, rows)
    assert "1cls.csv line 4: malformed CSV" in _error(root)


@pytest.mark.parametrize(
    "field, value, message",
    [(1, "val", "split must be 'train' or 'test', got 'val'"), (2, "ok", "label must be")],
)
def test_bad_split_or_label_value_names_the_line(tmp_path, field, value, message):
    root = make_visa(tmp_path)
    rows = _rows(root)
    cells = rows[5].split(",")
    cells[field] = value
    rows[5] = ",".join(cells)
    _write_csv(root, rows)
    text = _error(root)
    assert "line 6" in text and message in text


def test_unknown_and_missing_columns(tmp_path):
    root = make_visa(tmp_path)
    rows = _rows(root)
    _write_csv(root, [HEADER + ",color"] + [r + ",red" for r in rows[1:]])
    assert "line 1: unknown columns ['color']" in _error(root)
    _write_csv(root, ["object,split,label,image"] + [r.rsplit(",", 1)[0] for r in rows[1:]])
    assert "missing columns ['mask']" in _error(root)
    (root / "split_csv" / "1cls.csv").write_text("")
    assert "is empty" in _error(root)


def test_missing_image_and_mask_files_are_named(tmp_path):
    root = make_visa(tmp_path)
    (root / "pcb1/Data/Images/Anomaly/001.JPG").unlink()
    (root / "candle/Data/Masks/Anomaly/000.png").unlink()
    message = _error(root, FileNotFoundError)
    assert "2 file(s) listed in" in message
    assert "pcb1/Data/Images/Anomaly/001.JPG (line 15)" in message
    assert "candle/Data/Masks/Anomaly/000.png (line 7)" in message
    assert len(load_visa(root, "train")) == 6  # the training rows are fine


def test_mask_of_another_size_is_refused(tmp_path):
    root = make_visa(tmp_path)
    _mask(root / "pcb1/Data/Masks/Anomaly/000.png", size=(24, 20))
    message = _error(root)
    assert "line 14: mask" in message and "is 24 x 20 pixels but its image" in message


def test_normal_label_with_a_defective_mask_is_refused(tmp_path):
    root = make_visa(tmp_path, objects=("pipe_fryum",))
    rows = _rows(root)
    rows[4] = rows[4] + "pipe_fryum/Data/Masks/Anomaly/000.png"
    _write_csv(root, rows)
    message = _error(root)
    assert "line 5: the label says normal but the mask" in message


def test_anomalous_training_image_is_refused(tmp_path):
    root = make_visa(tmp_path, objects=("macaroni1",))
    rows = _rows(root)
    rows[-1] = rows[-1].replace(",test,", ",train,")
    _write_csv(root, rows)
    message = _error(root, split="train")
    assert "normal images only" in message and "001.JPG (line 8)" in message


def test_unknown_category_and_empty_split(tmp_path):
    root = make_visa(tmp_path)
    message = _error(root, categories=["candle", "cashew"])
    assert "['cashew'] not found" in message and "available: candle, pcb1" in message
    rows = [r for r in _rows(root) if not (r.startswith("pcb1") and ",test," in r)]
    _write_csv(root, rows)
    assert "lists no test images for categories ['pcb1']" in _error(root, categories="pcb1")
    _write_csv(root, [HEADER])
    assert "lists no test images" in _error(root)


def test_unknown_split_argument(tmp_path):
    with pytest.raises(ValueError, match="split must be"):
        load_visa(make_visa(tmp_path), "validation")
