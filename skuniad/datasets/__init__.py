"""Data sets: readers for MVTec AD folders, VisA split files and the UniAD authors' JSON lists,
a JSON list writer, images found in plain folders, and a synthetic generator with planted
defects."""

from skuniad.datasets._base import (
    IMAGE_EXTENSIONS,
    MASK_EXTENSIONS,
    AnomalyDataset,
    load_image,
    load_mask,
)
from skuniad.datasets.folders import (
    DuplicateFolderNameError,
    find_images,
    find_masks,
    folder_categories,
    images_and_categories,
    labelled_images,
    layout_categories,
)
from skuniad.datasets.formats import DATASET_FORMATS, describe_format, load_dataset
from skuniad.datasets.mvtec import list_categories, load_mvtec
from skuniad.datasets.synthetic import (
    DEFECT_TYPES,
    SYNTHETIC_CATEGORIES,
    SyntheticSet,
    make_synthetic,
    write_synthetic,
)
from skuniad.datasets.uniad_json import UNIAD_JSON_KEYS, load_uniad_json, write_uniad_json
from skuniad.datasets.visa import VISA_COLUMNS, load_visa

__all__ = [
    "DATASET_FORMATS",
    "DEFECT_TYPES",
    "IMAGE_EXTENSIONS",
    "MASK_EXTENSIONS",
    "SYNTHETIC_CATEGORIES",
    "UNIAD_JSON_KEYS",
    "VISA_COLUMNS",
    "AnomalyDataset",
    "DuplicateFolderNameError",
    "SyntheticSet",
    "describe_format",
    "find_images",
    "find_masks",
    "folder_categories",
    "images_and_categories",
    "labelled_images",
    "layout_categories",
    "list_categories",
    "load_dataset",
    "load_image",
    "load_mask",
    "load_mvtec",
    "load_uniad_json",
    "load_visa",
    "make_synthetic",
    "write_synthetic",
    "write_uniad_json",
]
