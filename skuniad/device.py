"""Device, precision and memory: where skuniad computes, in which dtype, and what to do
when the accelerator runs out of memory; plus the process-wide CPU settings.

CPU runtime
-----------
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
import functools
import sys
import traceback
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch

from skuniad.errors import SkuniadError


class DeviceOutOfMemoryError(SkuniadError, MemoryError):
    """The accelerator ran out of memory; the message says which ``batch_size`` to try."""


def cpu_has_fast_bf16() -> bool:
    """True on CPUs with AMX or AVX-512 bf16 instructions."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def cuda_has_fast_bf16(device: torch.device) -> bool:
    """True when the GPU ``device`` computes bf16 in hardware: compute capability 8.0 or newer.

    ``torch.cuda.is_bf16_supported()`` is not this test: it also counts bf16
    emulated in fp32 (V100, T4: slower than fp32), and looks at the current
    GPU rather than the one given.
    """
    return tuple(torch.cuda.get_device_capability(device)) >= (8, 0)


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> cuda when available, else cpu; anything else must exist on this machine.

    A CUDA device always gets its index: ``"cuda"`` means the current CUDA
    device, named explicitly (``cuda:N``) so that everything keyed by the index
    (RNG forking, bf16 capability) looks at the GPU really used.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        resolved = None
    if resolved is None or resolved.type not in ("cpu", "cuda", "mps"):
        raise ValueError(
            f"device={device!r} is not a device skuniad runs on: use 'auto', 'cpu', 'cuda', "
            "'cuda:N' or 'mps'"
        )
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r} was requested but CUDA is not available")
        count = torch.cuda.device_count()
        if resolved.index is None:
            resolved = torch.device("cuda", torch.cuda.current_device())
        elif resolved.index >= count:
            raise ValueError(
                f"device={device!r} does not exist: this machine has {count} CUDA device(s), "
                f"cuda:0 to cuda:{count - 1}"
            )
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={device!r} was requested but MPS is not available")
    return resolved


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for ``precision`` on ``device``; None means fp32.

    ``"auto"``: bf16 on GPUs with bf16 hardware (:func:`cuda_has_fast_bf16`)
    and on CPUs with AVX-512 BF16 or AMX, fp32 elsewhere.
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if cuda_has_fast_bf16(device) else None
    return torch.bfloat16 if device.type == "cpu" and cpu_has_fast_bf16() else None


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Autocast context for ``dtype``, or nothing for fp32."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def made_current(device: torch.device | str):
    """Context in which CUDA ``device`` is the current GPU (nothing for other devices).

    Pinned host memory (DataLoader batches, staged features) belongs to the
    current GPU: without this, training on ``cuda:1`` would also open a
    context on ``cuda:0``, a GPU that may be another job's.
    """
    device = torch.device(device)
    return torch.cuda.device(device) if device.type == "cuda" else nullcontext()


@functools.cache
def compile_unavailable(device_type: str) -> str | None:
    """Why ``torch.compile`` cannot run on ``device_type`` here, or None when it can.

    Compiles and runs a one-line function once per process: TorchInductor
    needs a working C++ compiler for CPUs and Triton for GPUs, and the only
    sure test of a toolchain is to use it.
    """
    try:
        probe = torch.compile(lambda x: x * 2 + 1, dynamic=False)
        probe(torch.ones(8, device=device_type))
    except Exception as exc:  # noqa: BLE001 - any failure means "cannot compile here"
        lines = str(exc).strip().splitlines()
        return f"{type(exc).__name__}: {lines[0] if lines else ''}"
    return None


def compiled(module: torch.nn.Module, device: torch.device, enabled: bool) -> torch.nn.Module:
    """``torch.compile(module)`` when ``enabled`` and possible on ``device``, else ``module``.

    The compiled wrapper runs ``module``'s own weights; keep ``module`` for
    state dicts, saving and pickling (the wrapper's keys gain ``_orig_mod.``).
    Where the compiler cannot run (:func:`compile_unavailable`) a warning
    says why and ``module`` runs eagerly: compiling changes the speed, not
    the results, and a model must keep working on a machine without a C++
    compiler.
    """
    if not enabled:
        return module
    reason = compile_unavailable(device.type)
    if reason is not None:
        warnings.warn(
            f"compile=True, but torch.compile cannot run on {device.type} here ({reason}); "
            "running without compiling. Install a C++ compiler (CPU) or Triton (GPU), or set "
            "compile=False to silence this warning.",
            RuntimeWarning,
            stacklevel=2,
        )
        return module
    return torch.compile(module)


def inference_batch_size(batch_size: int) -> int:
    """Images per batch for feature extraction and scoring: 4 x ``batch_size``, at most 32."""
    return min(4 * batch_size, 32)


@contextmanager
def explain_out_of_memory(task: str, batch_size: int, *, inference: bool = False) -> Iterator[None]:
    """Re-raise a device out-of-memory error as one that names ``batch_size``.

    ``inference``: ``task`` runs :func:`inference_batch_size` images at once,
    not ``batch_size``. The raw CUDA traceback is dropped, its first sentence kept.
    """
    try:
        yield
    except torch.cuda.OutOfMemoryError as exc:
        images = inference_batch_size(batch_size) if inference else batch_size
        # the largest batch_size that halves the images per batch
        smaller = images // 8 if inference else batch_size // 2
        advice = (
            f"pass a smaller batch_size (now {batch_size}; try batch_size={smaller})"
            if smaller >= 1
            else f"even batch_size={batch_size} does not fit: lower image_size or use device='cpu'"
        )
        said = str(exc).split(". ")[0]
        # the original error's frames hold the batch's activations: drop them now, not
        # when the caller lets go of this error (a notebook keeps the last one)
        release_device_memory(exc)
        raise DeviceOutOfMemoryError(
            f"out of device memory while {task} ({images} images per batch): {advice}. "
            f"PyTorch said: {said}."
        ) from None


def release_device_memory(error: BaseException) -> None:
    """Free what ``error`` and the errors it chains keep alive, and return cached GPU memory.

    Clears the local variables of every finished frame in their tracebacks
    (tensors of the failed step, the feature cache, optimizer state), so a
    retry, e.g. with the smaller ``batch_size`` a
    :class:`DeviceOutOfMemoryError` suggests, starts from an empty device.
    Frames still running are left alone.
    """
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        traceback.clear_frames(error.__traceback__)
        error = error.__cause__ or error.__context__
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def releasing_device_memory(method):
    """On :class:`DeviceOutOfMemoryError`, free what the failed call's frames hold.

    The error's traceback keeps every frame it passed through, with their
    tensors (model, optimizer state, feature cache on the GPU); a notebook
    keeps the last error, so a retry with a smaller ``batch_size`` would run
    out of memory again.
    """

    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except DeviceOutOfMemoryError as error:
            release_device_memory(error)
            raise

    return wrapper


_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def tune_cpu_runtime() -> bool:
    """Keep freed memory in the process (glibc) and flush denormals; True if malloc was tuned."""
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
    return float(torch.full((1,), 1e-40, dtype=torch.float32) * 1.0) == 0.0


@contextmanager
def flushing_denormals() -> Iterator[None]:
    """Flush denormal floats to zero inside the block, then restore the mode found on entry.

    Blocks nest (scoring inside a training callback), and a process that
    turned flushing on (:func:`tune_cpu_runtime`, ``torch.set_flush_denormal``)
    keeps it after ``fit``.
    """
    previous = denormals_flushed()
    if not torch.set_flush_denormal(True):  # not supported on this CPU
        yield
        return
    try:
        yield
    finally:
        torch.set_flush_denormal(previous)
