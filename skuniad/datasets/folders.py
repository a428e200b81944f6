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
    "folder_categories",
    "images_and_categories",
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
