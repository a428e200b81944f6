"""What every reader shares: the data set type, image and mask files, and argument checks.

The format readers (:mod:`~skuniad.datasets.mvtec`, :mod:`~skuniad.datasets.visa`,
:mod:`~skuniad.datasets.uniad_json`) and their checks import from here, never
from each other.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from skuniad.errors import InputTypeError

__all__ = [
    "IMAGE_EXTENSIONS",
    "MASK_EXTENSIONS",
    "AnomalyDataset",
    "category_names",
    "check_root",
    "load_image",
    "load_mask",
    "resize_mask",
]

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
"""File extensions (lower case) recognised as images."""

MASK_EXTENSIONS: tuple[str, ...] = (".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff")
"""Mask extensions tried, in order, for ``<stem>_mask<ext>`` and then ``<stem><ext>``."""


@dataclass(frozen=True, eq=False)
class AnomalyDataset:
    """One split of one or more categories of an anomaly detection data set.

    All list attributes are aligned: entry ``i`` of each describes image ``i``.

    Parameters
    ----------
    paths : list of Path
        Image files.
    labels : numpy.ndarray of int64, shape (n_images,)
        ``1`` for anomalous images, ``0`` for normal ones.
    defect_types : list of str
        Name of the defect folder of each image; ``"good"`` for normal images.
    categories : list of str
        Category (object or texture class) of each image.
    mask_paths : list of Path or None
        Ground-truth mask of each image; ``None`` for normal images and for
        anomalous images without a mask (image-level labels only).
    """

    paths: list[Path]
    labels: np.ndarray
    defect_types: list[str]
    categories: list[str]
    mask_paths: list[Path | None]

    def __post_init__(self) -> None:
        paths = [Path(p) for p in self.paths]
        labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        defect_types = [str(d) for d in self.defect_types]
        categories = [str(c) for c in self.categories]
        mask_paths = [None if m is None else Path(m) for m in self.mask_paths]
        lengths = {
            "paths": len(paths),
            "labels": len(labels),
            "defect_types": len(defect_types),
            "categories": len(categories),
            "mask_paths": len(mask_paths),
        }
        if len(set(lengths.values())) != 1:
            raise ValueError(f"AnomalyDataset fields must have equal lengths, got {lengths}")
        if labels.size and not np.isin(labels, (0, 1)).all():
            raise ValueError("AnomalyDataset labels must be 0 (normal) or 1 (anomalous)")
        object.__setattr__(self, "paths", paths)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "defect_types", defect_types)
        object.__setattr__(self, "categories", categories)
        object.__setattr__(self, "mask_paths", mask_paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __repr__(self) -> str:
        return (
            f"AnomalyDataset(n_images={len(self)}, n_anomalous={int(self.labels.sum())}, "
            f"categories={self.category_names})"
        )

    @property
    def category_names(self) -> list[str]:
        """Distinct categories, in order of first appearance."""
        return list(dict.fromkeys(self.categories))

    def select(self, indices: Sequence[int] | Sequence[bool] | np.ndarray) -> AnomalyDataset:
        """Return the images picked by integer indices or a boolean mask.

        Parameters
        ----------
        indices : array-like of int or bool
            Integer positions, or a boolean mask of length ``len(self)``.

        Returns
        -------
        AnomalyDataset
            A new data set with the selected images, in the given order.
        """
        idx = np.asarray(indices)
        if idx.dtype == bool:
            if idx.shape != (len(self),):
                raise ValueError(
                    f"boolean selection must have shape ({len(self)},), got {idx.shape}"
                )
            idx = np.flatnonzero(idx)
        elif idx.size == 0:
            idx = idx.astype(np.int64)
        elif not np.issubdtype(idx.dtype, np.integer):
            raise InputTypeError(f"indices must be integers or booleans, got dtype {idx.dtype}")
        idx = idx.reshape(-1)
        positions = [int(i) for i in idx]
        return AnomalyDataset(
            paths=[self.paths[i] for i in positions],
            labels=self.labels[idx],
            defect_types=[self.defect_types[i] for i in positions],
            categories=[self.categories[i] for i in positions],
            mask_paths=[self.mask_paths[i] for i in positions],
        )

    def subset(self, category: str) -> AnomalyDataset:
        """Return the images of one category.

        Parameters
        ----------
        category : str
            A category present in this data set.

        Returns
        -------
        AnomalyDataset
            The images of ``category``, in their original order.
        """
        if category not in self.categories:
            raise ValueError(
                f"category {category!r} is not in this data set; "
                f"available: {', '.join(self.category_names)}"
            )
        return self.select(np.array([c == category for c in self.categories], dtype=bool))


def check_root(root: str | os.PathLike[str]) -> Path:
    """A data set root as a Path (``~`` expanded), refused unless it is an existing folder."""
    path = Path(root).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"dataset root does not exist: {path}")
    if not path.is_dir():
        raise ValueError(f"dataset root is not a directory: {path}")
    return path


def category_names(categories: str | Sequence[str]) -> list[str]:
    """One name or several as a list without repeats; at least one is required."""
    names = [categories] if isinstance(categories, str) else [str(c) for c in categories]
    names = list(dict.fromkeys(names))
    if not names:
        raise ValueError("categories must name at least one category")
    return names


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    if len(size) != 2 or any(int(s) != s or int(s) < 1 for s in size):
        raise ValueError(f"size must be (height, width) with positive integers, got {size!r}")
    return int(size[0]), int(size[1])


def load_image(path: str | os.PathLike[str], size: tuple[int, int] | None = None) -> np.ndarray:
    """Read an image as 8-bit RGB, the pixels the model reads.

    The file is decoded by :func:`skuniad.io.read_image` into what the
    detector's default ``resize="pil-uint8"`` resizes, so an overlay shows the
    image the model saw: 16-bit images are rescaled to 8 bits (not clipped),
    grayscale, palette and RGBA images become RGB.

    Parameters
    ----------
    path : str or path-like
        Image file.
    size : tuple of int (height, width), optional
        Resize to this size with Pillow's bilinear filter (as the model's
        square input is resized). Default: keep the size.

    Returns
    -------
    numpy.ndarray of uint8, shape (height, width, 3)

    Raises
    ------
    ValueError
        If the file is missing, unreadable or smaller than the model accepts
        (:data:`skuniad.io.MIN_IMAGE_SIDE` pixels a side).
    """
    # here, not at the top: skuniad.io imports torch, and reading data set lists needs none
    from skuniad.io import ImageLoadError, read_image

    try:
        rgb, _ = read_image(path, 0, as_uint8=True)
    except ImageLoadError as exc:
        raise ValueError(exc.reason) from None
    if size is not None:
        height, width = _check_size(size)
        if rgb.shape[:2] != (height, width):
            rgb = Image.fromarray(np.ascontiguousarray(rgb)).resize(
                (width, height), Image.Resampling.BILINEAR
            )
    return np.array(rgb, dtype=np.uint8)  # a writable copy


def load_mask(
    path: str | os.PathLike[str] | None, size: tuple[int, int] | None = None
) -> np.ndarray:
    """Read a ground-truth mask as a boolean array.

    Parameters
    ----------
    path : str, path-like or None
        Mask image; any non-zero pixel is anomalous. ``None`` (a normal image) gives an
        all-False mask of shape ``size``.
    size : tuple of int (height, width), optional
        Resize to this size with nearest-neighbour interpolation. Required when
        ``path`` is None; default otherwise: keep the file's size.

    Returns
    -------
    numpy.ndarray of bool, shape (height, width)
    """
    if path is None:
        if size is None:
            raise ValueError("size is required when path is None")
        return np.zeros(_check_size(size), dtype=bool)
    try:
        img = Image.open(path)
    except Image.DecompressionBombError as exc:
        raise ValueError(f"cannot read mask {path}: {exc}") from None
    with img:
        if img.mode in ("RGBA", "LA", "PA"):
            img = img.convert("RGB")
        if img.mode in ("P", "CMYK", "YCbCr", "HSV", "LAB"):
            img = img.convert("RGB")
        arr = np.asarray(img)
    binary = arr != 0
    if binary.ndim == 3:
        binary = binary.any(axis=-1)
    if size is not None:
        binary = resize_mask(binary, _check_size(size))
    return np.ascontiguousarray(binary, dtype=bool)


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A boolean mask at ``size`` ``(height, width)``, by nearest neighbour; as is if it fits."""
    height, width = size
    if mask.shape == (height, width):
        return mask
    resized = Image.fromarray(mask.astype(np.uint8) * 255).resize(
        (width, height), Image.Resampling.NEAREST
    )
    return np.asarray(resized) > 0
