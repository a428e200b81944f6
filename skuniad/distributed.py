"""Data-parallel training under ``torchrun`` (DistributedDataParallel).

``torchrun --nproc_per_node N -m skuniad fit ...`` (or any script calling
``UniADDetector.fit`` under torchrun) trains one model with N processes: each
rank extracts the backbone features of its own shard of the images
(``X[rank::N]``), gradients are averaged across ranks every step (so the
weights stay identical on all of them), thresholds are calibrated on the
scores of all images gathered from every rank, and the CLI writes the model
on rank 0 only. ``nccl`` is used on GPUs, ``gloo`` on CPUs. ``batch_size`` is
per process, as in the reference (8 per GPU).
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistributedContext:
    rank: int
    world_size: int
    local_rank: int

    def shard(self, n: int) -> list[int]:
        """Indices of the images this rank handles."""
        return list(range(self.rank, n, self.world_size))


def distributed_context() -> DistributedContext | None:
    """The torchrun context (initialising the process group), or None outside torchrun."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return None
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    return DistributedContext(
        dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))
    )


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
