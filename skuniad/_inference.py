"""The one scoring engine: images -> backbone features -> anomaly maps -> scores.

Every path that scores with fitted networks goes through here: the
estimator's methods, calibration and the learning curves. :func:`to_image_size`
is the one model-size -> image-size map upsampler, used by ``anomaly_maps``,
``predict_masks``, the overlays and ``skuniad predict --masks`` alike, so a
mask and the outline drawn on an overlay mark the same pixels.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from numbers import Integral

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.utils import Bunch

from skuniad._progress import progress_bar
from skuniad._spec import NetworkSpec
from skuniad._thresholds import labels_above, masks_above
from skuniad.cache import FeatureCache
from skuniad.device import (
    autocast,
    compiled,
    explain_out_of_memory,
    flushing_denormals,
    inference_batch_size,
)
from skuniad.io import ImageLoadError, iter_batches, iter_loaded
from skuniad.nn.backbone import FrozenBackbone
from skuniad.nn.transformer import anomaly_map, image_score, upsample_map

MAP_SIZES = ("input", "model")


def check_map_size(size) -> None:
    if size not in MAP_SIZES:
        raise ValueError(f"size must be 'input' or 'model', got {size!r}")


def check_chunk_options(size, chunk_size, errors) -> None:
    """``predict_chunks``' options, before any image is read."""
    check_map_size(size)
    if not isinstance(chunk_size, Integral) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    if errors not in ("raise", "skip"):
        raise ValueError(f"errors must be 'raise' or 'skip', got {errors!r}")


def returns_array(X) -> bool:
    """Whether ``X`` is one array of images, so that maps come back as one array too."""
    return isinstance(X, torch.Tensor) or (isinstance(X, np.ndarray) and X.dtype.kind in "uifb")


def to_image_size(maps: np.ndarray, sizes: Sequence[tuple[int, int] | None], stack: bool):
    """Model-size maps (n, S, S) at each image's own size: one array if ``stack``, else a list.

    Bilinear, ``align_corners=False``. An image of size None (unreadable,
    skipped) gets None in the list.
    """
    tensor = torch.from_numpy(maps).unsqueeze(1)
    if stack:
        size = sizes[0]
        if tuple(maps.shape[1:]) == size:
            return maps
        return F.interpolate(tensor, size=size, mode="bilinear", align_corners=False)[:, 0].numpy()
    return [
        None
        if s is None
        else maps[i]
        if tuple(maps.shape[1:]) == s
        else F.interpolate(tensor[i : i + 1], size=s, mode="bilinear", align_corners=False)[
            0, 0
        ].numpy()
        for i, s in enumerate(sizes)
    ]


def extract_features(
    backbone: FrozenBackbone,
    X: Sequence,
    *,
    image_size: int,
    batch_size: int,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    verbose: int = 0,
    description: str = "features",
    cache_dtype: str = "float32",
    cache_max_gb: float | None = None,
    resize: str = "pil-uint8",
) -> torch.Tensor:
    """Run the frozen backbone once over ``X``; return (N, C, h, w) features on the CPU.

    The result is the :class:`~skuniad.cache.FeatureCache` storage: float32 in
    memory by default, or ``cache_dtype``, memory-mapped beyond ``cache_max_gb``.
    ``resize``: how images reach ``image_size`` (:func:`skuniad.io.load_resized`).
    """
    cache = None
    with progress_bar(verbose > 0) as progress:
        task = progress.add_task(description, total=len(X))
        for images, _ in iter_batches(
            X, image_size, backbone.mean, backbone.std, batch_size, device, resize
        ):
            with torch.inference_mode(), autocast(device, amp_dtype):
                images = images.to(device, memory_format=torch.channels_last, non_blocking=True)
                features = backbone(images)
            if cache is None:
                cache = FeatureCache(len(X), features.shape[1:], cache_dtype, cache_max_gb)
            cache.append(features)
            progress.advance(task, len(images))
    return cache.data


