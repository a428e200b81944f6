"""The feature cache: backbone features of the training images, computed once per fit.

Features are stored in ``float32`` (training is then exactly the same as
recomputing the frozen backbone every step) or, to halve the memory,
``float16``/``bfloat16``. A cache larger than ``max_gb`` lives in a
memory-mapped temporary file instead of RAM (``TMPDIR`` decides where); the
file is unlinked as soon as it is mapped, so nothing is left behind even if
the process dies.
"""

from __future__ import annotations

import os
import tempfile

import torch

CACHE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class FeatureCache:
    """Fixed-size store of ``(n, C, h, w)`` features, in memory or on disk.

    Parameters
    ----------
    n : int
        Number of images.
    shape : tuple of int
        ``(C, h, w)`` of one image's features.
    dtype : {"float32", "float16", "bfloat16"}
        Storage precision.
    max_gb : float or None
        Largest in-memory size; above it the cache is disk-backed. None:
        always in memory.
    """

    def __init__(
        self, n: int, shape: tuple[int, ...], dtype: str = "float32", max_gb: float | None = None
    ) -> None:
        if dtype not in CACHE_DTYPES:
            raise ValueError(f"cache dtype must be one of {sorted(CACHE_DTYPES)}, got {dtype!r}")
        torch_dtype = CACHE_DTYPES[dtype]
        numel = n
        for size in shape:
            numel *= size
        nbytes = numel * torch_dtype.itemsize
        self.on_disk = max_gb is not None and nbytes > max_gb * 1024**3
        if self.on_disk:
            handle, path = tempfile.mkstemp(prefix="skuniad-features-", suffix=".bin")
            try:
                os.ftruncate(handle, nbytes)
                flat = torch.from_file(path, shared=True, size=numel, dtype=torch_dtype)
            finally:
                os.close(handle)
                os.unlink(path)  # the mapping stays valid; no file is left behind
            self.data = flat.view(n, *shape)
        else:
            self.data = torch.empty((n, *shape), dtype=torch_dtype)
        self._filled = 0

    def __len__(self) -> int:
        return len(self.data)

    @property
    def nbytes(self) -> int:
        return self.data.numel() * self.data.element_size()

    def append(self, features: torch.Tensor) -> None:
        """Store the next ``len(features)`` images' features (any device, any float dtype)."""
        end = self._filled + len(features)
        self.data[self._filled : end] = features.to("cpu", self.data.dtype)
        self._filled = end
