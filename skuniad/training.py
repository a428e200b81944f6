"""The training loop: feature cache, optimizer and schedule, progress, resume.

The backbone is frozen and inputs are not augmented, so its features are a
fixed function of each training image: they are computed once per fit
(:func:`skuniad._inference.extract_features`) and every epoch trains the
reconstruction network on that cache (:func:`train_reconstruction`). Jitter is
applied to the cached features, so the maths is the reference's.

Long trainings can write a checkpoint (weights, optimizer, schedule, RNG
states, loss curve; :mod:`skuniad._checkpoint`) every few epochs and resume
from it; because the feature cache is a deterministic function of the images,
a resumed CPU training is bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import copy
import inspect
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext

import torch
import torch.nn.functional as F

from skuniad._averaging import WeightAverage
from skuniad._checkpoint import load_checkpoint, save_checkpoint
from skuniad._choices import LR_SCHEDULES
from skuniad._progress import progress_bar
from skuniad.device import (
    autocast,
    compiled,
    explain_out_of_memory,
    flushing_denormals,
    made_current,
)
from skuniad.distributed import (
    RanksStopped,
    abort,
    all_reduce_sum,
    any_rank,
    interrupts_deferred,
    max_over_ranks,
)
from skuniad.errors import SkuniadError

# a training projected to take longer than this gets an estimate after its first epoch
LONG_TRAINING_SECONDS = 15 * 60
WARMUP_FRACTION = 0.05  # of all steps, for the "cosine" schedule


class TrainingDiverged(SkuniadError, FloatingPointError):
    """The training loss became NaN or infinite: the weights are lost, nothing is kept."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped training between two epochs' worth of weights.

    A ``KeyboardInterrupt``, so loops (``GridSearchCV``, ``cross_val_score``)
    stop as they would on any Ctrl-C. The model raising it holds the weights
    of the last finished epoch; ``loss_curve`` lists the finished epochs.
    """

    def __init__(self, message: str, loss_curve: list[float]) -> None:
        super().__init__(message)
        self.loss_curve = loss_curve


# The cache stays on the GPU for the whole training when it takes at most this fraction
# of the free memory: the rest is for the model, optimizer state and activations.
RESIDENT_CACHE_FRACTION = 0.5


def features_fit_on_device(features: torch.Tensor, device: torch.device) -> bool:
    """Whether ``features`` fit comfortably in ``device``'s free memory.

    True on the CPU; on CUDA when they take at most
    :data:`RESIDENT_CACHE_FRACTION` of the free memory
    (``torch.cuda.mem_get_info``); False whenever the free memory is unknown.
    """
    if device.type == "cpu":
        return True
    if device.type != "cuda":
        return False
    try:
        free, _ = torch.cuda.mem_get_info(device)
    except (RuntimeError, AssertionError):  # no driver, unsupported device
        return False
    return features.numel() * features.element_size() <= RESIDENT_CACHE_FRACTION * free


class FeatureFeed:
    """Training batches of the feature cache, delivered on ``device``.

    The cache is copied to the device once when it fits comfortably there
    (:func:`features_fit_on_device`); otherwise (a large or memory-mapped
    cache, a nearly full GPU) it stays in host memory, and each batch is
    gathered into pinned memory and copied asynchronously, so that the GPU
    needs room for one batch only and a smaller ``batch_size`` helps. Build
    it inside :func:`explain_out_of_memory`.
    """

    def __init__(self, features: torch.Tensor, device: torch.device) -> None:
        self.device = device
        self.data = features
        if device.type != "cpu" and features_fit_on_device(features, device):
            try:
                self.data = features.to(device)
            except torch.cuda.OutOfMemoryError:  # another process took the memory meanwhile
                self.data = features
                if torch.cuda.is_initialized():
                    torch.cuda.empty_cache()
        # compared by type: a plain torch.device("cuda") names the GPU the cache went to
        self.staged = self.data.device.type == "cpu" and device.type != "cpu"

    def __len__(self) -> int:
        return len(self.data)

    def order(self, order: torch.Tensor) -> torch.Tensor:
        """Move an epoch's image order to where the cache is, once per epoch, not per step."""
        return order.to(self.data.device)

    def batch(self, indices: torch.Tensor) -> torch.Tensor:
        """The features of ``indices`` (a slice of :meth:`order`'s result) on the device."""
        if not self.staged:
            return self.data[indices]
        with made_current(self.device):  # pinned memory of this GPU, not of the current one
            staged = torch.empty(
                (len(indices), *self.data.shape[1:]),
                dtype=self.data.dtype,
                pin_memory=self.device.type == "cuda",
            )
        torch.index_select(self.data, 0, indices, out=staged)
        return staged.to(self.device, non_blocking=True)


