"""Save and resume a training: the checkpoint file of ``train_reconstruction``.

A checkpoint holds the weights, optimizer and schedule states, the weight
average (``ema_decay``), the RNG states and the loss curve so far, with the
``fingerprint`` of the training that wrote it; a training resumes only from a
checkpoint with its own fingerprint.
"""

from __future__ import annotations

import os
import zipfile

import torch

from skuniad.persistence import atomic_write

CHECKPOINT_FORMAT = "skuniad-checkpoint"
CHECKPOINT_VERSION = 1


def save_checkpoint(path, fingerprint, curve, model, optimizer, scheduler, device, average=None):
    """Write the training state after ``len(curve)`` epochs to ``path``, atomically."""
    checkpoint = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "fingerprint": fingerprint,
        "epoch": len(curve),
        "loss_curve": list(curve),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "average": None if average is None else average.state_dict(),
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }
    with atomic_write(path) as temporary:
        torch.save(checkpoint, temporary)


def check_checkpoint_file(path) -> None:
    """Fail now, before any work, when ``path`` exists and is not a checkpoint this skuniad resumes.

    Reads the format only: the file is memory-mapped, its tensors are not read.
    """
    if os.path.exists(path):
        _read_checkpoint(path, mmap=True)


def _read_checkpoint(path, mmap: bool = False) -> dict:
    """The checkpoint's dict, its format and version checked."""
    try:
        if mmap and not zipfile.is_zipfile(path):  # torch.save writes zip files only
            raise ValueError("it is not a file torch.save writes")
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # noqa: BLE001 - any reader failure means "not a checkpoint"
        raise ValueError(
            f"cannot read the training checkpoint {path} ({exc}); delete it or set another "
            "checkpoint_path to start afresh"
        ) from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{path} is not a skuniad training checkpoint; delete it or set another "
            "checkpoint_path to start afresh"
        )
    if checkpoint.get("format_version") != CHECKPOINT_VERSION:
        raise ValueError(
            f"{path} has checkpoint format version {checkpoint.get('format_version')!r}; "
            f"this skuniad resumes version {CHECKPOINT_VERSION} only"
        )
    return checkpoint


def load_checkpoint(path, fingerprint, model, optimizer, scheduler, device, average=None):
    """Load the checkpoint at ``path`` into the training objects; return its loss curve."""
    checkpoint = _read_checkpoint(path)
    saved = checkpoint["fingerprint"]
    differences = [
        f"{key}={saved.get(key)!r} there, {fingerprint.get(key)!r} here"
        for key in sorted(saved.keys() | fingerprint.keys())
        if saved.get(key) != fingerprint.get(key)
    ]
    if differences:
        raise ValueError(
            f"the training checkpoint {path} was written for a different training ("
            + "; ".join(differences)
            + "); delete it or set another checkpoint_path to start afresh"
        )
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    if average is not None:  # the fingerprint's ema_decay matched: the average was saved
        average.load_state_dict(checkpoint["average"])
    torch.set_rng_state(checkpoint["rng_cpu"])
    if device.type == "cuda" and checkpoint["rng_cuda"] is not None:
        torch.cuda.set_rng_state(checkpoint["rng_cuda"], device)
    return list(checkpoint["loss_curve"])
