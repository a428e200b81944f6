"""The machinery behind ``UniADDetector.fit``: which images train, and the training itself.

:func:`check_training_setup` checks, before any work, what would otherwise
fail only after feature extraction; :func:`partition` splits the images into
training and held-out calibration images and, under ``torchrun``, this
process's share of each;
:func:`train_networks` builds (or continues) the backbone and reconstruction
network, caches the backbone features and runs the training loop. The
estimator keeps only what it sets: fitted attributes and thresholds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from skuniad._checkpoint import check_checkpoint_file
from skuniad._inference import extract_features
from skuniad._spec import NetworkSpec
from skuniad._thresholds import check_group_sizes, validation_split
from skuniad.device import explain_out_of_memory, inference_batch_size
from skuniad.distributed import DistributedContext, distributed_context, seed_of_rank_zero
from skuniad.training import TrainingInterrupted, train_reconstruction
from skuniad.weights import check_weights_file


def check_training_setup(params: Mapping, *, warm: bool = False) -> None:
    """What would fail only after feature extraction, checked before any work.

    ``params`` are the detector's ``get_params()``. A new fit (not ``warm``)
    needs a backbone timm knows, a readable ``backbone_weights`` file (when
    one is named) and a neighbour window that leaves keys on the token grid
    (:meth:`NetworkSpec.check_buildable`); an existing ``checkpoint_path`` file
    must be a skuniad checkpoint (its format only: whether it belongs to this
    training is checked when it is resumed). Raises a ValueError (or
    :class:`~skuniad.weights.BackboneWeightsError`) naming the problem.
    """
    if not warm:  # a warm start keeps its fitted, already built networks
        NetworkSpec.from_params(params).check_buildable()
        check_weights_file(params["backbone_weights"])
    if params["checkpoint_path"] is not None:
        check_checkpoint_file(params["checkpoint_path"])


@dataclasses.dataclass
class Partition:
    """The images this process trains on and calibrates with."""

    train: Sequence
    held_out: Sequence | None
    calibration_groups: np.ndarray | None
    context: DistributedContext | None
    device: torch.device
    seed: int


def partition(
    X: Sequence, groups: np.ndarray | None, validation_fraction, seed: int, device: torch.device
) -> Partition:
    """Hold out ``validation_fraction`` of the images (of each group), then shard under torchrun.

    Without a fraction every image trains and calibrates. The groups of the
    calibration images are checked now, not after training. Under torchrun
    every rank takes rank 0's ``seed`` (the partition's ``seed``) first, so
    that all draw the same split and the same networks.
    """
    context = distributed_context(device)  # under torchrun: this rank's shard of X
    seed = seed_of_rank_zero(seed, context)
    train, held_out = validation_split(len(X), groups, validation_fraction, seed)
    X_held_out = [X[i] for i in held_out] if held_out is not None else None
    calibration_groups = groups if held_out is None or groups is None else groups[held_out]
    check_group_sizes(calibration_groups)
    if train is not None:
        X = [X[i] for i in train]
    if context is not None:
        device = context.device
        X = [X[i] for i in context.shard(len(X))]
        if X_held_out is not None:
            X_held_out = [X_held_out[i] for i in context.shard(len(X_held_out))]
    return Partition(X, X_held_out, calibration_groups, context, device, seed)


@dataclasses.dataclass
class Trained:
    """What :func:`train_networks` leaves: the networks, their features and loss curve."""

    backbone: torch.nn.Module
    model: torch.nn.Module
    features: torch.Tensor
    loss_curve: list[float]
    interrupted: TrainingInterrupted | None


def train_networks(
    params: dict,
    spec: NetworkSpec,
    part: Partition,
    *,
    seed: int,
    amp_dtype: torch.dtype | None,
    fingerprint: dict,
    warm_networks: tuple[torch.nn.Module, torch.nn.Module] | None = None,
    on_epoch_end: Callable | None = None,
) -> Trained:
    """Build the networks from ``spec`` (or continue ``warm_networks``) and train them.

    ``params`` are the detector's ``get_params()``. Randomness comes from
    ``seed`` only, in a forked RNG: every rank starts from the same weights,
    then draws its own jitter and dropout. ``on_epoch_end(backbone, model,
    features, epoch, loss)`` runs after every epoch. A Ctrl-C after at least
    one finished epoch is returned in ``interrupted`` with that epoch's
    weights; before, it is raised.
    """
    device, context = part.device, part.context
    devices = [device.index] if device.type == "cuda" else []  # resolved: always indexed
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        if warm_networks is not None:
            backbone = warm_networks[0]
        else:
            backbone = spec.build_backbone(params["backbone_weights"])
        backbone.to(device).to(memory_format=torch.channels_last)
        with explain_out_of_memory("extracting features", params["batch_size"], inference=True):
            features = extract_features(
                backbone,
                part.train,
                image_size=spec.image_size,
                batch_size=inference_batch_size(params["batch_size"]),
                device=device,
                amp_dtype=amp_dtype,
                verbose=params["verbose"],
                cache_dtype=params["cache_dtype"],
                cache_max_gb=params["cache_max_gb"],
                resize=spec.resize,
            )
        model = spec.build_model(
            features.shape[1:],
            dropout=params["dropout"],
            jitter_scale=params["jitter_scale"],
            jitter_prob=params["jitter_prob"],
        )
        if warm_networks is not None:  # same spec (checked by the caller), so the same shapes
            model.load_state_dict(warm_networks[1].state_dict())
        if context is not None:  # same initial weights, different jitter and dropout
            torch.manual_seed(seed + context.rank)
        hook = None
        if on_epoch_end is not None:

            def hook(epoch: int, loss: float) -> None:
                on_epoch_end(backbone, model, features, epoch, loss)

        try:
            curve = train_reconstruction(
                model,
                features,
                max_epochs=params["max_epochs"],
                batch_size=params["batch_size"],
                learning_rate=params["learning_rate"],
                weight_decay=params["weight_decay"],
                grad_clip=params["grad_clip"],
                lr_schedule=params["lr_schedule"],
                ema_decay=params["ema_decay"],
                device=device,
                amp_dtype=amp_dtype,
                verbose=params["verbose"],
                checkpoint_path=params["checkpoint_path"],
                checkpoint_every=params["checkpoint_every"],
                checkpoint_interval=params["checkpoint_interval"],
                fingerprint=fingerprint,
                distributed=context is not None,
                on_epoch_end=hook,
                compile=params["compile"],
            )
        except TrainingInterrupted as exc:
            if not exc.loss_curve:
                raise TrainingInterrupted(
                    f"{exc}: no epoch finished, the detector is left as it was", []
                ) from None
            return Trained(backbone, model, features, exc.loss_curve, exc)
    return Trained(backbone, model, features, curve, None)
