"""Turning any accepted ``X`` into model-ready image tensors.

Accepted everywhere: an array ``(n, H, W, 3)``, ``(n, H, W, 4)`` or
``(n, H, W)``; a list of ``(H, W[, 1|3|4])`` arrays of any sizes; a list of
PIL images; a list of file paths. uint8 is scaled by 1/255, uint16 by
1/65535, floats must lie in [0, 1]. Grayscale becomes RGB, alpha is dropped,
palette and CMYK images are converted. Every error names the offending
index (and file). Files are read as a viewer shows them (EXIF orientation
applied); float files (32-bit TIFF) in [0, 1] are taken as they are, others
as 8-bit or 16-bit data stored as floats (see :func:`_float_file_scale`).

Two ways to bring an image to the model's square input (:data:`RESIZE_MODES`):
``"pil-uint8"`` is the reference implementation's (8-bit RGB resized with
Pillow's bilinear filter, then scaled to [0, 1]); ``"float"`` scales first and
resizes in float32 with torch's antialiased bilinear interpolation, keeping
the precision of 16-bit and float inputs.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from skuniad._choices import RESIZE_MODES
from skuniad.device import made_current
from skuniad.errors import InputTypeError, SkuniadError

MIN_IMAGE_SIDE = 8
_ORIENTATION = 0x0112  # the EXIF tag; values 5 to 8 swap height and width
MAX_IMAGE_PIXELS = 2 * 89_478_485
"""Files declaring more pixels are refused before any pixel is decoded (decompression bombs).

