"""Data-parallel training under ``torchrun`` (DistributedDataParallel).

``torchrun --nproc_per_node N -m skuniad fit ...`` (or any script calling
``UniADDetector.fit`` under torchrun) trains one model with N processes: each
rank extracts the backbone features of its own shard of the images
(``X[rank::N]``), gradients are averaged across ranks every step (so the
weights stay identical on all of them), thresholds are calibrated on the
scores of all images gathered from every rank, and the CLI writes the model
on rank 0 only. ``batch_size`` is per process, as in the reference (8 per GPU).

Devices and backends: with ``device="cuda"`` (or ``"auto"`` on a GPU machine)
each rank uses GPU ``LOCAL_RANK`` modulo the GPUs it sees, so one GPU per
process (``CUDA_VISIBLE_DEVICES`` set per task) gives ``cuda:0`` everywhere;
that GPU is made the current one before any collective runs. The backend
follows the device the ranks train on, not what the machine has: ``gloo``
for ``device="cpu"``, ``nccl`` for GPUs, the same rule on every node
(:data:`BACKEND_VARIABLE` overrides it). NCCL refuses two ranks on one GPU:
for that, set ``SKUNIAD_DIST_BACKEND=gloo``. A process group the caller
initialised before ``fit`` is used as it is.

Randomness: ``fit`` draws its seed on rank 0 and every rank uses that one
(:func:`seed_of_rank_zero`), so that without ``random_state`` the ranks
still hold out the same images and build the same networks.

Stopping: Ctrl-C (SIGINT) during distributed training does not stop a rank
on its own, which would leave the others waiting in a collective; every
rank stops after the same epoch (:func:`interrupts_deferred`). Any other
error that escapes training on one rank aborts its process group
(:func:`abort`), so that the process can exit at once and torchrun stops
the other ranks.
"""

from __future__ import annotations

import gc
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistributedContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device = torch.device("cpu")

    def shard(self, n: int) -> list[int]:
        """Indices of the images this rank handles."""
        return list(range(self.rank, n, self.world_size))


def local_device(device: torch.device, local_rank: int) -> torch.device:
    """The device of the rank with ``local_rank``: GPU ``local_rank`` modulo the visible GPUs.

    Non-CUDA devices are returned unchanged.
    """
    if device.type != "cuda":
        return device
    return torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))


BACKEND_VARIABLE = "SKUNIAD_DIST_BACKEND"
"""Environment variable that names the process group's backend (``gloo``, ``nccl``)."""


def launched() -> bool:
    """Whether this process is one of several started by torchrun; no side effects."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available()


def process_group_backend(device: torch.device) -> str:
    """The backend for training on ``device``: :data:`BACKEND_VARIABLE`, else by device type.

    ``nccl`` for CUDA, ``gloo`` otherwise: decided from the device type only,
    never from this machine's GPU or process counts, so that every node of a
    run picks the same one.
    """
    chosen = os.environ.get(BACKEND_VARIABLE, "").strip().lower()
    if chosen:
        if chosen not in ("gloo", "nccl"):
            raise ValueError(f"{BACKEND_VARIABLE}={chosen!r}: use 'gloo' or 'nccl'")
        return chosen
    return "nccl" if device.type == "cuda" else "gloo"


def distributed_context(device: torch.device | None = None) -> DistributedContext | None:
    """The torchrun context, or None outside torchrun.

    ``device`` is the resolved training device (the CPU when None). Under
    torchrun, this rank's device (:func:`local_device`) becomes the current
    CUDA device and the process group is initialised for it, unless the
    caller already did.
    """
    if not launched():
        return None
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = local_device(torch.device("cpu") if device is None else device, local_rank)
    if device.type == "cuda":
        # object collectives and barrier() run on the current device, cuda:0 unless set
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = process_group_backend(device)
        # device_id binds NCCL to this rank's GPU (and connects it now, not at the first use)
        options = {"device_id": device} if backend == "nccl" else {}
        try:
            dist.init_process_group(backend=backend, **options)
        except RuntimeError as exc:  # DistBackendError included
            if "Duplicate GPU" not in str(exc):
                raise
            raise ValueError(
                "two processes of this torchrun share one GPU, which NCCL refuses: start at "
                f"most one process per GPU, or set {BACKEND_VARIABLE}=gloo on every machine"
            ) from exc
    elif device.type == "cpu" and dist.get_backend() == "nccl":
        raise ValueError(
            "the process group uses nccl, which cannot train on the CPU (device='cpu'); "
            "initialise it with backend='gloo' or train on the GPUs"
        )
    return DistributedContext(dist.get_rank(), dist.get_world_size(), local_rank, device)


def seed_of_rank_zero(seed: int, context: DistributedContext | None) -> int:
    """Rank 0's ``seed`` on every rank (``seed`` itself outside torchrun)."""
    if context is None:
        return seed
    value = torch.tensor([seed], dtype=torch.int64, device=context.device)
    dist.broadcast(value, src=0)
    return int(value.item())


