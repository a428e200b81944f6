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
# torch cannot report the flag, so skuniad tracks what it set: the state outside any
# flushing_denormals block (True once tune_cpu_runtime ran) and how deep the blocks nest
_flush_outside = False
_flush_depth = 0


def tune_cpu_runtime() -> bool:
    """Keep freed memory in the process (glibc) and flush denormals; True if malloc was tuned."""
    import torch

    global _flush_outside
    _flush_outside = torch.set_flush_denormal(True)
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(
        libc.mallopt(_M_TRIM_THRESHOLD, 2_147_483_647)
    )


@contextmanager
def flushing_denormals() -> Iterator[None]:
    """Flush denormal floats to zero inside the block, then restore the state outside it.

    Blocks nest (scoring inside a training callback): only the outermost one
    restores, to off, or to on after :func:`tune_cpu_runtime`.
    """
    import torch

    global _flush_depth
    if not torch.set_flush_denormal(True):  # not supported on this CPU
        yield
        return
    _flush_depth += 1
    try:
        yield
    finally:
        _flush_depth -= 1
        if _flush_depth == 0:
            torch.set_flush_denormal(_flush_outside)