Pillow's own error limit, but held whatever ``PIL.Image.MAX_IMAGE_PIXELS`` is set to.
"""
_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}


class ImageLoadError(SkuniadError, ValueError):
    """An input image is missing, unreadable or not an image.

    ``reason`` is the message without its leading ``"image N: "``.
    """

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(f"image {index}: {reason}")
        self.index = index
        self.reason = reason


def check_images(X) -> Sequence:
    """Validate the container ``X`` and return it as an indexable sequence.

    Cheap checks only (types, shapes, dtypes, that files exist); pixels are
    read lazily by :func:`read_image`.
    """
    if hasattr(X, "tocsr") or type(X).__module__.startswith("scipy.sparse"):
        raise InputTypeError(
            "sparse matrices are not images; pass a dense array or a list of images"
        )
    if isinstance(X, (str, Path)):
        raise InputTypeError(f"X must be a list of images or paths, not a single path {str(X)!r}")
    if isinstance(X, Image.Image):
        raise InputTypeError("X must be a list of images; wrap a single PIL image in a list")
    if isinstance(X, torch.Tensor):
        X = _tensor_images(X)
    if isinstance(X, np.ndarray) and X.dtype.kind in "US":
        if X.ndim != 1:
            raise ValueError(f"an array of paths must be one-dimensional; got shape {X.shape}")
        X = [str(path) for path in X]
    if isinstance(X, np.ndarray) and X.dtype != object:
        if X.ndim == 3 and X.shape[-1] in (3, 4):
            # (n, H, W) grayscale images this narrow are refused anyway: it is one color image
            raise ValueError(
                f"X has shape {X.shape}, one {X.shape[0]}x{X.shape[1]} color image: pass a "
                "batch, image[None] (shape (1, H, W, channels)) or [image]"
            )
        if X.ndim not in (3, 4):
            raise ValueError(
                f"an image array X must be (n, H, W) or (n, H, W, channels); got shape {X.shape}"
            )
        if X.shape[0] == 0:
            raise ValueError("X is empty: no images given")
        _check_array(X[0], 0)
        _check_values(X, "X")
        return X
    if not isinstance(X, Sequence) and not (isinstance(X, np.ndarray) and X.dtype == object):
        raise InputTypeError(
            f"X must be an image array or a list of arrays, PIL images or paths; got {type(X)!r}"
        )
    if len(X) == 0:
        raise ValueError("X is empty: no images given")
    kinds = {_kind(item, i) for i, item in enumerate(X)}
    if len(kinds) > 1:
        first = _kind(X[0], 0)
        index = next(i for i, item in enumerate(X) if _kind(item, i) != first)
        raise InputTypeError(
            f"X mixes {first} and {_kind(X[index], index)} items (first at index {index}); "
            "use one kind of input per call"
        )
    for i, item in enumerate(X):
        if isinstance(item, np.ndarray):
            _check_array(item, i)
            _check_values(item, f"image {i}")
        elif isinstance(item, (str, Path)):
            path = Path(item)
            if path.is_dir():
                raise ImageLoadError(i, f"{path} is a directory, not an image file")
            if not path.exists():
                raise ImageLoadError(i, f"file not found: {path}")
    return X


def _tensor_images(X: torch.Tensor) -> np.ndarray:
    """A torchvision-style batch ``(N, C, H, W)``, C in 1, 3, 4, as a channels-last array."""
    if X.ndim != 4 or X.shape[1] not in (1, 3, 4):
        single = " (one image: pass image[None])" if X.ndim == 3 and X.shape[0] in (1, 3, 4) else ""
        raise ValueError(
            f"a torch tensor X must be a batch (N, 3, H, W), channels first, got shape "
            f"{tuple(X.shape)}{single}; for channels-last data pass tensor.numpy()"
        )
    array = X.detach().cpu().permute(0, 2, 3, 1).numpy()
    return array[..., 0] if array.shape[-1] == 1 else array


def _kind(item, index: int) -> str:
    if isinstance(item, np.ndarray):
        return "array"
    if isinstance(item, Image.Image):
        return "PIL image"
    if isinstance(item, (str, Path)):
        return "path"
    raise InputTypeError(
        f"image {index} has unsupported type {type(item).__name__}; "
        "expected a numpy array, a PIL image or a file path"
    )


def _check_array(image: np.ndarray, index: int) -> None:
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] not in (3, 4)):
        raise ValueError(
            f"image {index} has shape {image.shape}; expected (H, W), (H, W, 1), (H, W, 3) "
            "or (H, W, 4), channels last"
        )
    if min(image.shape[:2]) < MIN_IMAGE_SIDE:
        raise ValueError(
            f"image {index} is {image.shape[0]}x{image.shape[1]} pixels; images must be at "
            f"least {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE}"
        )
    if not (np.issubdtype(image.dtype, np.number) or image.dtype == bool):
        raise InputTypeError(f"image {index} has non-numeric dtype {image.dtype}")
    if np.issubdtype(image.dtype, np.complexfloating):
        raise InputTypeError(f"image {index} has complex dtype {image.dtype}")


def _check_values(array: np.ndarray, what: str) -> None:
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ValueError(f"{what} contains NaN or infinite values")
        low, high = float(array.min()), float(array.max())
        if low < 0 or high > 1:
            raise ValueError(
                f"{what} is a float image with values in [{low:.3g}, {high:.3g}]; float images "
                "must lie in [0, 1] (divide 8-bit data by 255 or pass it as uint8)"
            )
    elif array.dtype not in (np.uint8, np.uint16, bool) and array.size:
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 255:
            raise ValueError(
                f"{what} has {array.dtype} values in [{low}, {high}]; integer images must be "
                "8-bit (0-255) unless their dtype is uint16"
            )


def to_float_rgb(image: np.ndarray) -> np.ndarray:
    """A checked array image as float32 RGB ``(H, W, 3)`` in [0, 1]."""
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.dtype == np.uint16:
        out = image.astype(np.float32) / 65535.0
    elif np.issubdtype(image.dtype, np.floating):
        out = image.astype(np.float32, copy=False)
    elif image.dtype == bool:
        out = image.astype(np.float32)
    else:
        out = image.astype(np.float32) / 255.0
    if out.ndim == 2:
        out = np.repeat(out[..., None], 3, axis=-1)
    return out[..., :3]


def to_uint8_rgb(image: np.ndarray) -> np.ndarray:
    """A checked array image as uint8 RGB ``(H, W, 3)``; other dtypes are rounded to 8 bits."""
    if image.dtype != np.uint8:
        return np.rint(to_float_rgb(image) * 255.0).astype(np.uint8)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    return image[..., :3]


def read_image(
    item, index: int, max_side: int | None = None, *, as_uint8: bool = False
) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode one input into float32 RGB ``(h, w, 3)`` and its original size ``(H, W)``.

    ``max_side`` lets huge files be decoded at a reduced scale (bounded
    memory); the returned original size is always the full one.
    ``as_uint8``: return uint8 RGB instead (16-bit and float images rounded
    to 8 bits), with no float round trip for 8-bit ones.
    """
    if isinstance(item, np.ndarray):
        return (to_uint8_rgb(item) if as_uint8 else to_float_rgb(item)), item.shape[:2]
    if isinstance(item, Image.Image):
        return _pil_to_array(item, index, max_side, None, as_uint8)
    path = Path(item)
    try:
        with Image.open(path) as img:
            return _pil_to_array(img, index, max_side, path, as_uint8)
    except FileNotFoundError:
        raise ImageLoadError(index, f"file not found: {path}") from None
    except IsADirectoryError:
        raise ImageLoadError(index, f"{path} is a directory, not an image file") from None
    except UnidentifiedImageError:
        raise ImageLoadError(index, f"{path} is not a readable image file") from None
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(index, f"{path} is refused unread: {exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, ImageLoadError):
            raise
        raise ImageLoadError(index, f"cannot decode {path}: {exc}") from None


def image_size(item, index: int) -> tuple[int, int]:
    """``(height, width)`` of one checked input, reading only a file's header."""
    if isinstance(item, np.ndarray):
        return tuple(item.shape[:2])
    if isinstance(item, Image.Image):
        return item.height, item.width
    try:
        with Image.open(item) as img:
            swap = _orientation(img) >= 5
            return (img.width, img.height) if swap else (img.height, img.width)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        raise ImageLoadError(index, f"{item} is not a readable image file") from None


def _pil_to_array(
    img: Image.Image, index: int, max_side: int | None, path: Path | None, as_uint8: bool = False
):
    where = f"{path} " if path else ""
    width, height = img.size
    if min(width, height) < MIN_IMAGE_SIDE:
        raise ImageLoadError(
            index,
            f"{where}is {height}x{width} pixels; images must be at least "
            f"{MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE}",
        )
    if path is not None and width * height > MAX_IMAGE_PIXELS:
        raise ImageLoadError(
            index,
            f"{where}declares {height}x{width} pixels, more than the {MAX_IMAGE_PIXELS} "
            "skuniad decodes (a decompression bomb?); refused unread",
        )
    if max_side is not None and img.format == "JPEG":
        img.draft("RGB", (max_side, max_side))
    orientation = _orientation(img) if path is not None else 1
    if orientation > 1:  # as a camera or a viewer shows the photo
        img = ImageOps.exif_transpose(img)
        if orientation >= 5:
            height, width = width, height
    if img.mode in _SIXTEEN_BIT_MODES:
        array = np.asarray(img)
        if img.mode == "F":
            scale = _float_file_scale(array, index, where)
        else:
            scale = 65535.0 if img.mode.startswith("I;16") or array.max() > 255 else 255.0
        array = np.clip(array.astype(np.float32) / scale, 0, 1)
        return (to_uint8_rgb(array) if as_uint8 else to_float_rgb(array)), (height, width)
    if max_side is not None:
        factor = min(img.size) // (2 * max_side)
        if factor > 1:
            img = img.reduce(factor)
    if img.mode not in ("RGB", "L"):
        img = img.convert("RGB")  # palette, alpha, CMYK, 1-bit, ...
    array = np.asarray(img)
    return (to_uint8_rgb(array) if as_uint8 else to_float_rgb(array)), (height, width)


def _orientation(img: Image.Image) -> int:
    """The file's EXIF orientation, 1 (as stored) to 8; 1 when it has none."""
    if img.format == "PNG" and "exif" not in img.info:
        return 1  # Pillow would decode the whole PNG to look for a late EXIF chunk
    orientation = img.getexif().get(_ORIENTATION, 1)
    return orientation if orientation in range(1, 9) else 1


def _float_file_scale(array: np.ndarray, index: int, where: str) -> float:
    """What a float (mode "F") file's values are divided by to lie in [0, 1].

    Values in [0, 1] are taken as they are (the convention of float images and
    of float arrays); otherwise the file is read as 8-bit data (maximum up to
    255) or 16-bit data (up to 65535) stored as floats. Anything else is refused.
    """
    if not np.isfinite(array).all():
        raise ImageLoadError(index, f"{where}is a float image holding NaN or infinite values")
    low, high = float(array.min()), float(array.max())
    if low < 0 or high > 65535:
        raise ImageLoadError(
            index,
            f"{where}is a float image with values in [{low:.3g}, {high:.3g}]; float image "
            "files must lie in [0, 1], [0, 255] or [0, 65535]",
        )
    return 1.0 if high <= 1 else 255.0 if high <= 255 else 65535.0


def resize(image: np.ndarray, size: int) -> torch.Tensor:
    """Float RGB ``(h, w, 3)`` -> ``(3, size, size)`` tensor, bilinear with antialiasing."""
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).unsqueeze(0)
    if tensor.shape[-2:] != (size, size):
        tensor = F.interpolate(
            tensor, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
    return tensor[0].clamp_(0, 1)


def resize_uint8(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 RGB ``(h, w, 3)`` -> uint8 ``(size, size, 3)`` with Pillow's bilinear filter.

    What the reference's ``transforms.Resize(input_size, Image.BILINEAR)``
    does to the 8-bit image it reads: Pillow's own (antialiased, fixed-point)
    resampling, rounded to 8 bits.
    """
    if image.shape[:2] == (size, size):
        return image
    resized = Image.fromarray(np.ascontiguousarray(image)).resize(
        (size, size), Image.Resampling.BILINEAR
    )
    return np.asarray(resized)


def load_resized(
    item, index: int, size: int, mode: str = "pil-uint8"
) -> tuple[torch.Tensor, tuple[int, int]]:
    """One input as a ``(3, size, size)`` float32 tensor in [0, 1] and its original ``(H, W)``.

    ``mode`` is one of :data:`RESIZE_MODES`. ``"pil-uint8"`` decodes files at
    full resolution (as the reference does); ``"float"`` may decode huge
    files at a reduced scale first.
    """
    if mode == "pil-uint8":
        image, original = read_image(item, index, as_uint8=True)
        pixels = torch.tensor(resize_uint8(image, size))  # a copy: Pillow's arrays are read-only
        # as torchvision's ToTensor: float32, then / 255
        return pixels.permute(2, 0, 1).to(torch.float32).div(255), original
    if mode == "float":
        image, original = read_image(item, index, max_side=size)
        return resize(image, size), original
    raise ValueError(f"resize must be one of {RESIZE_MODES}, got {mode!r}")


class ImageDataset(torch.utils.data.Dataset):
    """Resized, normalised images from any accepted ``X`` (after :func:`check_images`)."""

    def __init__(self, X: Sequence, image_size: int, mean, std, resize: str = "pil-uint8") -> None:
        self.X = X
        self.image_size = image_size
        self.resize = resize
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.X)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, str]:
        """The image, its original size and "" ; or, unreadable, zeros, (0, 0) and why."""
        # returned, not raised: an exception from a DataLoader worker loses its type and
        # comes back as a multi-line traceback
        try:
            tensor, original = load_resized(self.X[index], index, self.image_size, self.resize)
        except ImageLoadError as exc:
            blank = torch.zeros(3, self.image_size, self.image_size)
            return blank, torch.tensor((0, 0)), str(exc)
        tensor = (tensor - self.mean) / self.std
        return tensor, torch.tensor(original), ""


def decoding_cores() -> list[int]:
    """The CPU cores this process's decoding workers may use.

    All the cores the process may run on, except under torchrun with several
    processes on the machine: each local rank then gets its own
    ``1 / LOCAL_WORLD_SIZE`` slice, so the ranks' workers do not all crowd
    onto the same cores.
    """
    try:
        cores = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = list(range(os.cpu_count() or 1))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if local_world > 1 and len(cores) >= local_world:
        share = len(cores) // local_world
        local_rank = int(os.environ.get("LOCAL_RANK", "0")) % local_world
        cores = cores[local_rank * share : (local_rank + 1) * share]
    return cores


def decoding_workers(device: torch.device | str = "cpu") -> int:
    """DataLoader workers for decoding files: the cores the model leaves free, at most 4.

    The cores are :func:`decoding_cores` (this rank's share under torchrun).
    A model on the CPU keeps ``torch.get_num_threads()`` cores busy; one on an
    accelerator, one. On a 2-core machine running the model with 2 threads,
    worker processes only compete with it: scoring 128 real-ad JPEGs ran at
    about 90 images/s decoding in the main process and 45-65 images/s with
    2 workers (benchmarks/infer_speed.py, docs/performance.md).
    """
    busy = torch.get_num_threads() if torch.device(device).type == "cpu" else 1
    return max(0, min(4, len(decoding_cores()) - busy))


def _keep_worker_on(cores: list[int], worker_id: int) -> None:
    """DataLoader worker start-up: stay on this rank's share of the cores."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cores)


def iter_batches(
    X: Sequence,
    image_size: int,
    mean,
    std,
    batch_size: int,
    device: torch.device | str = "cpu",
    resize: str = "pil-uint8",
) -> Iterator[tuple[torch.Tensor, list[tuple[int, int]]]]:
    """Yield ``(images (B, 3, S, S), original sizes)`` in order.

    ``resize``: one of :data:`RESIZE_MODES` (see :func:`load_resized`).

    Files are decoded in DataLoader worker processes when there are enough of
    them to be worth it and cores left free by the model on ``device``
    (:func:`decoding_workers`), so decoding overlaps with the model. For a
    CUDA ``device`` the batches come in pinned memory, ready for an
    asynchronous copy (``.to(device, non_blocking=True)``). An unreadable
    image raises :class:`ImageLoadError` with its index in ``X``.
    """
    for images, sizes, errors in iter_loaded(
        X, image_size, mean, std, batch_size, device, resize=resize
    ):
        failed = next((error for error in errors if error is not None), None)
        if failed is not None:
            raise failed
        yield images, sizes


def iter_loaded(
    X: Sequence,
    image_size: int,
    mean,
    std,
    batch_size: int,
    device: torch.device | str = "cpu",
    resize: str = "pil-uint8",
) -> Iterator[tuple[torch.Tensor, list[tuple[int, int] | None], list[ImageLoadError | None]]]:
    """:func:`iter_batches` that goes on past unreadable images.

    Yields ``(images, sizes, errors)``: an unreadable image is a blank tensor
    with size None and its :class:`ImageLoadError` in ``errors`` (None for the
    others).
    """
    dataset = ImageDataset(X, image_size, mean, std, resize)
    reads_files = len(X) > 0 and isinstance(X[0], (str, Path))
    workers = decoding_workers(device) if reads_files and len(X) > 2 * batch_size else 0
    shared = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) > 1
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        persistent_workers=False,
        # its own generator: a loader otherwise draws a seed from the global torch RNG,
        # and scoring between epochs would change the training that follows
        generator=torch.Generator(),
        pin_memory=torch.device(device).type == "cuda",
        worker_init_fn=functools.partial(_keep_worker_on, decoding_cores())
        if workers and shared
        else None,
    )
    begin = 0
    batches = iter(loader)
    while True:
        with made_current(device):  # pins for this GPU (the DataLoader pins for the current one)
            batch = next(batches, None)
        if batch is None:
            return
        images, sizes, messages = batch
        errors = [
            ImageLoadError(begin + i, message.partition(": ")[2]) if message else None
            for i, message in enumerate(messages)
        ]
        yield (
            images,
            [None if e else tuple(int(v) for v in s) for s, e in zip(sizes, errors, strict=True)],
            errors,
        )
        begin += len(images)
