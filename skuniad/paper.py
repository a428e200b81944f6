"""The UniAD paper's per-category MVTec AD results, for comparison tables.

Source: You et al., "A Unified Model for Multi-class Anomaly Detection",
NeurIPS 2022 (arXiv:2206.03687), Table 1 (anomaly detection, image AUROC)
and Table 2 (anomaly localization, pixel AUROC), column "Ours", in the
separate case (one model per category) and the unified case (one model for
all 15 categories); EfficientNet-B4 backbone, 1000 epochs, in %.
"""

from __future__ import annotations

from collections.abc import Iterable

SOURCE = "You et al., NeurIPS 2022 (arXiv:2206.03687), Tables 1-2, UniAD"
"""Where :data:`MVTEC_AD` comes from, for reports."""

# category: (separate image, separate pixel, unified image, unified pixel)
MVTEC_AD: dict[str, tuple[float, float, float, float]] = {
    "bottle": (100.0, 98.1, 99.7, 98.1),
    "cable": (97.6, 96.8, 95.2, 97.3),
    "capsule": (85.3, 97.9, 86.9, 98.5),
    "hazelnut": (99.9, 98.8, 99.8, 98.1),
    "metal_nut": (99.0, 95.7, 99.2, 94.8),
    "pill": (88.3, 95.1, 93.7, 95.0),
    "screw": (91.9, 97.4, 87.5, 98.3),
    "toothbrush": (95.0, 97.8, 94.2, 98.4),
    "transistor": (100.0, 98.7, 99.8, 97.9),
    "zipper": (96.7, 96.0, 95.8, 96.8),
    "carpet": (99.9, 98.0, 99.8, 98.5),
    "grid": (98.5, 94.6, 98.2, 96.5),
    "leather": (100.0, 98.3, 100.0, 98.8),
    "tile": (99.0, 91.8, 99.3, 91.8),
    "wood": (97.9, 93.4, 98.6, 93.2),
}
"""Per-category image / pixel AUROC of UniAD in the paper, separate then unified.

Transcribed without network access to the paper's PDF. Checks made: the
unified columns average to the paper's stated means (96.5 / 96.8) exactly,
and bottle (unified) and grid (both settings) match values quoted from the
paper elsewhere; the other separate-case values were not cross-checked.
"""


def paper_aurocs(categories: Iterable[str], setting: str) -> dict[str, dict[str, float]]:
    """The paper's ``image_auroc`` / ``pixel_auroc`` (in %) for the MVTec AD ``categories``.

    Categories the paper does not report are left out; an empty dict when
    none is an MVTec AD category.
    """
    if setting not in ("separate", "unified"):
        raise ValueError(f"setting must be 'separate' or 'unified', got {setting!r}")
    offset = 0 if setting == "separate" else 2
    return {
        name: {"image_auroc": row[offset], "pixel_auroc": row[offset + 1]}
        for name in categories
        if (row := MVTEC_AD.get(name)) is not None
    }