@torch.inference_mode()
@flushing_denormals()
def reconstruction_maps(
    model: torch.nn.Module,
    features: torch.Tensor,
    *,
    image_size: int,
    batch_size: int,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    score_method: str = "max",
) -> tuple[np.ndarray, np.ndarray]:
    """Image scores (N,) by ``score_method`` and token-level maps (N, h, w) for cached features."""
    model.eval()
    scores, maps = [], []
    for begin in range(0, len(features), batch_size):
        batch = features[begin : begin + batch_size].to(device, non_blocking=True).float()
        with autocast(device, amp_dtype):
            reconstruction = model(batch)
        token_maps = anomaly_map(batch, reconstruction, None)
        scores.append(image_score(upsample_map(token_maps, image_size), method=score_method).cpu())
        maps.append(token_maps.cpu())
    return torch.cat(scores).numpy(), torch.cat(maps).numpy()


def iter_chunks(scored: Iterator[tuple], chunk_size: int) -> Iterator[tuple[int, list[tuple]]]:
    """Regroup :meth:`Scorer.iter_scored`'s batches as ``(begin, items)`` of ``chunk_size`` images.

    Each item is one image's ``(score, model-size map, size, error)``. When
    an unreadable image stops the iteration, every image before it comes out
    first, then the :class:`~skuniad.io.ImageLoadError` is raised.
    """
    pending: list[tuple] = []
    begin = 0
    try:
        for scores, maps, sizes, errors in scored:
            pending += zip(scores, maps, sizes, errors, strict=True)
            while len(pending) >= chunk_size:
                yield begin, pending[:chunk_size]
                pending, begin = pending[chunk_size:], begin + chunk_size
    except ImageLoadError:
        if pending:
            yield begin, pending
        raise
    if pending:
        yield begin, pending


def chunk_result(
    items: list[tuple],
    begin: int,
    size: str,
    stack: bool,
    image_thresholds: np.ndarray | None,
    pixel_thresholds: np.ndarray | None,
) -> Bunch:
    """One chunk of ``predict_chunks``: :func:`iter_chunks`'s items with labels and masks.

    The labels and masks need the chunk's per-image thresholds; where they
    are None, so are those keys. An unreadable image gets label 0.
    """
    scores, maps, sizes, errors = zip(*items, strict=True)
    score_samples = -np.asarray(scores, dtype=np.float64)
    maps = np.stack(maps)
    if size == "input":
        maps = to_image_size(maps, list(sizes), stack)
    result = Bunch(
        indices=np.arange(begin, begin + len(items)),
        score_samples=score_samples,
        decision_function=None,
        predict=None,
        anomaly_maps=maps,
        predict_masks=None,
        errors=[None if error is None else error.reason for error in errors],
        image_sizes=list(sizes),
    )
    if image_thresholds is not None:
        result.decision_function = score_samples + image_thresholds
        result.predict = labels_above(-score_samples, image_thresholds)
        result.predict[[i for i, error in enumerate(errors) if error is not None]] = 0
    if pixel_thresholds is not None:
        result.predict_masks = masks_above(maps, pixel_thresholds)
    return result