def lr_decay_epoch(max_epochs: int) -> int:
    """First (0-based) epoch trained at lr x 0.1: the reference's rule.

    The reference builds ``StepLR(step_size=S)`` with S = 80 % of the epochs
    and calls ``step(epoch)`` after each epoch, so epochs 0..S run at the
    full rate and the drop starts at epoch S + 1 (801 for 1000 epochs).
    """
    return max(1, int(0.8 * max_epochs)) + 1


def lr_factor(schedule: str, max_epochs: int, steps_per_epoch: int) -> Callable[[int], float]:
    """The multiplier of the base learning rate, as a function of the scheduler's count.

    ``"step"`` (the paper's): counts epochs; 1, then 0.1 from
    :func:`lr_decay_epoch` on. ``"cosine"``: counts optimizer steps; a linear
    warm-up over the first :data:`WARMUP_FRACTION` of all steps, then a
    half-cosine from 1 down to 0 at the last step.
    """
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {schedule!r}")
    if schedule == "step":
        decay_at = lr_decay_epoch(max_epochs)
        return lambda epoch: 0.1 if epoch >= decay_at else 1.0
    total = max_epochs * steps_per_epoch
    warmup = max(1, round(WARMUP_FRACTION * total))

    def cosine(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return cosine


@flushing_denormals()
def train_reconstruction(
    model: torch.nn.Module,
    features: torch.Tensor,
    *,
    max_epochs: int,
    batch_size: int,
    learning_rate: float,
    weight_decay: float,
    grad_clip: float,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    lr_schedule: str = "step",
    ema_decay: float | None = None,
    verbose: int = 0,
    on_epoch_end: Callable[[int, float], None] | None = None,
    checkpoint_path: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    checkpoint_interval: float = 0.0,
    fingerprint: dict | None = None,
    distributed: bool = False,
    compile: bool = False,
) -> list[float]:
    """Train ``model`` to rebuild ``features``; return the mean loss of each epoch.

    AdamW, gradient-norm clipping, the learning rate scaled by
    :func:`lr_factor` (``lr_schedule``), MSE against the clean features. Uses
    the global torch RNG (shuffling, jitter, dropout), which the caller seeds.
    With ``ema_decay``, ``model`` ends with the exponential moving average of
    its weights over the optimizer steps (:class:`WeightAverage`), which
    ``on_epoch_end`` also sees. A KeyboardInterrupt stops the loop: ``model``
    is left with the last finished epoch's weights and :class:`TrainingInterrupted` is raised with
    the curve so far.

    With ``checkpoint_path``, the training state is written there (atomically)
    after every ``checkpoint_every``-th epoch, or, with ``checkpoint_every``
    None, after an epoch that ends at least ``checkpoint_interval`` seconds
    after the last write (or the start), and after the last epoch. When the
    file exists, training resumes from it, provided it was written for the
    same ``fingerprint`` (JSON-like values describing the training) and the
    same number of images; otherwise a ValueError says what differs. The
    returned curve then includes the checkpoint's epochs.

    ``distributed``: under torchrun, ``features`` is this rank's shard; the
    model is wrapped in DistributedDataParallel, every rank runs the same
    number of steps per epoch (short shards repeat random images) and the
    loss curve is the mean over all ranks.

    ``compile``: the steps run ``torch.compile`` of the network (of the DDP
    wrapper under torchrun); ``model`` itself stays uncompiled, so its state
    dict, the checkpoints and the weights left behind are those of an eager
    training (:func:`skuniad.device.compiled`).
    """
    model.to(device).train()
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=learning_rate,
        betas=(0.9, 0.999),
        weight_decay=weight_decay,
        # one kernel per tensor: a faster clipping and update (figures in docs/performance.md)
        fused=device.type in ("cpu", "cuda"),
    )
    fingerprint = {**(fingerprint or {}), "n_images": len(features)}
    if distributed and checkpoint_path is not None:
        raise ValueError("checkpoint_path is not supported in distributed training")
    with explain_out_of_memory("training", batch_size):
        feed = FeatureFeed(features, device)
    network, images_per_epoch = model, len(feed)
    if distributed:
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [device] if device.type == "cuda" else None
        # the buffers (neighbor mask) are constants: no broadcast before every forward
        # (the option's name since torch 2.14; broadcast_buffers before, deprecated there)
        no_sync = (
            "forward_sync_buffers"
            if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
            else "broadcast_buffers"
        )
        network = DistributedDataParallel(model, device_ids=device_ids, **{no_sync: False})
        images_per_epoch = max_over_ranks(len(feed), device)
    network = compiled(network, device, compile)
    per_step = lr_schedule == "cosine"
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_factor(lr_schedule, max_epochs, math.ceil(images_per_epoch / batch_size))
    )
    average = None if ema_decay is None else WeightAverage(model, ema_decay)
    curve: list[float] = []
    if checkpoint_path is not None and os.path.exists(checkpoint_path):
        curve = load_checkpoint(
            checkpoint_path, fingerprint, model, optimizer, scheduler, device, average
        )
    finished = _scoring_state(model, average)
    first_epoch = len(curve)
    last_write = time.monotonic()
    with (
        progress_bar(verbose > 0) as progress,
        _stopping_all_ranks(distributed) as interrupted,
    ):
        task = progress.add_task("training", total=max_epochs, completed=len(curve))
        try:
            with explain_out_of_memory("training", batch_size):
                for epoch in range(first_epoch, max_epochs):
                    start = time.perf_counter()
                    curve.append(
                        _train_epoch(
                            network,
                            feed,
                            optimizer,
                            batch_size,
                            grad_clip,
                            amp_dtype,
                            images_per_epoch,
                            scheduler if per_step else None,
                            average,
                        )
                    )
                    if not math.isfinite(curve[-1]):  # before any checkpoint keeps it
                        raise TrainingDiverged(
                            f"training diverged in epoch {epoch + 1}: its mean loss is "
                            f"{curve[-1]}; lower learning_rate (now {learning_rate:g})"
                        )
                    if not per_step:
                        scheduler.step()
                    finished = _scoring_state(model, average)
                    if checkpoint_path is not None and _checkpoint_due(
                        len(curve), max_epochs, checkpoint_every, checkpoint_interval, last_write
                    ):
                        save_checkpoint(
                            checkpoint_path,
                            fingerprint,
                            curve,
                            model,
                            optimizer,
                            scheduler,
                            device,
                            average,
                        )
                        last_write = time.monotonic()
                    progress.update(task, advance=1, description=f"training (loss {curve[-1]:.4f})")
                    if verbose > 0:
                        progress.console.print(
                            f"epoch {epoch + 1}/{max_epochs}  loss {curve[-1]:.5f}  "
                            f"{time.perf_counter() - start:.1f} s"
                        )
                        if epoch == first_epoch:
                            _print_estimate(
                                progress.console, time.perf_counter() - start, max_epochs - epoch
                            )
                    if on_epoch_end is not None:
                        with average.applied() if average is not None else nullcontext():
                            on_epoch_end(epoch, curve[-1])
                        model.train()  # the callback may have scored in eval mode
                    if distributed and any_rank(interrupted[0], device):
                        raise RanksStopped
        except KeyboardInterrupt:
            model.load_state_dict(finished)
            model.eval()
            raise TrainingInterrupted(
                f"training interrupted after {len(curve)} of {max_epochs} epochs", curve
            ) from None
    if average is not None:
        model.load_state_dict(average.shadow)
    model.eval()
    return curve


