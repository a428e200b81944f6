"""Frozen multi-scale CNN features, aligned to the stride-16 grid."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# ImageNet's channel statistics: what most pretrained CNNs, the lukemelas ones included, expect
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class FrozenBackbone(nn.Module):
    """A timm CNN, frozen, returning UniAD's aligned multi-scale feature map.

    The chosen stages (``out_indices``) are each resized to the grid of the
    deepest one (bilinear, ``align_corners=True``) and concatenated along
    channels. The network is cut after the last stage it needs, its
    parameters never require gradients, and it stays in eval mode even when
    the module around it trains (BatchNorm statistics are frozen).

    Parameters
    ----------
    backbone : str
        timm model name, optionally with a pretrained tag.
    out_indices : tuple of int
        Feature stages to use; ``(0, 1, 2, 3)`` gives strides 2, 4, 8, 16.
    backbone_weights : "imagenet", path or None
        See :mod:`skuniad.weights`.

    Attributes
    ----------
    channels : list of int
        Channels of each selected stage; ``sum(channels)`` is ``C``.
    stride : int
        Stride of the aligned grid.
    mean, std : tuple of float
        Input normalisation the weights expect (from timm's pretrained config).
    """

    def __init__(
        self,
        backbone: str = "tf_efficientnet_lite0",
        out_indices: tuple[int, ...] = (0, 1, 2, 3),
        backbone_weights: str | Path | None = "imagenet",
    ) -> None:
        super().__init__()
        from skuniad.weights import create_timm_model

        try:
            model, state = create_timm_model(
                backbone, backbone_weights, features_only=True, out_indices=tuple(out_indices)
            )
        except IndexError:  # timm's bare "list index out of range" for a stage it lacks
            raise ValueError(_missing_stage_message(backbone, out_indices)) from None
        _cut_after_last_stage(model)
        if state is not None:
            _load_needed(model, state, backbone)
        self.body = model
        self.channels = list(model.feature_info.channels())
        self.stride = max(model.feature_info.reduction())
        cfg = getattr(model, "pretrained_cfg", {}) or {}
        self.mean = tuple(cfg.get("mean", IMAGENET_MEAN))
        self.std = tuple(cfg.get("std", IMAGENET_STD))
        self.body.requires_grad_(False)
        self.body.eval()

    @property
    def out_channels(self) -> int:
        """``C``: channels of the aligned feature map."""
        return sum(self.channels)

    def grid_size(self, image_size: int) -> tuple[int, int]:
        """Feature grid ``(h, w)`` for square ``image_size`` inputs (one blank image through)."""
        parameter = next(self.body.parameters())
        blank = torch.zeros(1, 3, image_size, image_size, device=parameter.device)
        with torch.inference_mode():
            height, width = self.body(blank)[-1].shape[-2:]
        return int(height), int(width)

    def train(self, mode: bool = True) -> FrozenBackbone:
        """Keep the CNN in eval mode whatever ``mode`` is (frozen BatchNorm)."""
        super().train(mode)
        self.body.eval()
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images (B, 3, H, W) -> aligned features (B, C, H/stride, W/stride)."""
        with torch.no_grad():
            stages = self.body(images)
            size = stages[-1].shape[-2:]
            aligned = [
                s
                if s.shape[-2:] == size
                else F.interpolate(s, size=size, mode="bilinear", align_corners=True)
                for s in stages
            ]
            return torch.cat(aligned, dim=1)


def _cut_after_last_stage(model: nn.Module) -> None:
    # timm's FeatureListNet already stops at the last requested module, but its
    # EfficientNet feature class builds and runs every block.
    stage_out = getattr(model, "_stage_out_idx", None)
    if stage_out is not None and hasattr(model, "blocks"):
        model.blocks = model.blocks[: max(stage_out)]


def _load_needed(model: nn.Module, state: dict[str, torch.Tensor], backbone: str) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    if missing:
        raise ValueError(
            f"backbone weights do not fit {backbone!r}: {len(missing)} tensors missing, "
            f"e.g. {missing[:3]}"
        )
    wrong = [k for k in own if state[k].shape != own[k].shape]
    if wrong:
        k = wrong[0]
        raise ValueError(
            f"backbone weights do not fit {backbone!r}: {k} has shape "
            f"{tuple(state[k].shape)}, expected {tuple(own[k].shape)}"
        )
    model.load_state_dict({k: state[k] for k in own})


def _missing_stage_message(backbone: str, out_indices) -> str:
    import timm

    stages = len(timm.create_model(backbone, pretrained=False, features_only=True).feature_info)
    return (
        f"out_indices={tuple(out_indices)} names a stage that backbone {backbone!r} lacks: "
        f"it has {stages} feature stages, 0 to {stages - 1}"
    )