def is_main_process() -> bool:
    """True outside torchrun and on rank 0 under it."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    """Sum ``value`` over ranks (identity outside distributed training)."""
    if dist.is_available() and dist.is_initialized():
        value = value.clone()
        dist.all_reduce(value)
    return value


def max_over_ranks(value: int, device: torch.device) -> int:
    if not (dist.is_available() and dist.is_initialized()):
        return value
    tensor = torch.tensor([value], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())


def gather_shards(values: np.ndarray, context: DistributedContext | None) -> np.ndarray:
    """Reassemble per-image ``values`` computed on each rank's ``X[rank::world]`` shard."""
    if context is None:
        return values
    pieces: list = [None] * context.world_size
    dist.all_gather_object(pieces, values)
    n = sum(len(piece) for piece in pieces)
    out = np.empty((n, *values.shape[1:]), dtype=values.dtype)
    for rank, piece in enumerate(pieces):
        out[rank :: context.world_size] = piece
    return out


def finish() -> None:
    """Wait for every rank, then close the process group (no-op outside torchrun).

    Call it once the main process has written its files: a rank that exits
    while another still holds the group open can abort it.
    """
    if dist.is_available() and dist.is_initialized():
        # a DistributedDataParallel wrapper left in reference cycles still holds the
        # group: free it now rather than at interpreter exit, after the group is gone
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()


class RanksStopped(KeyboardInterrupt):
    """Every rank stopped training after the same epoch, because one was interrupted."""


@contextmanager
def sigterm_as_interrupt() -> Iterator[list[bool]]:
    """Inside the block SIGTERM stops as Ctrl-C does; ``received[0]`` says whether it came.

    Schedulers and containers stop a job with SIGTERM: training then keeps
    the last finished epoch, as on Ctrl-C (a KeyboardInterrupt), instead of
    dying with nothing written. Under torchrun :func:`interrupts_deferred`
    defers it to the end of the epoch, as it does Ctrl-C. No-op outside the
    main thread.
    """
    received = [False]
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def interrupt(signum, frame) -> None:
        received[0] = True
        raise KeyboardInterrupt

    interrupt.received = received  # found by interrupts_deferred
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield received
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def interrupts_deferred(enabled: bool = True) -> Iterator[list[bool]]:
    """Turn SIGINT (Ctrl-C) into a request, ``flag[0] = True``, inside the block.

    SIGTERM too, inside :func:`sigterm_as_interrupt`.

    Distributed training checks the request of every rank after each epoch
    (:func:`any_rank`) and stops all of them together. A KeyboardInterrupt
    raised in one rank alone would leave the others blocked in the next
    collective until the process group's timeout. No-op when not
    ``enabled`` or outside the main thread (only it receives signals).
    """
    requested = [False]
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield requested
        return

    terminate = signal.getsignal(signal.SIGTERM)
    deferred = [signal.SIGINT] + ([signal.SIGTERM] if hasattr(terminate, "received") else [])

    def request(signum, frame) -> None:
        requested[0] = True
        if signum == signal.SIGTERM:
            terminate.received[0] = True

    previous = {signum: signal.signal(signum, request) for signum in deferred}
    try:
        yield requested
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is True on at least one (a collective)."""
    return max_over_ranks(int(flag), device) > 0


def abort() -> None:
    """Tear the process group down after an error on this rank (no-op outside torchrun).

    The other ranks may be waiting in a collective: an NCCL group is aborted
    rather than shut down cleanly (which would wait for them), a gloo group's
    connections close so that the peers fail instead of waiting. The process
    can then exit at once, and torchrun stops the remaining ranks.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    if dist.get_backend() == "nccl" and hasattr(dist.distributed_c10d, "_abort_process_group"):
        dist.distributed_c10d._abort_process_group()
    else:
        dist.destroy_process_group()
