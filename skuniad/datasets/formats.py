"""The data set formats skuniad reads, by name: one entry point and what each expects.

``"mvtec"`` (MVTec AD folders), ``"visa"`` (VisA's split file) and
``"uniad-json"`` (the UniAD authors' JSON lists) all give the same
:class:`~skuniad.datasets.AnomalyDataset`, so everything downstream (training,
evaluation, conversion with :func:`~skuniad.datasets.write_uniad_json`) works
on any of them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from skuniad._choices import DATASET_FORMATS
from skuniad.datasets._base import AnomalyDataset
from skuniad.datasets.mvtec import load_mvtec
from skuniad.datasets.uniad_json import load_uniad_json
from skuniad.datasets.visa import load_visa

__all__ = ["DATASET_FORMATS", "describe_format", "load_dataset"]

_OFFLINE = """\
No network needed with --backbone tf_efficientnet_lite0: its ImageNet weights are
installed with skuniad. The default backbone, tf_efficientnet_b4.aa_in1k, needs
timm's weights in the local cache or access to the Hugging Face hub."""

_DESCRIPTIONS = {
    "mvtec": """\
MVTec AD: 15 categories of industrial objects and textures, normal training
images and test images with pixel-precise defect masks.
Published by MVTec Software GmbH: download it from their site,
https://www.mvtec.com/company/research/datasets/mvtec-ad (non-commercial licence).
MVTec-like sets (BTAD, MPDD, the RGB images of MVTec 3D-AD, your own) share the layout:

  ROOT/CATEGORY/train/good/*.png              normal training images
  ROOT/CATEGORY/test/good/*.png               normal test images
  ROOT/CATEGORY/test/DEFECT/*.png             anomalous test images
  ROOT/CATEGORY/ground_truth/DEFECT/STEM_mask.png

A category without ground_truth/ is evaluated at image level only.
Run: skuniad evaluate --dataset mvtec --root ROOT""",
    "visa": """\
VisA (Visual Anomaly, Zou et al., ECCV 2022): 12 object categories, 10,821
images of which 1,200 anomalous, with pixel-level masks. Published by Amazon
(Amazon Science): the download links are in the README of
https://github.com/amazon-science/spot-diff (non-commercial licence). Its split
file describes the images:

  ROOT/split_csv/1cls.csv    header object,split,label,image,mask
                             split train|test, label normal|anomaly, image and
                             mask paths relative to ROOT, mask empty for normal images
  ROOT/candle/Data/Images/Normal/0000.JPG, ROOT/candle/Data/Masks/Anomaly/000.png, ...

Anomalous images listed without a mask: that category is evaluated at image level.
Run: skuniad evaluate --dataset visa --root ROOT""",
    "uniad-json": """\
The UniAD authors' data lists (You et al., NeurIPS 2022; their code at
https://github.com/zhiyuanyou/UniAD ships data/MVTec-AD/train.json and test.json):
one JSON object per line, paths relative to the image folder ROOT:

  {"filename": "bottle/test/broken_large/000.png", "label": 1, "label_name": "defective",
   "maskname": "bottle/ground_truth/broken_large/000_mask.png", "clsname": "bottle"}

label 0 = normal, 1 = anomalous; maskname only for anomalous test images (without
it the category is evaluated at image level). The images themselves come from the
data set the lists describe (e.g. MVTec AD, from MVTec Software GmbH). skuniad
writes such lists from any set it reads: skuniad export-json --dataset mvtec --root ROOT -o DIR
Run: skuniad evaluate --dataset uniad-json --root ROOT \\
         --train-meta train.json --test-meta test.json""",
}


def describe_format(name: str) -> str:
    """What a data set format is, where it is obtained and the layout skuniad expects.

    Parameters
    ----------
    name : {"mvtec", "visa", "uniad-json"}

    Returns
    -------
    str
        Several lines of plain text, ending with how to run without a network.
    """
    if name not in _DESCRIPTIONS:
        raise ValueError(f"unknown dataset format {name!r}; known: {', '.join(DATASET_FORMATS)}")
    return f"{_DESCRIPTIONS[name]}\n\n{_OFFLINE}"


def load_dataset(
    name: str,
    root: str | os.PathLike[str],
    split: str = "train",
    categories: str | Sequence[str] | None = None,
    meta_file: str | os.PathLike[str] | None = None,
) -> AnomalyDataset:
    """Read one split of a data set in any of the :data:`DATASET_FORMATS`.

    Parameters
    ----------
    name : {"mvtec", "visa", "uniad-json"}
        The format: :func:`load_mvtec`, :func:`load_visa` or :func:`load_uniad_json`.
    root : str or path-like
        Data set root (for ``"uniad-json"``: the image folder).
    split : {"train", "test"}, default="train"
    categories : str or sequence of str, optional
        Categories to read, in this order; default all.
    meta_file : str or path-like, optional
        ``"uniad-json"`` only (and required there): the list of this split.

    Returns
    -------
    AnomalyDataset
    """
    if name not in DATASET_FORMATS:
        raise ValueError(f"unknown dataset format {name!r}; known: {', '.join(DATASET_FORMATS)}")
    if name == "uniad-json":
        if meta_file is None:
            raise ValueError(f"the uniad-json format needs the {split} list (meta_file)")
        return load_uniad_json(root, meta_file, split, categories)
    if meta_file is not None:
        raise ValueError(f"meta_file is for the uniad-json format, not {name!r}")
    if name == "visa":
        return load_visa(root, split, categories)
    return load_mvtec(root, split, categories)
