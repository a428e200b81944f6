"""Images in plain folders: find them, and name each one's category after a folder.

For images that come in no data set format: a folder of normal images to fit
on, or a tree of images to score. Folders are searched recursively, in name
order; hidden files and folders (a name starting with ``.``) are skipped.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Iterable, Sequence
from pathlib import Path

from skuniad.datasets._base import IMAGE_EXTENSIONS
from skuniad.errors import SkuniadError

__all__ = [
    "DuplicateFolderNameError",
    "find_images",
    "find_masks",
    "folder_categories",
    "images_and_categories",
    "labelled_images",
    "layout_categories",
]

_MASK_FOLDER = "ground_truth"


class DuplicateFolderNameError(SkuniadError, ValueError):
    """Two folders that would each be one category have the same name.

    ``first`` and ``second`` are the folders, ``name`` the name they share.
    """

    def __init__(self, first: Path, second: Path, name: str) -> None:
        super().__init__(
            f"{first} and {second} are both named {name!r}: each folder is one category "
            "named after it, so the names must differ"
        )
        self.first = first
        self.second = second
        self.name = name


def _is_found_image(path: Path, folder: Path, skip_masks: bool) -> bool:
    relative = path.relative_to(folder).parts
    return (
        path.suffix.lower() in IMAGE_EXTENSIONS
        and path.is_file()
        and not any(part.startswith(".") for part in relative)
        and not (skip_masks and _MASK_FOLDER in relative[:-1])
    )


def find_images(
    inputs: Iterable[str | os.PathLike[str]], *, skip_masks: bool = False
) -> list[Path]:
    """Image files named directly or found (recursively, sorted) in folders.

    Parameters
    ----------
    inputs : iterable of str or path-like
        Image files and folders, in the order their images are returned.
    skip_masks : bool, default=False
        Leave out files under a ``ground_truth`` folder of a searched folder
        (an MVTec-style data set's masks).

    Returns
    -------
    list of Path
        A file named directly as given; the images of a folder sorted by path.

    Raises
    ------
    ValueError
        If a file named directly has no extension of :data:`IMAGE_EXTENSIONS`.
    FileNotFoundError
        If an input does not exist, or a folder holds no image file.
    """
    found: list[Path] = []
    for item in map(Path, inputs):
        if item.is_file():
            if item.suffix.lower() not in IMAGE_EXTENSIONS:
                raise ValueError(f"not an image file (by extension): {item}")
            found.append(item)
        elif item.is_dir():
            files = sorted(p for p in item.rglob("*") if _is_found_image(p, item, skip_masks))
            if not files:
                raise FileNotFoundError(f"no image files found in {item}")
            found.extend(files)
        else:
            raise FileNotFoundError(f"no such file or folder: {item}")
    return found


def images_and_categories(
    inputs: Sequence[str | os.PathLike[str]],
) -> tuple[list[Path], list[str]]:
    """The images of :func:`find_images`, each with a category: the name of its input folder.

    Parameters
    ----------
    inputs : sequence of str or path-like
        Folders, one per category, and image files (whose category is the name
        of the folder holding them).

    Returns
    -------
    paths : list of Path
        As :func:`find_images` returns them.
    categories : list of str
        The category of each image.

    Raises
    ------
    DuplicateFolderNameError
        If two input folders have the same name (a ``ValueError``).
    ValueError, FileNotFoundError
        As :func:`find_images`.
    """
    folders = [Path(item) for item in inputs]
    paths = find_images(folders)
    owners: dict[str, Path] = {}
    for folder in folders:
        name = folder.resolve().name if folder.is_dir() else folder.resolve().parent.name
        if owners.setdefault(name, folder) != folder and folder.is_dir():
            raise DuplicateFolderNameError(owners[name], folder, name)
    names = []
    for path in paths:
        folder = next((d for d in folders if d.is_dir() and path.is_relative_to(d)), path.parent)
        names.append(folder.resolve().name)
    return paths, names


def folder_categories(
    paths: Iterable[str | os.PathLike[str]], known: Iterable[Hashable]
) -> list[Hashable]:
    """Each image's category, read from the folders on its path.

    Parameters
    ----------
    paths : iterable of str or path-like
        Image files.
    known : iterable
        The categories to look for, e.g. a model's per-category threshold
        groups; folders are compared with ``str(category)``.

    Returns
    -------
    list
        For each image, the entry of ``known`` named like the nearest folder on
        its (resolved) path; else the name of the folder holding the image.
    """
    named = {str(category): category for category in known}
    found: list[Hashable] = []
    for path in paths:
        parts = Path(path).parent.resolve().parts
        match = next((part for part in reversed(parts) if part in named), None)
        found.append(named[match] if match is not None else (parts[-1] if parts else ""))
    return found


def labelled_images(
    normal: Iterable[str | os.PathLike[str]], defective: Iterable[str | os.PathLike[str]]
) -> tuple[list[Path], list[int], list[Path]]:
    """Images with labels (1 = defective): those of ``normal``, then those of ``defective``.

    Folders are searched as :func:`find_images` does, masks (``ground_truth``
    folders) left out. Under ``defective``, an image inside a folder named
    ``good`` is normal (an MVTec-style ``test`` folder can be given whole).
    Returns the paths, the labels and, for each image, the input it was
    found under (to find its mask, see :func:`find_masks`).
    """
    paths: list[Path] = []
    labels: list[int] = []
    roots: list[Path] = []
    for inputs, label in ((list(normal), 0), (list(defective), 1)):
        for root in inputs:
            for path in find_images([root], skip_masks=True):
                paths.append(path)
                inside = path.relative_to(root).parts[:-1] if Path(root).is_dir() else ()
                labels.append(0 if label == 0 or "good" in inside else 1)
                roots.append(Path(root))
    return paths, labels, roots


def find_masks(
    paths: Sequence[Path], roots: Sequence[Path], mask_root: str | os.PathLike[str]
) -> list[Path]:
    """The mask of each defective image, in ``mask_root`` as MVTec lays them out.

    An image at ``ROOT/a/b/000.png`` (``ROOT`` the folder it was found under)
    has its mask at ``MASKS/a/b/000_mask.png``, else ``MASKS/a/b/000.png`` (any
    extension of :data:`IMAGE_EXTENSIONS`): give ``--masks CATEGORY/ground_truth``
    with ``CATEGORY/test``.

    Raises
    ------
    FileNotFoundError
        For the first image without a mask, naming where it was looked for.
    """
    mask_root = Path(mask_root)
    found = []
    for path, root in zip(paths, roots, strict=True):
        relative = path.relative_to(root) if root.is_dir() else Path(path.name)
        folder = mask_root / relative.parent
        candidates = [
            folder / f"{relative.stem}{suffix}{extension}"
            for suffix in ("_mask", "")
            for extension in IMAGE_EXTENSIONS
        ]
        mask = next((c for c in candidates if c.is_file()), None)
        if mask is None:
            raise FileNotFoundError(
                f"no mask for {path}: looked for {folder / relative.stem}_mask.png (or .png, "
                f"another image extension) under --masks {mask_root}"
            )
        found.append(mask)
    return found


def layout_categories(paths: Iterable[str | os.PathLike[str]]) -> list[str]:
    """Each image's category in an MVTec-style layout: the folder above ``train`` or ``test``.

    Images outside such a layout get the name of the folder holding them.
    """
    categories = []
    for path in paths:
        parts = Path(path).resolve().parts[:-1]
        split = next(
            (i for i in range(len(parts) - 1, 0, -1) if parts[i] in ("train", "test")), None
        )
        categories.append(parts[split - 1] if split is not None else parts[-1])
    return categories
