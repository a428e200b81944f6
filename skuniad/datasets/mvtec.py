"""Reader for the MVTec AD folder layout and MVTec-like data sets.

The expected layout is::

    ROOT/CATEGORY/train/good/*.png              normal training images
    ROOT/CATEGORY/test/good/*.png               normal test images
    ROOT/CATEGORY/test/<defect_type>/*.png      anomalous test images
    ROOT/CATEGORY/ground_truth/<defect_type>/<stem>_mask.png

BTAD, MPDD, the MVTec 3D-AD RGB subsets and similar data sets use the same
layout, sometimes with other image extensions (``.bmp``, ``.jpg``, ``.tif``), with
masks named ``<stem>.png`` instead of ``<stem>_mask.png``, or with extra folders
(``validation/``) and files (``license.txt``) that are ignored unless asked for.
``ROOT`` may also be a single category folder (one that has ``train/`` or ``test/``
directly), which is then read as one category named after the folder.

A category without ``ground_truth/`` has image-level labels only: its anomalous
images get no mask, and it is evaluated at image level.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from skuniad.datasets._base import (
    IMAGE_EXTENSIONS,
    MASK_EXTENSIONS,
    AnomalyDataset,
    category_names,
    check_root,
)
from skuniad.datasets._checks import check_mask_sizes

__all__ = ["list_categories", "load_mvtec"]

_NORMAL = "good"
_SPLITS = ("train", "test")


def _is_image(path: Path) -> bool:
    return (
        path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".") and path.is_file()
    )


def _image_files(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name; empty if it is missing."""
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if _is_image(p)), key=lambda p: p.name)


