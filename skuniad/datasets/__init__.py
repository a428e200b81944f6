"""Data sets: the MVTec AD layout reader and a synthetic generator with planted defects."""

from skuniad.datasets.mvtec import (
    IMAGE_EXTENSIONS,
    MASK_EXTENSIONS,
    AnomalyDataset,
    list_categories,
    load_image,
    load_mask,
    load_mvtec,
)
from skuniad.datasets.synthetic import (
    DEFECT_TYPES,
    SYNTHETIC_CATEGORIES,
    SyntheticSet,
    make_synthetic,
    write_synthetic,
)

__all__ = [
    "DEFECT_TYPES",
    "IMAGE_EXTENSIONS",
    "MASK_EXTENSIONS",
    "SYNTHETIC_CATEGORIES",
    "AnomalyDataset",
    "SyntheticSet",
    "list_categories",
    "load_image",
    "load_mask",
    "load_mvtec",
    "make_synthetic",
    "write_synthetic",
]