@dataclasses.dataclass
class Scorer:
    """Fitted networks and how to run them: the estimator's inference, in one place.

    ``batch_size`` is the detector's (training) batch size: inference runs
    :func:`~skuniad.device.inference_batch_size` images at a time, and an
    out-of-memory error advises on it. ``compile``: the reconstruction
    network runs compiled (:func:`~skuniad.device.compiled`); the frozen
    backbone does not.
    """

    backbone: FrozenBackbone
    model: torch.nn.Module
    spec: NetworkSpec
    device: torch.device
    amp_dtype: torch.dtype | None
    batch_size: int
    verbose: int = 0
    compile: bool = False
    network: torch.nn.Module = dataclasses.field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.network = compiled(self.model, self.device, self.compile)

    def extract(self, X, task: str = "calibrating thresholds") -> torch.Tensor:
        """Backbone features of ``X`` (N, C, h, w) on the CPU."""
        with explain_out_of_memory(task, self.batch_size, inference=True):
            return extract_features(
                self.backbone,
                X,
                image_size=self.spec.image_size,
                batch_size=inference_batch_size(self.batch_size),
                device=self.device,
                amp_dtype=self.amp_dtype,
                verbose=self.verbose,
                resize=self.spec.resize,
            )

    def calibration_values(self, features: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Image scores and per-image anomaly-map maxima of cached features."""
        with explain_out_of_memory("calibrating thresholds", self.batch_size, inference=True):
            scores, maps = reconstruction_maps(
                self.network,
                features,
                image_size=self.spec.image_size,
                batch_size=inference_batch_size(self.batch_size),
                device=self.device,
                amp_dtype=self.amp_dtype,
                score_method=self.spec.image_score,
            )
        # bilinear upsampling with align_corners=True keeps the token maxima
        return scores, maps.reshape(len(maps), -1).max(1)

    def iter_scored(self, X, *, keep_maps: bool, skip_errors: bool = False) -> Iterator[tuple]:
        """One network pass over checked ``X``, batch by batch.

        Yields ``(scores (b,) float64, model-size maps (b, S, S) or None,
        original sizes, errors)``. With ``skip_errors``, an unreadable image
        gets a NaN score and map, size None and its ``ImageLoadError``;
        otherwise the first one is raised (its index is ``X``'s).
        """
        image_size, device, amp_dtype = self.spec.image_size, self.device, self.amp_dtype
        self.model.eval()
        batches = iter_loaded(
            X,
            image_size,
            self.backbone.mean,
            self.backbone.std,
            inference_batch_size(self.batch_size),
            device,
            self.spec.resize,
        )
        with progress_bar(self.verbose > 0) as progress:
            task = progress.add_task("scoring", total=len(X))
            for images, sizes, errors in batches:
                failed = [i for i, error in enumerate(errors) if error is not None]
                stop = None
                if failed and not skip_errors:
                    # the images before the unreadable one are still scored and yielded
                    stop, first = errors[failed[0]], failed[0]
                    if first == 0:
                        raise stop
                    images, sizes, errors, failed = (
                        images[:first],
                        sizes[:first],
                        errors[:first],
                        [],
                    )
                # entered per batch: the caller's code between batches keeps its own mode
                with (
                    explain_out_of_memory("scoring", self.batch_size, inference=True),
                    flushing_denormals(),
                ):
                    with torch.inference_mode(), autocast(device, amp_dtype):
                        images = images.to(
                            device, memory_format=torch.channels_last, non_blocking=True
                        )
                        features = self.backbone(images)
                        reconstruction = self.network(features)
                    batch_maps = anomaly_map(features, reconstruction, image_size)
                    scores = image_score(batch_maps, method=self.spec.image_score)
                    scores = scores.cpu().numpy().astype(np.float64)
                    maps = batch_maps.cpu().numpy() if keep_maps else None
                scores[failed] = np.nan
                if maps is not None:
                    maps[failed] = np.nan
                progress.advance(task, len(images))
                yield scores, maps, sizes, errors
                if stop is not None:
                    raise stop

    def masked_pixels(self, X, masks: list) -> list:
        """Per image, ``(mask, anomaly map at the image's size)``, or None where no mask."""
        marked = [i for i, mask in enumerate(masks) if mask is not None]
        pixels = [None] * len(X)
        if not marked:
            return pixels
        _, maps, sizes = self.score([X[i] for i in marked], keep_maps=True)
        for i, image_map in zip(marked, to_image_size(maps, sizes, stack=False), strict=True):
            pixels[i] = (masks[i], image_map)
        return pixels

    def score(self, X, *, keep_maps: bool):
        """Image scores (n,), model-size maps (n, S, S) or None, original sizes of checked X."""
        scores, maps, sizes = [], [], []
        for batch_scores, batch_maps, batch_sizes, _ in self.iter_scored(X, keep_maps=keep_maps):
            scores.append(batch_scores)
            maps.append(batch_maps)
            sizes.extend(batch_sizes)
        return np.concatenate(scores), np.concatenate(maps) if keep_maps else None, sizes