def _subdirs(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(
        (p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: p.name,
    )


def _is_category_dir(folder: Path) -> bool:
    return (folder / "train" / _NORMAL).is_dir() or (folder / "test").is_dir()


def _category_dirs(root: Path) -> dict[str, Path]:
    """Map category names to folders; ``root`` itself may be a single category."""
    if (root / "train").is_dir() or (root / "test").is_dir():
        return {root.resolve().name: root}
    return {d.name: d for d in _subdirs(root) if _is_category_dir(d)}


def list_categories(root: str | os.PathLike[str]) -> list[str]:
    """List the categories of an MVTec-style data set.

    Parameters
    ----------
    root : str or path-like
        Data set root holding one folder per category, or a single category folder.

    Returns
    -------
    list of str
        Sorted names of the sub-folders that have ``train/good`` or ``test``; when
        ``root`` itself has ``train/`` or ``test/``, its own name. Empty when none.

    Raises
    ------
    FileNotFoundError
        If ``root`` does not exist.
    ValueError
        If ``root`` is not a directory.
    """
    return sorted(_category_dirs(check_root(root)))


def _mask_names(image: Path) -> list[str]:
    stem = image.stem
    return [f"{stem}_mask{ext}" for ext in MASK_EXTENSIONS] + [
        f"{stem}{ext}" for ext in MASK_EXTENSIONS
    ]


def _find_mask(image: Path, gt_index: dict[str, Path]) -> Path | None:
    for name in _mask_names(image):
        found = gt_index.get(name.lower())
        if found is not None:
            return found
    return None


def _read_train(name: str, folder: Path, include_validation: bool) -> list[tuple[Path, str]]:
    good_dir = folder / "train" / _NORMAL
    files = _image_files(good_dir)
    if not files:
        raise FileNotFoundError(
            f"category {name!r} has no training images: no image files in {good_dir}"
        )
    if include_validation:
        files = files + _image_files(folder / "validation" / _NORMAL)
    return [(f, _NORMAL) for f in files]


def _read_test(name: str, folder: Path) -> list[tuple[Path, str]]:
    test_dir = folder / "test"
    defect_dirs = _subdirs(test_dir)
    # "good" first, then the defect types in name order.
    defect_dirs.sort(key=lambda d: (d.name != _NORMAL, d.name))
    items = [(f, d.name) for d in defect_dirs for f in _image_files(d)]
    if not items:
        raise FileNotFoundError(
            f"category {name!r} has no test images: no image files in sub-folders of {test_dir}"
        )
    return items


def load_mvtec(
    root: str | os.PathLike[str],
    split: str = "train",
    categories: str | Sequence[str] | None = None,
    include_validation: bool = False,
) -> AnomalyDataset:
    """Read one split of an MVTec-style data set.

    Parameters
    ----------
    root : str or path-like
        Data set root holding one folder per category, or a single category folder
        (one with ``train/`` or ``test/`` directly).
    split : {"train", "test"}, default="train"
        ``"train"`` reads ``CATEGORY/train/good``; ``"test"`` reads every
        ``CATEGORY/test/<defect_type>`` folder (``good`` first, then by name) and pairs
        each anomalous image with its mask in ``CATEGORY/ground_truth/<defect_type>``
        (``None`` when there is none, e.g. in a category without ``ground_truth/``).
    categories : str or sequence of str, optional
        Categories to read, in this order. Default: all, sorted by name.
    include_validation : bool, default=False
        With ``split="train"``, also add the images of ``CATEGORY/validation/good``
        after the training images. Ignored for ``split="test"``.

    Returns
    -------
    AnomalyDataset
        The images, grouped by category; files within a folder sorted by name.

    Raises
    ------
    FileNotFoundError
        If ``root`` does not exist, a requested category has no images for the split,
        or a category has ``ground_truth/`` but no mask for any of its anomalous images
        (``<stem>_mask<ext>`` is tried first, then ``<stem><ext>``, for the extensions
        in :data:`MASK_EXTENSIONS`).
    ValueError
        If ``split`` is unknown, ``root`` is not a directory or holds no category with
        ``train/good`` or ``test/``, a requested category is not present, or a mask's
        size differs from its image's.
    """
    if split not in _SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root_path = check_root(root)
    available = _category_dirs(root_path)
    if not available:
        raise ValueError(
            f"{root_path} is not an MVTec-style data set: no category folder with "
            "train/good or test/ found"
        )
    if categories is None:
        wanted = sorted(available)
    else:
        wanted = category_names(categories)
        missing = [c for c in wanted if c not in available]
        if missing:
            raise ValueError(
                f"categories {missing} not found in {root_path}; "
                f"available: {', '.join(sorted(available))}"
            )

    paths: list[Path] = []
    labels: list[int] = []
    defect_types: list[str] = []
    cats: list[str] = []
    mask_paths: list[Path | None] = []
    for name in wanted:
        folder = available[name]
        if split == "train":
            items = _read_train(name, folder, include_validation)
        else:
            items = _read_test(name, folder)
        gt_indexes: dict[str, dict[str, Path]] = {}
        found, unmatched = 0, None
        for path, defect in items:
            mask: Path | None = None
            if defect != _NORMAL:
                gt_dir = folder / "ground_truth" / defect
                if defect not in gt_indexes:
                    gt_indexes[defect] = {
                        p.name.lower(): p
                        for p in _image_files(gt_dir)
                        if p.suffix.lower() in MASK_EXTENSIONS
                    }
                mask = _find_mask(path, gt_indexes[defect])
                found += mask is not None
                if mask is None and unmatched is None:
                    unmatched = (path, gt_dir)
            paths.append(path)
            labels.append(0 if defect == _NORMAL else 1)
            defect_types.append(defect)
            cats.append(name)
            mask_paths.append(mask)
        if unmatched is not None and found == 0 and (folder / "ground_truth").is_dir():
            # ground_truth/ is there but no name matched: a naming problem, not an
            # image-level-only category.
            image, gt_dir = unmatched
            tried = ", ".join(str(gt_dir / n) for n in _mask_names(image))
            raise FileNotFoundError(
                f"category {name!r} has ground_truth/ but no mask for any anomalous image; "
                f"for {image} tried: {tried}"
            )
    check_mask_sizes(paths, mask_paths)
    return AnomalyDataset(
        paths=paths,
        labels=np.asarray(labels, dtype=np.int64),
        defect_types=defect_types,
        categories=cats,
        mask_paths=mask_paths,
    )