def _scoring_state(model: torch.nn.Module, average: WeightAverage | None) -> dict:
    """A copy of the weights the model scores with: its own, or their average."""
    return copy.deepcopy(model.state_dict() if average is None else average.shadow)


def _checkpoint_due(
    epochs: int, max_epochs: int, every: int | None, interval: float, last_write: float
) -> bool:
    """After ``epochs`` epochs: the last, every ``every``-th, or ``interval`` s after a write."""
    if epochs == max_epochs:
        return True
    if every is not None:
        return epochs % every == 0
    return time.monotonic() - last_write >= interval


@contextmanager
def _stopping_all_ranks(distributed: bool) -> Iterator[list[bool]]:
    """Distributed training: defer Ctrl-C to the end of the epoch, abort the group on errors."""
    if not distributed:
        yield [False]
        return
    try:
        with interrupts_deferred() as interrupted:
            yield interrupted
    except (RanksStopped, TrainingInterrupted):
        raise  # a stop all ranks agreed on: the group stays usable (calibration gathers)
    except BaseException:
        abort()  # the other ranks may wait in a collective for this one
        raise


def _print_estimate(console, epoch_seconds: float, epochs: int) -> None:
    """After the first epoch of a long training: how long it will take, how to shorten it."""
    total = epoch_seconds * epochs
    if total <= LONG_TRAINING_SECONDS:
        return
    hours, minutes = divmod(round(total / 60), 60)
    duration = f"{hours} h {minutes} min" if hours else f"{minutes} min"
    console.print(
        f"estimated training time: about {duration} ({epochs} epochs at {epoch_seconds:.1f} s); "
        "for a shorter run lower max_epochs (skuniad: --epochs), or train on a GPU or with "
        "backbone='tf_efficientnet_lite0'"
    )


