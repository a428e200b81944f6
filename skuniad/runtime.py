"""Process-wide CPU settings that the CLI and the benchmarks apply at start-up.

On the VMs we measured, glibc returns large freed tensor buffers to the
operating system and page-faults them back on the next batch, which halves
backbone throughput (lite0, batch 32: 56 -> 121 images/s once disabled).
``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647`` in the environment
does the same as :func:`tune_cpu_runtime` for any process. Flushing
denormals to zero speeds up the backward pass on pretrained features.

The library never changes malloc on its own; call :func:`tune_cpu_runtime`
in long-running scripts. ``fit`` and scoring do flush denormals while they
run (:func:`flushing_denormals`): without it, training on pretrained features
at lr 1e-4 was measured 10-40x slower per epoch on these CPUs.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Iterator
from contextlib import contextmanager

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def tune_cpu_runtime() -> bool:
    """Keep freed memory in the process (glibc) and flush denormals; True if malloc was tuned."""
    import torch

    torch.set_flush_denormal(True)
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(
        libc.mallopt(_M_TRIM_THRESHOLD, 2_147_483_647)
    )


def denormals_flushed() -> bool:
    """Whether this thread flushes denormal floats to zero now.

    torch can set the mode but not report it, so a denormal is multiplied by
    one: flushed, the product is zero.
    """
    import torch

    return float(torch.full((1,), 1e-40, dtype=torch.float32) * 1.0) == 0.0


@contextmanager
def flushing_denormals() -> Iterator[None]:
    """Flush denormal floats to zero inside the block, then restore the mode found on entry.

    Blocks nest (scoring inside a training callback), and a process that
    turned flushing on (:func:`tune_cpu_runtime`, ``torch.set_flush_denormal``)
    keeps it after ``fit``.
    """
    import torch

    previous = denormals_flushed()
    if not torch.set_flush_denormal(True):  # not supported on this CPU
        yield
        return
    try:
        yield
    finally:
        torch.set_flush_denormal(previous)
