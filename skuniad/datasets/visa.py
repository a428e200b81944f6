"""Reader for VisA (Visual Anomaly data set, Zou et al., ECCV 2022) and sets in its format.

VisA describes its splits in a CSV file instead of folders. The expected layout::

    ROOT/split_csv/1cls.csv                     the split file (one-class setting)
    ROOT/<object>/Data/Images/Normal/*.JPG      paths as the split file lists them
    ROOT/<object>/Data/Images/Anomaly/*.JPG
    ROOT/<object>/Data/Masks/Anomaly/*.png

The split file has the header ``object,split,label,image,mask``: ``split`` is
``train`` or ``test``, ``label`` is ``normal`` or ``anomaly``, ``image`` and
``mask`` are paths relative to ``ROOT``, and ``mask`` is empty for normal images.
A mask is a PNG where any non-zero pixel is defective. Anomalous test images
without a mask are allowed: such a category is evaluated at image level only.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from skuniad.datasets._base import AnomalyDataset, check_root
from skuniad.datasets._checks import Record, build_dataset

__all__ = ["VISA_COLUMNS", "VISA_SPLIT_FILE", "load_visa"]

VISA_COLUMNS: tuple[str, ...] = ("object", "split", "label", "image", "mask")
"""Columns of VisA's split file, all required."""

VISA_SPLIT_FILE = Path("split_csv") / "1cls.csv"
"""Where the split file lies, relative to the data set root."""

_LABELS = {"normal": 0, "anomaly": 1}
_SPLITS = ("train", "test")


def _read_header(reader: Iterator[list[str]], source: Path) -> list[str]:
    try:
        header = next(reader)
    except StopIteration:
        raise ValueError(
            f"{source} is empty; expected the header {','.join(VISA_COLUMNS)}"
        ) from None
    names = [h.strip().lower() for h in header]
    unknown = [h for h in names if h not in VISA_COLUMNS]
    missing = [c for c in VISA_COLUMNS if c not in names]
    if unknown or missing or len(set(names)) != len(names):
        problems = []
        if unknown:
            problems.append(f"unknown columns {unknown}")
        if missing:
            problems.append(f"missing columns {missing}")
        if not problems:
            problems.append("repeated columns")
        raise ValueError(
            f"{source} line 1: {' and '.join(problems)}; the header must be "
            f"{','.join(VISA_COLUMNS)}"
        )
    return names


def _read_split_file(root: Path, source: Path, split: str) -> tuple[list[Record], list[str]]:
    """The rows of ``split`` and the objects of all rows (every row is checked)."""
    records: list[Record] = []
    objects: list[str] = []
    try:
        with open(source, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle, strict=True)
            names = _read_header(reader, source)
            while True:
                try:
                    row = next(reader)
                except StopIteration:
                    break
                except csv.Error as exc:
                    raise ValueError(
                        f"{source} line {reader.line_num}: malformed CSV: {exc}"
                    ) from None
                place = f"line {reader.line_num}"
                if not row or not any(cell.strip() for cell in row):
                    continue
                if len(row) != len(names):
                    raise ValueError(
                        f"{source} {place}: expected {len(names)} fields "
                        f"({','.join(names)}), got {len(row)}"
                    )
                entry = {name: cell.strip() for name, cell in zip(names, row, strict=True)}
                if entry["split"] not in _SPLITS:
                    raise ValueError(
                        f"{source} {place}: split must be 'train' or 'test', got {entry['split']!r}"
                    )
                if entry["label"] not in _LABELS:
                    raise ValueError(
                        f"{source} {place}: label must be 'normal' or 'anomaly', "
                        f"got {entry['label']!r}"
                    )
                if not entry["object"] or not entry["image"]:
                    raise ValueError(f"{source} {place}: the object and image fields are required")
                objects.append(entry["object"])
                if entry["split"] != split:
                    continue
                label = _LABELS[entry["label"]]
                records.append(
                    Record(
                        path=root / entry["image"],
                        label=label,
                        defect_type="good" if label == 0 else entry["label"],
                        category=entry["object"],
                        mask=root / entry["mask"] if entry["mask"] else None,
                        place=place,
                    )
                )
    except UnicodeDecodeError as exc:
        raise ValueError(f"{source} is not a UTF-8 text file: {exc}") from None
    return records, objects


def load_visa(
    root: str | os.PathLike[str],
    split: str = "train",
    categories: str | Sequence[str] | None = None,
    split_file: str | os.PathLike[str] | None = None,
) -> AnomalyDataset:
    """Read one split of VisA, or of a data set described by a split file in its format.

    Parameters
    ----------
    root : str or path-like
        Data set root; the split file's ``image`` and ``mask`` paths are relative to it.
    split : {"train", "test"}, default="train"
        The rows to read. The training split must hold normal images only.
    categories : str or sequence of str, optional
        Objects to read, in this order. Default: all, in order of first appearance
        in the split file.
    split_file : str or path-like, optional
        The CSV file. Default: ``root/split_csv/1cls.csv``.

    Returns
    -------
    AnomalyDataset
        The images grouped by object, in split-file order within an object. Defect
        types are ``"good"`` for normal images and ``"anomaly"`` otherwise (VisA
        does not name its defect types); anomalous images listed without a mask
        get ``None``.

    Raises
    ------
    FileNotFoundError
        If ``root``, the split file, or an image or mask it lists does not exist.
    ValueError
        If the split file is malformed (the message gives the line), has columns
        other than ``object,split,label,image,mask``, lists an anomalous training
        image, a normal image whose mask marks defective pixels or a mask whose size
        differs from its image's; if ``split`` is unknown, a requested object is
        not in the file, or the split is empty.
    """
    if split not in _SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root_path = check_root(root)
    source = root_path / VISA_SPLIT_FILE if split_file is None else Path(split_file).expanduser()
    if not source.is_file():
        raise FileNotFoundError(
            f"VisA split file not found: {source} (expected columns {','.join(VISA_COLUMNS)})"
        )
    records, objects = _read_split_file(root_path, source, split)
    return build_dataset(records, split, categories, source, known=objects)
