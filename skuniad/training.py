"""The training loop: feature cache, optimizer and schedule, precision, progress.

The backbone is frozen and inputs are not augmented, so its features are a
fixed function of each training image: they are computed once per fit
(:func:`extract_features`) and every epoch trains the reconstruction network
on that cache (:func:`train_reconstruction`). Jitter is applied to the cached
features, so the maths is the reference's.
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F

from skuniad._progress import progress_bar
from skuniad.io import iter_batches
from skuniad.nn.backbone import FrozenBackbone


def cpu_has_fast_bf16() -> bool:
    """True on CPUs with AMX or AVX-512 bf16 instructions."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> cuda when available, else cpu."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was requested but CUDA is not available")
    return resolved


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for ``precision`` on ``device``; None means fp32."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if device.type == "cpu" and cpu_has_fast_bf16() else None


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Autocast context for ``dtype``, or nothing for fp32."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def extract_features(
    backbone: FrozenBackbone,
    X: Sequence,
    *,
    image_size: int,
    batch_size: int,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    verbose: int = 0,
    description: str = "features",
) -> torch.Tensor:
    """Run the frozen backbone once over ``X``; return (N, C, h, w) float32 on CPU."""
    chunks = []
    with progress_bar(verbose > 0) as progress:
        task = progress.add_task(description, total=len(X))
        for images, _ in iter_batches(X, image_size, backbone.mean, backbone.std, batch_size):
            with torch.inference_mode(), autocast(device, amp_dtype):
                features = backbone(images.to(device, memory_format=torch.channels_last))
            chunks.append(features.float().cpu())
            progress.advance(task, len(images))
    return torch.cat(chunks)


def lr_decay_epoch(max_epochs: int) -> int:
    """First epoch trained at lr x 0.1 (epoch 800 of the reference's 1000)."""
    return max(1, int(0.8 * max_epochs))


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
    verbose: int = 0,
    on_epoch_end: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Train ``model`` to rebuild ``features``; return the mean loss of each epoch.

    AdamW, gradient-norm clipping, lr x 0.1 from :func:`lr_decay_epoch` on,
    MSE against the clean features. Uses the global torch RNG (shuffling,
    jitter, dropout), which the caller seeds. A KeyboardInterrupt stops the
    loop: ``model`` is left with the last finished epoch's weights and the
    curve so far is returned, with a warning.
    """
    model.to(device).train()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=learning_rate, betas=(0.9, 0.999), weight_decay=weight_decay
    )
    decay_at = lr_decay_epoch(max_epochs)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda epoch: 0.1 if epoch >= decay_at else 1.0
    )
    data = features.to(device)
    n = len(data)
    curve: list[float] = []
    finished = copy.deepcopy(model.state_dict())
    with progress_bar(verbose > 0) as progress:
        task = progress.add_task("training", total=max_epochs)
        try:
            for epoch in range(max_epochs):
                start = time.perf_counter()
                order = torch.randperm(n)
                total = torch.zeros((), device=device)
                for begin in range(0, n, batch_size):
                    batch = data[order[begin : begin + batch_size].to(device)]
                    with autocast(device, amp_dtype):
                        reconstruction = model(batch)
                    loss = F.mse_loss(reconstruction.float(), batch.float())
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                    optimizer.step()
                    total += loss.detach() * len(batch)
                scheduler.step()
                curve.append(float(total) / n)
                finished = copy.deepcopy(model.state_dict())
                progress.update(task, advance=1, description=f"training (loss {curve[-1]:.4f})")
                if verbose > 0:
                    progress.console.print(
                        f"epoch {epoch + 1}/{max_epochs}  loss {curve[-1]:.5f}  "
                        f"{time.perf_counter() - start:.1f} s"
                    )
                if on_epoch_end is not None:
                    on_epoch_end(epoch, curve[-1])
        except KeyboardInterrupt:
            model.load_state_dict(finished)
            warnings.warn(
                f"training interrupted: stopped after {len(curve)} of {max_epochs} epochs; "
                "the model keeps the last finished epoch's weights",
                RuntimeWarning,
                stacklevel=3,
            )
    model.eval()
    return curve


@torch.inference_mode()
def reconstruction_maps(
    model: torch.nn.Module,
    features: torch.Tensor,
    *,
    image_size: int,
    batch_size: int,
    device: torch.device,
    amp_dtype: torch.dtype | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Image scores (N,) and token-level maps (N, h, w) for cached features."""
    from skuniad.nn.transformer import anomaly_map, image_score

    model.eval()
    scores, maps = [], []
    for begin in range(0, len(features), batch_size):
        batch = features[begin : begin + batch_size].to(device)
        with autocast(device, amp_dtype):
            reconstruction = model(batch)
        scores.append(image_score(anomaly_map(batch, reconstruction, image_size)).cpu())
        maps.append(anomaly_map(batch, reconstruction, None).cpu())
    return torch.cat(scores).numpy(), torch.cat(maps).numpy()
