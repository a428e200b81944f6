"""The UniAD authors' data lists: one JSON object per line, read and written.

The reference implementation (and many projects built on it) describes each
split by a text file with one JSON object per line::

    {"filename": "bottle/train/good/000.png", "label": 0, "label_name": "good", "clsname": "bottle"}
    {"filename": "bottle/test/broken_large/000.png", "label": 1, "label_name": "defective",
     "maskname": "bottle/ground_truth/broken_large/000_mask.png", "clsname": "bottle"}

(the second object on one line in the file). ``filename`` and ``maskname`` are
relative to an image folder given separately; ``label`` is 0 (normal) or 1
(anomalous); ``clsname`` is the category; ``label_name`` is free text (the
authors write ``"good"`` and ``"defective"``; skuniad writes the defect type).
``maskname`` is given for anomalous test images; an anomalous image without one
has no ground truth, and a category whose anomalous images all lack it is
evaluated at image level only (the reference code would invent a full mask).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from skuniad.datasets._base import AnomalyDataset, check_root
from skuniad.datasets._checks import Record, build_dataset

__all__ = ["UNIAD_JSON_KEYS", "load_uniad_json", "write_uniad_json"]

UNIAD_JSON_KEYS: tuple[str, ...] = ("filename", "label", "label_name", "maskname", "clsname")
"""Keys a line may hold; ``filename``, ``label`` and ``clsname`` are required."""

_REQUIRED = ("filename", "label", "clsname")
_SPLITS = ("train", "test")


def _text(entry: dict, key: str, where: str, required: bool) -> str | None:
    value = entry.get(key)
    if value is None or value == "":
        if required:
            raise ValueError(f"{where}: {key!r} must be a non-empty string")
        return None
    if not isinstance(value, str):
        raise ValueError(f"{where}: {key!r} must be a string, got {value!r}")
    return value


def _parse_line(line: str, root: Path, where: str, place: str) -> Record:
    try:
        entry = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(entry).__name__}")
    unknown = sorted(set(entry) - set(UNIAD_JSON_KEYS))
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; allowed: {', '.join(UNIAD_JSON_KEYS)}")
    missing = [key for key in _REQUIRED if key not in entry]
    if missing:
        raise ValueError(f"{where}: missing keys {missing}")
    label = entry["label"]
    if isinstance(label, bool) or label not in (0, 1):
        raise ValueError(f"{where}: 'label' must be 0 (normal) or 1 (anomalous), got {label!r}")
    filename = _text(entry, "filename", where, required=True)
    category = _text(entry, "clsname", where, required=True)
    label_name = _text(entry, "label_name", where, required=False)
    maskname = _text(entry, "maskname", where, required=False)
    return Record(
        path=root / filename,
        label=int(label),
        defect_type="good" if label == 0 else (label_name or "defective"),
        category=category,
        mask=None if maskname is None else root / maskname,
        place=place,
    )


def load_uniad_json(
    root: str | os.PathLike[str],
    meta_file: str | os.PathLike[str],
    split: str = "train",
    categories: str | Sequence[str] | None = None,
) -> AnomalyDataset:
    """Read a data list in the UniAD authors' format (one JSON object per line).

    Parameters
    ----------
    root : str or path-like
        Image folder: ``filename`` and ``maskname`` are relative to it (the
        reference's ``image_reader.kwargs.image_dir``).
    meta_file : str or path-like
        The list, e.g. the authors' ``train.json`` or ``test.json``.
    split : {"train", "test"}, default="train"
        What the list is for: a training list must hold normal images only.
    categories : str or sequence of str, optional
        Categories (``clsname``) to read, in this order. Default: all, in order
        of first appearance in the list.

    Returns
    -------
    AnomalyDataset
        The images grouped by category, in list order within a category. Defect
        types are ``"good"`` for normal images, else ``label_name`` (or
        ``"defective"`` without one); anomalous images without ``maskname`` get
        ``None`` as mask.

    Raises
    ------
    FileNotFoundError
        If ``root``, ``meta_file``, or an image or mask it lists does not exist.
    ValueError
        If a line is not a JSON object (the message gives file and line), has
        unknown or missing keys or a label other than 0/1; if the training list
        holds anomalous images, a normal image's mask marks defective pixels, a
        mask's size differs from its image's, a requested category is absent, or
        the list holds no images.

    See Also
    --------
    write_uniad_json : the other direction.
    """
    if split not in _SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root_path = check_root(root)
    source = Path(meta_file).expanduser()
    if not source.is_file():
        raise FileNotFoundError(f"data list not found: {source}")
    records = []
    try:
        with open(source, encoding="utf-8-sig") as handle:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    place = f"line {number}"
                    records.append(_parse_line(line, root_path, f"{source} {place}", place))
    except UnicodeDecodeError as exc:
        raise ValueError(f"{source} is not a UTF-8 text file: {exc}") from None
    return build_dataset(records, split, categories, source)


def _relative(path: Path, root: Path) -> str:
    for candidate, base in ((path, root), (path.resolve(), root.resolve())):
        try:
            return candidate.relative_to(base).as_posix()
        except ValueError:
            continue
    raise ValueError(f"{path} is not inside {root}; list entries are relative to that folder")


def write_uniad_json(
    dataset: AnomalyDataset, path: str | os.PathLike[str], root: str | os.PathLike[str]
) -> Path:
    """Write a data set as a list in the UniAD authors' format, one JSON object per line.

    The lines follow the data set's order, so reading the list back with
    :func:`load_uniad_json` gives the same images in the same order. The file is
    written to a temporary name first and renamed: it is never left half-written.

    Parameters
    ----------
    dataset : AnomalyDataset
        Any split skuniad reads, e.g. ``load_mvtec(root, "test")``.
    path : str or path-like
        File to write (its folder is created).
    root : str or path-like
        Image folder the entries are relative to; every image and mask must be
        inside it.

    Returns
    -------
    Path
        ``path``.
    """
    root_path = Path(root).expanduser()
    lines = []
    for image, label, defect, category, mask in zip(
        dataset.paths,
        dataset.labels,
        dataset.defect_types,
        dataset.categories,
        dataset.mask_paths,
        strict=True,
    ):
        entry: dict[str, str | int] = {
            "filename": _relative(image, root_path),
            "label": int(label),
            "label_name": defect,
        }
        if mask is not None:
            entry["maskname"] = _relative(mask, root_path)
        entry["clsname"] = category
        lines.append(json.dumps(entry, ensure_ascii=False) + "\n")
    target = Path(path).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        partial.write_text("".join(lines), encoding="utf-8")
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target
