"""Checks shared by the readers: every bad entry is reported before any training starts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from skuniad.datasets._base import AnomalyDataset, category_names

# Problems listed in one error message before "and N more".
_MAX_LISTED = 5


def listing(items: Sequence[str]) -> str:
    """``a, b, c`` or ``a, b, c, d, e and 7 more``: bounded, still one line."""
    shown = ", ".join(items[:_MAX_LISTED])
    extra = len(items) - _MAX_LISTED
    return f"{shown} and {extra} more" if extra > 0 else shown


def image_size(path: Path, what: str = "image") -> tuple[int, int]:
    """``(width, height)`` from the file header, without decoding the pixels."""
    try:
        with Image.open(path) as img:
            return img.size
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise ValueError(f"cannot read {what} {path}: {exc}") from None


def check_mask_sizes(
    paths: Sequence[Path], mask_paths: Sequence[Path | None], places: Sequence[str] | None = None
) -> None:
    """Every mask has its image's size (masks are compared pixel by pixel with the maps).

    ``places`` (one per image, e.g. ``"test.json line 4: "``) prefixes the message.
    """
    for i, (path, mask) in enumerate(zip(paths, mask_paths, strict=True)):
        if mask is None:
            continue
        image_wh = image_size(path)
        mask_wh = image_size(mask, "mask")
        if image_wh != mask_wh:
            place = places[i] if places is not None else ""
            raise ValueError(
                f"{place}mask {mask} is {mask_wh[0]} x {mask_wh[1]} pixels but its image "
                f"{path} is {image_wh[0]} x {image_wh[1]}"
            )


def mask_has_defect(path: Path) -> bool:
    """Whether any pixel of the mask file is non-zero (= defective)."""
    try:
        with Image.open(path) as img:
            return bool(np.asarray(img).any())
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise ValueError(f"cannot read mask {path}: {exc}") from None


def check_files_exist(files: Sequence[tuple[Path, str]], listed_in: Path) -> None:
    """Raise FileNotFoundError naming the files (with where they are listed) that do not exist.

    ``files`` holds ``(path, place)`` pairs, the place being e.g. ``"line 4"``.
    """
    missing = [f"{path} ({place})" for path, place in files if not path.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} file(s) listed in {listed_in} do not exist: {listing(missing)}"
        )


def choose_categories(
    available: Sequence[str], categories: str | Sequence[str] | None, source: Path
) -> list[str]:
    """The requested categories (in the requested order), or all in order of appearance."""
    if categories is None:
        return list(dict.fromkeys(available))
    wanted = category_names(categories)
    unknown = [c for c in wanted if c not in available]
    if unknown:
        raise ValueError(
            f"categories {unknown} not found in {source}; "
            f"available: {', '.join(dict.fromkeys(available)) or 'none'}"
        )
    return wanted


@dataclass(slots=True)
class Record:
    """One image of a list file, with the place it was read from (for messages)."""

    path: Path
    label: int
    defect_type: str
    category: str
    mask: Path | None
    place: str  # e.g. "line 4"


def build_dataset(
    records: Sequence[Record],
    split: str,
    categories: str | Sequence[str] | None,
    source: Path,
    known: Sequence[str] | None = None,
) -> AnomalyDataset:
    """Check a list's records and turn them into an AnomalyDataset, grouped by category.

    ``known`` lists the categories of the whole file (all splits), when it has
    others than ``records``. Raises for unknown or empty categories, files that
    do not exist, anomalous training images, normal images whose mask marks
    defective pixels and masks whose size differs from their image's.
    """
    if not records:
        raise ValueError(f"{source} lists no {split} images")
    present = [r.category for r in records]
    wanted = choose_categories([*present, *(known or ())], categories, source)
    by_category: dict[str, list[Record]] = {name: [] for name in wanted}
    for record in records:
        if record.category in by_category:
            by_category[record.category].append(record)
    empty = [name for name, items in by_category.items() if not items]
    if empty:
        raise ValueError(f"{source} lists no {split} images for categories {empty}")
    chosen = [r for items in by_category.values() for r in items]
    if split == "train":
        anomalous = [f"{r.path.name} ({r.place})" for r in chosen if r.label == 1]
        if anomalous:
            raise ValueError(
                f"{source}: the training split must hold normal images only (UniAD learns what "
                f"is normal from them), but {len(anomalous)} are anomalous: {listing(anomalous)}"
            )
    files = [(r.path, r.place) for r in chosen]
    files += [(r.mask, r.place) for r in chosen if r.mask is not None]
    check_files_exist(files, source)
    for r in chosen:
        if r.label == 0 and r.mask is not None:
            if mask_has_defect(r.mask):
                raise ValueError(
                    f"{source} {r.place}: the label says normal but the mask {r.mask} marks "
                    "defective pixels"
                )
            r.mask = None  # an all-zero mask says nothing a normal label does not
    check_mask_sizes(
        [r.path for r in chosen],
        [r.mask for r in chosen],
        [f"{source} {r.place}: " for r in chosen],
    )
    return AnomalyDataset(
        paths=[r.path for r in chosen],
        labels=np.array([r.label for r in chosen], dtype=np.int64),
        defect_types=[r.defect_type for r in chosen],
        categories=[r.category for r in chosen],
        mask_paths=[r.mask for r in chosen],
    )
