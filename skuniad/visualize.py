"""Heat-map overlays of anomaly maps on their images.

Colours come from matplotlib colormaps, by default ``"inferno"``: perceptually
uniform (equal steps in the map look like equal steps in colour), its
lightness rising monotonically from black to pale yellow, readable in
grayscale and by colour-blind viewers. Only the colormap registry is used,
never pyplot, so no display and no GUI backend are involved. The colour scale
is fixed by the caller (``vmin``/``vmax``), not stretched to each map: a
normal image then stays dark instead of having its largest noise painted hot.
Outlines mark a boolean region, e.g. the ground-truth mask or the pixels
above the detector's ``pixel_threshold_``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from skuniad._inference import to_image_size
from skuniad._outputs import open_output
from skuniad.datasets._base import resize_mask

__all__ = [
    "DEFAULT_COLORMAP",
    "colorize",
    "heatmap_overlay",
    "outline",
    "overlay_style",
    "plot_learning_curves",
    "save_overlay",
]

DEFAULT_COLORMAP = "inferno"
"""Colormap of the overlays unless one is named (a perceptual one, see the module docstring)."""
# outline colours that no part of the default colormap takes
GROUND_TRUTH_COLOR = (255, 255, 255)
THRESHOLD_COLOR = (0, 255, 0)


def colorize(values: np.ndarray, cmap: str = DEFAULT_COLORMAP) -> np.ndarray:
    """Map values in [0, 1] to RGB uint8 through the matplotlib colormap ``cmap``.

    Values outside [0, 1] are clipped to the colormap's ends. Returns an
    array of shape ``values.shape + (3,)``.

    Raises
    ------
    ValueError
        ``cmap`` is not a matplotlib colormap name; the message lists some.
    """
    import matplotlib

    try:
        colormap = matplotlib.colormaps[cmap]
    except KeyError:
        raise ValueError(
            f"unknown colormap {cmap!r}; use a matplotlib name such as 'inferno', 'viridis', "
            "'magma', 'cividis' or 'turbo'"
        ) from None
    x = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)
    return np.asarray(colormap(x, bytes=True), dtype=np.uint8)[..., :3]  # a tuple for scalars


def outline(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """Boundary pixels of a boolean ``mask``: inside it, next to a pixel outside it.

    ``width`` thickens the boundary inwards (in pixels, 4-connected steps).
    """
    mask = np.asarray(mask, dtype=bool)
    inner = mask.copy()
    for _ in range(max(1, int(width))):
        padded = np.pad(inner, 1, mode="constant", constant_values=False)
        inner = inner & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


def _as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = np.clip(np.rint(image.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] not in (3, 4):
        raise ValueError(f"image must be (H, W), (H, W, 3) or (H, W, 4), got {image.shape}")
    return image[..., :3]


def heatmap_overlay(
    image: np.ndarray,
    anomaly_map: np.ndarray,
    *,
    vmin: float | None = None,
    vmax: float | None = None,
    alpha: float = 0.5,
    mask: np.ndarray | None = None,
    threshold: float | None = None,
    cmap: str = DEFAULT_COLORMAP,
) -> np.ndarray:
    """Blend a coloured anomaly map over its image.

    Parameters
    ----------
    image : ndarray (H, W[, 3|4])
        uint8, or float in [0, 1].
    anomaly_map : ndarray (h, w)
        HIGHER = MORE ANOMALOUS; a model-size map is brought to the image's size
        by the detector's own upsampler (``anomaly_maps``), so ``threshold``
        outlines exactly the pixels ``predict_masks`` marks.
    vmin, vmax : float, optional
        Map values shown as the coldest and hottest colours. Default: the
        map's own minimum and maximum.
    alpha : float, default=0.5
        Weight of the heat map in the blend.
    mask : ndarray of bool (h, w), optional
        Region outlined in white (e.g. the ground truth), resized nearest.
    threshold : float, optional
        Outline in green the region where the map exceeds this value.
    cmap : str, default=DEFAULT_COLORMAP
        matplotlib colormap name (``"inferno"``; ``"jet"`` for the old rainbow).

    Returns
    -------
    ndarray of uint8, shape (H, W, 3)
    """
    rgb = _as_rgb_uint8(image)
    size = rgb.shape[:2]
    # the detector's own upsampler: the outline marks exactly predict_masks' pixels
    values = np.ascontiguousarray(anomaly_map, dtype=np.float32)
    values = to_image_size(values[None], [size], stack=True)[0]
    low = float(values.min()) if vmin is None else float(vmin)
    high = float(values.max()) if vmax is None else float(vmax)
    scaled = (values - low) / max(high - low, 1e-12)
    colors = colorize(scaled, cmap).astype(np.float64)
    blend = (1.0 - alpha) * rgb.astype(np.float64) + alpha * colors
    out = np.clip(np.rint(blend), 0, 255).astype(np.uint8)
    width = max(1, min(size) // 200)
    if threshold is not None:
        out[outline(values > threshold, width)] = THRESHOLD_COLOR
    if mask is not None:
        out[outline(resize_mask(np.asarray(mask, dtype=bool), size), width)] = GROUND_TRUTH_COLOR
    return out


def save_overlay(
    path: str | os.PathLike[str],
    image: np.ndarray,
    anomaly_map: np.ndarray,
    *,
    side_by_side: bool = True,
    **kwargs,
) -> Path:
    """Write :func:`heatmap_overlay` as a PNG, by default next to the plain image.

    Parameters
    ----------
    path : str or path-like
        Output file; parent folders are created.
    image, anomaly_map :
        As in :func:`heatmap_overlay`.
    side_by_side : bool, default=True
        Put the untouched image on the left, so the defect stays visible.
    **kwargs :
        ``vmin``, ``vmax``, ``alpha``, ``mask``, ``threshold``, ``cmap``.

    Returns
    -------
    Path
    """
    overlay = heatmap_overlay(image, anomaly_map, **kwargs)
    if side_by_side:
        overlay = np.concatenate([_as_rgb_uint8(image), overlay], axis=1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    kind = Image.registered_extensions().get(path.suffix.lower())
    if kind is None:
        raise ValueError(f"{path}: unknown image file extension {path.suffix!r}")
    with open_output(path, "wb") as f:
        Image.fromarray(overlay).save(f, format=kind)
    return path


def plot_learning_curves(
    curves: list[dict], path: str | os.PathLike, *, per_category: bool = False
) -> Path:
    """Training loss and test AUROCs against epochs, as the poster's Fig. 3a; a PNG.

    ``curves`` are :class:`skuniad.evaluation.CurveRecorder` curves with a
    ``seed`` each, or a ``label`` that names them in the legend (e.g. to
    draw UniAD and an ablation in one figure). Left: every epoch's mean training loss (log scale).
    Right: the mean over categories of the image AUROC (the detector's image
    score) and of the pixel AUROC at the scored epochs; ``per_category``
    adds one thin line per category. Drawn with matplotlib's Agg canvas: no
    display needed and pyplot's global state is left alone.
    """
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4.2), layout="constrained")
    loss_axes, auroc_axes = figure.subplots(1, 2)
    for curve in curves:
        if "label" in curve:
            suffix = f", {curve['label']}"
        else:
            suffix = "" if len(curves) == 1 else f", seed {curve['seed']}"
        losses = curve["loss_curve"]
        loss_axes.plot(range(1, len(losses) + 1), losses, label=f"training loss{suffix}")
        for key, marker in (("image_auroc", "o"), ("pixel_auroc", "s")):
            values = 100 * np.asarray(curve["mean"][key], dtype=float)  # None (no masks): NaN
            name = key.replace("_auroc", "")
            auroc_axes.plot(curve["epoch"], values, marker=marker, label=f"{name} AUROC{suffix}")
        if per_category:
            for category, row in curve["categories"].items():
                for key, style in (("image_auroc", "--"), ("pixel_auroc", ":")):
                    name = key.replace("_auroc", "")
                    auroc_axes.plot(
                        curve["epoch"],
                        100 * np.asarray(row[key], dtype=float),
                        style,
                        linewidth=0.8,
                        label=f"{category} {name}{suffix}",
                    )
    loss_axes.set(xlabel="epoch", ylabel="mean training loss (MSE)", yscale="log")
    auroc_axes.set(xlabel="epoch", ylabel="AUROC (%), mean over categories")
    for axes in (loss_axes, auroc_axes):
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open_output(path, "wb") as f:
        figure.savefig(f, dpi=110, format=path.suffix[1:] or "png")
    return path


def overlay_style(detector) -> dict:
    """The colour scale and outline of every skuniad overlay of ``detector``'s maps.

    One look for ``skuniad predict``, ``evaluate`` and ``demo``: the scale runs
    from 0 to twice ``pixel_threshold_`` (so a normal image stays cold) and
    the pixels above ``pixel_threshold_`` (``predict_masks``) are outlined in
    green. A detector without thresholds (an uncalibrated import) gets an
    empty dict: each map's own range, no outline.
    """
    threshold = getattr(detector, "pixel_threshold_", None)
    if threshold is None:
        return {}
    return {"vmin": 0.0, "vmax": 2.0 * float(threshold), "threshold": float(threshold)}