def _train_epoch(
    model: torch.nn.Module,
    feed: FeatureFeed,
    optimizer: torch.optim.Optimizer,
    batch_size: int,
    grad_clip: float,
    amp_dtype: torch.dtype | None,
    epoch_length: int | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    average: WeightAverage | None = None,
) -> float:
    """One pass over ``feed`` in a random order; the mean loss per image.

    ``epoch_length`` > ``len(feed)`` pads the epoch with randomly repeated images
    (distributed training: every rank must run the same number of steps).
    ``scheduler`` and ``average``, when given, are stepped after every optimizer step.
    """
    device, n = next(model.parameters()).device, len(feed)
    order = torch.randperm(n)
    if epoch_length is not None and epoch_length > n:
        order = torch.cat([order, torch.randint(n, (epoch_length - n,))])
    # one copy per epoch: a per-step copy to the GPU would block the CPU every step
    order = feed.order(order)
    total = torch.zeros((), device=device)
    for begin in range(0, len(order), batch_size):
        batch = feed.batch(order[begin : begin + batch_size]).float()
        with autocast(device, amp_dtype):
            reconstruction = model(batch)
        loss = F.mse_loss(reconstruction.float(), batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if average is not None:
            average.update()
        total += loss.detach() * len(batch)
    summed = all_reduce_sum(torch.stack([total, torch.tensor(float(len(order)), device=device)]))
    return float(summed[0]) / float(summed[1])
