"""Synthetic textured images with planted defects and exact masks.

Each category is a family of RGB images that vary only mildly (phase, position and
pose jitter, small brightness changes, mild pixel noise). Anomalous test images get
one clearly visible defect (about 1-4 % of the image, strong contrast):

``scratch``
    a thin straight line, dark on bright surfaces and bright on dark ones;
``hole``
    a near-black disc;
``stain``
    a translucent, strongly coloured irregular blob;
``missing``
    a square patch where the texture is gone, exposing the flat substrate colour
    (for ``parts``: a bite out of the part's outline, showing the background).

An image is rendered as a float colour layer plus a noise layer; a defect edits the
colour layer only, so the mask, defined as the pixels whose uint8 value the defect
changed, is exact. The clean counterpart of a test image is the image at the same
position generated with ``anomaly_ratio=0`` (same seed, category and index).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from skuniad.datasets._base import category_names

__all__ = [
    "DEFECT_TYPES",
    "SYNTHETIC_CATEGORIES",
    "SyntheticSet",
    "make_synthetic",
    "write_synthetic",
]

SYNTHETIC_CATEGORIES: tuple[str, ...] = ("stripes", "grain", "dots", "parts")
"""Names of the synthetic categories."""

DEFECT_TYPES: tuple[str, ...] = ("scratch", "hole", "stain", "missing")
"""Names of the planted defect types."""

_SPLIT_IDS = {"train": 0, "test": 1}
_MIN_SIZE = 16
_NOISE_STD = 2.5  # pixel noise, uint8 units


@dataclass(frozen=True)
class _Palette:
    low: tuple[float, float, float]  # texture colour at weight 0 (background for parts)
    high: tuple[float, float, float]  # texture colour at weight 1 (the part for parts)
    substrate: tuple[float, float, float]  # colour shown by "missing" (texture removed)
    stain: tuple[float, float, float]


_PALETTES: dict[str, _Palette] = {
    "stripes": _Palette((55, 65, 135), (175, 190, 225), (215, 200, 120), (170, 45, 35)),
    "grain": _Palette((85, 85, 85), (170, 170, 170), (60, 150, 215), (175, 65, 30)),
    "dots": _Palette((210, 198, 170), (70, 95, 60), (125, 65, 150), (35, 90, 190)),
    "parts": _Palette((45, 48, 55), (195, 178, 125), (45, 48, 55), (40, 105, 185)),
}
_HOLE_COLOR = np.array([12.0, 12.0, 14.0])
_BRIGHT = np.array([248.0, 248.0, 245.0])
_DARK = np.array([14.0, 14.0, 16.0])


@dataclass
class SyntheticSet:
    """Images of one split of the synthetic data, with labels and masks.

    Attributes
    ----------
    images : list of numpy.ndarray of uint8, shape (H, W, 3)
    labels : numpy.ndarray of int64, shape (n_images,)
        ``1`` for anomalous images.
    masks : list of numpy.ndarray of bool, shape (H, W)
        Pixels changed by the defect; all False for normal images.
    categories : list of str
    defect_types : list of str
        ``"good"`` for normal images.
    """

    images: list[np.ndarray]
    labels: np.ndarray
    masks: list[np.ndarray]
    categories: list[str]
    defect_types: list[str]

    def __len__(self) -> int:
        return len(self.images)


# --------------------------------------------------------------------------- geometry


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    coords = np.arange(size, dtype=np.float64) + 0.5
    return np.meshgrid(coords, coords, indexing="ij")  # (yy, xx)


def _disc(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, r: float) -> np.ndarray:
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _segment(
    yy: np.ndarray,
    xx: np.ndarray,
    p0: tuple[float, float],
    p1: tuple[float, float],
    half_width: float,
) -> np.ndarray:
    (y0, x0), (y1, x1) = p0, p1
    dy, dx = y1 - y0, x1 - x0
    t = ((yy - y0) * dy + (xx - x0) * dx) / max(dy * dy + dx * dx, 1e-12)
    t = np.clip(t, 0.0, 1.0)
    dist2 = (yy - (y0 + t * dy)) ** 2 + (xx - (x0 + t * dx)) ** 2
    return dist2 <= half_width * half_width


def _rounded_rect_sdf(
    yy: np.ndarray,
    xx: np.ndarray,
    cy: float,
    cx: float,
    half_h: float,
    half_w: float,
    radius: float,
    angle: float,
) -> np.ndarray:
    """Signed distance to a rotated rounded rectangle (negative inside)."""
    cos, sin = np.cos(angle), np.sin(angle)
    u = (xx - cx) * cos + (yy - cy) * sin
    v = -(xx - cx) * sin + (yy - cy) * cos
    qx = np.abs(u) - (half_w - radius)
    qy = np.abs(v) - (half_h - radius)
    outside = np.hypot(np.maximum(qx, 0.0), np.maximum(qy, 0.0))
    inside = np.minimum(np.maximum(qx, qy), 0.0)
    return outside + inside - radius


# --------------------------------------------------------------------------- textures


@dataclass
class _Render:
    """A clean image before quantisation, and where defects may go."""

    color: np.ndarray  # float (H, W, 3)
    noise: np.ndarray  # float (H, W, 3)
    support: np.ndarray | None  # float (H, W) in [0, 1]: the part; None for textures
    part: dict[str, float] | None  # pose of the part


def _mix(weight: np.ndarray, low: Sequence[float], high: Sequence[float]) -> np.ndarray:
    lo = np.asarray(low, dtype=np.float64)
    hi = np.asarray(high, dtype=np.float64)
    return lo + weight[..., None] * (hi - lo)


def _render_clean(category: str, size: int, rng: np.random.Generator) -> _Render:
    pal = _PALETTES[category]
    yy, xx = _grid(size)
    support: np.ndarray | None = None
    part: dict[str, float] | None = None
    if category == "stripes":
        period = size / 6.0 * (1.0 + rng.uniform(-0.03, 0.03))
        theta = np.deg2rad(rng.uniform(-4.0, 4.0))
        phase = rng.uniform(0.0, 2.0 * np.pi)
        arg = 2.0 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period + phase
        weight = 0.5 + 0.42 * np.sin(arg)
    elif category == "grain":
        from scipy.ndimage import gaussian_filter  # here: reading data sets needs no scipy

        field = gaussian_filter(rng.standard_normal((size, size)), sigma=size / 40.0, mode="wrap")
        field = (field - field.mean()) / max(field.std(), 1e-12)
        weight = np.clip(0.5 + 0.17 * field, 0.0, 1.0)
    elif category == "dots":
        spacing = size / 8.0
        radius = spacing * 0.3
        oy, ox = rng.uniform(0.0, spacing, size=2)
        dy = (yy - oy) % spacing - spacing / 2.0
        dx = (xx - ox) % spacing - spacing / 2.0
        weight = np.clip(radius - np.hypot(dy, dx) + 0.5, 0.0, 1.0)
    elif category == "parts":
        jitter = 0.03 * size
        part = {
            "cy": size / 2.0 + rng.uniform(-jitter, jitter),
            "cx": size / 2.0 + rng.uniform(-jitter, jitter),
            "half_h": 0.22 * size * (1.0 + rng.uniform(-0.03, 0.03)),
            "half_w": 0.31 * size * (1.0 + rng.uniform(-0.03, 0.03)),
            "angle": np.deg2rad(rng.uniform(-4.0, 4.0)),
        }
        sdf = _rounded_rect_sdf(
            yy,
            xx,
            part["cy"],
            part["cx"],
            part["half_h"],
            part["half_w"],
            radius=0.08 * size,
            angle=part["angle"],
        )
        support = np.clip(0.5 - sdf, 0.0, 1.0)
        weight = support
    else:  # pragma: no cover - guarded by the public functions
        raise ValueError(category)
    color = _mix(weight, pal.low, pal.high)
    if category == "parts":
        # A printed mark in the middle of the part, and a soft shading gradient.
        assert part is not None and support is not None
        mark = np.clip(0.09 * size - np.hypot(yy - part["cy"], xx - part["cx"]) + 0.5, 0, 1)
        color = color + (mark * support)[..., None] * (np.array([120.0, 105.0, 70.0]) - color)
        shade = 1.0 + 0.04 * (xx - part["cx"]) / size
        color = color * (1.0 + (shade[..., None] - 1.0) * support[..., None])
    color = color * (1.0 + rng.uniform(-0.03, 0.03))
    noise = rng.normal(0.0, _NOISE_STD, size=(size, size, 3))
    return _Render(color=color, noise=noise, support=support, part=part)


def _quantize(color: np.ndarray, noise: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(color + noise), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- defects


def _defect_center(render: _Render, size: int, rng: np.random.Generator) -> tuple[float, float]:
    """A random centre well inside the image, or inside the part for ``parts``."""
    if render.part is None:
        cy, cx = rng.uniform(0.25 * size, 0.75 * size, size=2)
        return float(cy), float(cx)
    p = render.part
    u = rng.uniform(-0.45, 0.45) * p["half_w"]
    v = rng.uniform(-0.35, 0.35) * p["half_h"]
    cos, sin = np.cos(p["angle"]), np.sin(p["angle"])
    return p["cy"] + u * sin + v * cos, p["cx"] + u * cos - v * sin


def _apply_defect(
    render: _Render, category: str, defect: str, size: int, rng: np.random.Generator
) -> np.ndarray:
    """Return the defective colour layer."""
    pal = _PALETTES[category]
    yy, xx = _grid(size)
    color = render.color
    support = render.support
    cy, cx = _defect_center(render, size, rng)
    if defect == "scratch":
        length = rng.uniform(0.45, 0.6) * size if support is None else rng.uniform(0.3, 0.4) * size
        angle = rng.uniform(0.0, np.pi)
        dy, dx = 0.5 * length * np.sin(angle), 0.5 * length * np.cos(angle)
        region = _segment(yy, xx, (cy - dy, cx - dx), (cy + dy, cx + dx), 0.022 * size)
        alpha = region.astype(np.float64)
        if support is not None:
            alpha = alpha * support
        luminance = float((color[region] @ np.array([0.299, 0.587, 0.114])).mean())
        target = _DARK if luminance >= 128.0 else _BRIGHT
    elif defect == "hole":
        radius = rng.uniform(0.085, 0.105) * size
        alpha = _disc(yy, xx, cy, cx, radius).astype(np.float64)
        target = _HOLE_COLOR
    elif defect == "stain":
        region = np.zeros((size, size), dtype=bool)
        for _ in range(3):
            oy, ox = rng.uniform(-0.05, 0.05, size=2) * size
            region |= _disc(yy, xx, cy + oy, cx + ox, rng.uniform(0.055, 0.075) * size)
        alpha = 0.8 * region
        if support is not None:
            alpha = alpha * support
        target = np.asarray(pal.stain, dtype=np.float64)
    elif defect == "missing":
        if render.part is None:
            half = rng.uniform(0.08, 0.095) * size
            angle = rng.uniform(0.0, np.pi / 2.0)
            sdf = _rounded_rect_sdf(yy, xx, cy, cx, half, half, 0.02 * size, angle)
            alpha = (sdf <= 0.0).astype(np.float64)
        else:
            # A bite out of the outline: a disc centred on a point of the part's edge.
            assert support is not None
            p = render.part
            t = rng.uniform(-0.6, 0.6)
            sides = [  # (u, v) in the part's frame: top, bottom, left, right edge
                (t * p["half_w"], -p["half_h"]),
                (t * p["half_w"], p["half_h"]),
                (-p["half_w"], t * p["half_h"]),
                (p["half_w"], t * p["half_h"]),
            ]
            u, v = sides[int(rng.integers(4))]
            cos, sin = np.cos(p["angle"]), np.sin(p["angle"])
            by, bx = p["cy"] + u * sin + v * cos, p["cx"] + u * cos - v * sin
            alpha = _disc(yy, xx, by, bx, rng.uniform(0.13, 0.15) * size) * support
        target = np.asarray(pal.substrate, dtype=np.float64)
    else:  # pragma: no cover - guarded by the public functions
        raise ValueError(defect)
    return color + alpha[..., None] * (target - color)


# --------------------------------------------------------------------------- public API


def _check_categories(categories: str | Sequence[str] | None) -> list[str]:
    if categories is None:
        return list(SYNTHETIC_CATEGORIES)
    names = category_names(categories)
    unknown = [c for c in names if c not in SYNTHETIC_CATEGORIES]
    if unknown:
        raise ValueError(
            f"unknown synthetic categories {unknown}; available: {', '.join(SYNTHETIC_CATEGORIES)}"
        )
    return names


def _check_defects(defects: str | Sequence[str] | None) -> list[str]:
    if defects is None:
        return list(DEFECT_TYPES)
    names = [defects] if isinstance(defects, str) else [str(d) for d in defects]
    names = list(dict.fromkeys(names))
    unknown = [d for d in names if d not in DEFECT_TYPES]
    if not names or unknown:
        raise ValueError(
            f"unknown defect types {unknown or names}; available: {', '.join(DEFECT_TYPES)}"
        )
    return names


def _check_int(name: str, value: int, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def make_synthetic(
    split: Literal["train", "test"] = "train",
    categories: str | Sequence[str] | None = None,
    n_per_category: int = 32,
    anomaly_ratio: float = 0.5,
    image_size: int = 64,
    seed: int = 0,
    defect_types: str | Sequence[str] | None = None,
) -> SyntheticSet:
    """Generate synthetic images with planted defects.

    Parameters
    ----------
    split : {"train", "test"}, default="train"
        ``"train"`` images are all normal; ``"test"`` images include anomalies.
        The two splits use different random streams, so they never share images.
    categories : str or sequence of str, optional
        Categories from :data:`SYNTHETIC_CATEGORIES`, in output order. Default: all.
    n_per_category : int, default=32
        Number of images per category.
    anomaly_ratio : float, default=0.5
        Test split only: fraction of anomalous images per category (rounded half
        up). Ignored for ``split="train"``.
    image_size : int, default=64
        Height and width in pixels, at least 16.
    seed : int, default=0
        Non-negative seed. Image ``i`` of a category depends only on ``seed``,
        ``split``, the category, ``i`` and ``image_size``; its defect, if any, on
        its position among the anomalous images as well.
    defect_types : str or sequence of str, optional
        Defects to plant, from :data:`DEFECT_TYPES`, cycled over the anomalous
        images of each category. Default: all.

    Returns
    -------
    SyntheticSet
        Per category, the normal images first, then the anomalous ones.
    """
    if split not in _SPLIT_IDS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    names = _check_categories(categories)
    defects = _check_defects(defect_types)
    n = _check_int("n_per_category", n_per_category, 1)
    size = _check_int("image_size", image_size, _MIN_SIZE)
    seed = _check_int("seed", seed, 0)
    ratio = float(anomaly_ratio)
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"anomaly_ratio must be in [0, 1], got {anomaly_ratio!r}")
    n_anomalous = int(np.floor(n * ratio + 0.5)) if split == "test" else 0

    images: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    labels: list[int] = []
    cats: list[str] = []
    kinds: list[str] = []
    for name in names:
        category_id = SYNTHETIC_CATEGORIES.index(name)
        for i in range(n):
            sequence = np.random.SeedSequence([seed, _SPLIT_IDS[split], category_id, i, size])
            texture_seq, defect_seq = sequence.spawn(2)
            render = _render_clean(name, size, np.random.default_rng(texture_seq))
            clean = _quantize(render.color, render.noise)
            k = i - (n - n_anomalous)
            if k < 0:
                images.append(clean)
                masks.append(np.zeros((size, size), dtype=bool))
                labels.append(0)
                kinds.append("good")
            else:
                defect = defects[k % len(defects)]
                color = _apply_defect(render, name, defect, size, np.random.default_rng(defect_seq))
                image = _quantize(color, render.noise)
                images.append(image)
                masks.append((image != clean).any(axis=-1))
                labels.append(1)
                kinds.append(defect)
            cats.append(name)
    return SyntheticSet(
        images=images,
        labels=np.asarray(labels, dtype=np.int64),
        masks=masks,
        categories=cats,
        defect_types=kinds,
    )


def write_synthetic(
    root: str | os.PathLike[str],
    categories: str | Sequence[str] | None = None,
    n_train: int = 32,
    n_test: int = 32,
    image_size: int = 64,
    seed: int = 0,
    anomaly_ratio: float = 0.5,
    overwrite: bool = False,
) -> Path:
    """Write a synthetic data set in the MVTec AD layout.

    Files written, per category ``<cat>``::

        root/<cat>/train/good/000.png ...
        root/<cat>/test/good/000.png ...
        root/<cat>/test/<defect>/000.png ...
        root/<cat>/ground_truth/<defect>/000_mask.png ...   (uint8, 0 or 255)

    Files are numbered from 000 within each folder, in the order of
    :func:`make_synthetic` with the same arguments.

    Parameters
    ----------
    root : str or path-like
        Output folder; created if missing.
    categories : str or sequence of str, optional
        Categories from :data:`SYNTHETIC_CATEGORIES`. Default: all.
    n_train, n_test : int, default=32
        Images per category in the train and test splits.
    image_size : int, default=64
        Height and width in pixels, at least 16.
    seed : int, default=0
        Non-negative seed, passed to :func:`make_synthetic`.
    anomaly_ratio : float, default=0.5
        Fraction of anomalous test images per category.
    overwrite : bool, default=False
        Replace the files of a category folder that already exists and is not
        empty (its ``train``, ``test`` and ``ground_truth`` folders are cleared).
        Without it, such a folder raises :class:`FileExistsError`.

    Returns
    -------
    Path
        ``root``.
    """
    names = _check_categories(categories)
    out = Path(root).expanduser()
    if out.exists() and not out.is_dir():
        raise ValueError(f"root exists and is not a directory: {out}")
    for name in names:
        folder = out / name
        if folder.is_dir() and any(folder.iterdir()):
            if not overwrite:
                raise FileExistsError(
                    f"{folder} already exists and is not empty; pass overwrite=True to replace it"
                )
            for sub in ("train", "test", "ground_truth"):
                _clear_tree(folder / sub)
    train = make_synthetic("train", names, n_train, image_size=image_size, seed=seed)
    test = make_synthetic(
        "test", names, n_test, anomaly_ratio=anomaly_ratio, image_size=image_size, seed=seed
    )
    for split, data in (("train", train), ("test", test)):
        counters: dict[tuple[str, str], int] = {}
        for image, mask, name, defect in zip(
            data.images, data.masks, data.categories, data.defect_types, strict=True
        ):
            index = counters.get((name, defect), 0)
            counters[(name, defect)] = index + 1
            stem = f"{index:03d}"
            image_dir = out / name / split / defect
            image_dir.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(image_dir / f"{stem}.png", compress_level=1)
            if defect != "good":
                mask_dir = out / name / "ground_truth" / defect
                mask_dir.mkdir(parents=True, exist_ok=True)
                Image.fromarray(mask.astype(np.uint8) * 255).save(
                    mask_dir / f"{stem}_mask.png", compress_level=1
                )
    return out


def _clear_tree(folder: Path) -> None:
    """Delete ``folder`` and what it holds (no symlinks followed)."""
    if folder.is_symlink() or folder.is_file():
        folder.unlink()
        return
    if not folder.is_dir():
        return
    for child in folder.iterdir():
        _clear_tree(child)
    folder.rmdir()
