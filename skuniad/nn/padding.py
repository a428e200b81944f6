"""TF "same" padding fixed for one input size, as the reference's EfficientNet pads.

timm's ``tf_*`` models pad their strided convolutions from each input's
size; the reference implementation's lukemelas EfficientNet computes that
padding once, for the network's native resolution (380 px for B4). At 224 px
the two differ in one B4 layer: the stride-2 5 x 5 depthwise convolution
opening the 56-channel stage pads (2, 2) instead of (1, 2).
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

# lukemelas EfficientNet's native resolution: the input size its static padding is built for
NATIVE_RESOLUTION = {
    "b0": 224,
    "b1": 240,
    "b2": 260,
    "b3": 300,
    "b4": 380,
    "b5": 456,
    "b6": 528,
    "b7": 600,
    "b8": 672,
}


def reference_variant(backbone: str) -> str:
    """``"b4"`` for ``tf_efficientnet_b4[.tag]``; other backbones have no reference layout."""
    match = re.fullmatch(r"tf_efficientnet_(b\d)(?:\..+)?", backbone)
    if match is None or match.group(1) not in NATIVE_RESOLUTION:
        raise ValueError(
            f"backbone {backbone!r} has no reference checkpoint layout: the reference "
            "implementation builds EfficientNet-B0...B8 (timm tf_efficientnet_b0...b8) only"
        )
    return match.group(1)


class StaticSamePadConv2d(nn.Conv2d):
    """A convolution whose TF "same" padding is fixed in advance.

    The counterpart of lukemelas' ``Conv2dStaticSamePadding``: ``static_padding``
    (a :class:`~torch.nn.ZeroPad2d`) then an unpadded convolution. It shares the
    weights of the convolution it replaces, so state-dict names do not change.
    """

    def __init__(self, conv: nn.Conv2d, padding: tuple[int, int, int, int]) -> None:
        super().__init__(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=0,
            dilation=conv.dilation,
            groups=conv.groups,
            bias=conv.bias is not None,
            device="meta",
        )
        self.weight = conv.weight
        self.bias = conv.bias
        self.static_padding = nn.ZeroPad2d(padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.static_padding(x)
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def same_padding(
    size: tuple[int, int], kernel: tuple[int, int], stride: tuple[int, int], dilation=(1, 1)
) -> tuple[int, int, int, int]:
    """TF "same" padding (left, right, top, bottom) of a convolution on a ``size`` input."""
    from timm.layers.padding import pad_same_arg  # timm loads when a backbone is built

    return tuple(pad_same_arg(list(size), list(kernel), list(stride), list(dilation)))


def static_padding_for(backbone: str, static_padding_size) -> int | None:
    """The input size whose padding ``backbone`` fixes, or None for timm's per-input padding.

    ``static_padding_size`` is the detector parameter: ``"auto"`` means the
    native resolution for ``tf_efficientnet_b0`` ... ``b8`` (the networks the
    reference builds) and None for any other backbone; an int or None is kept.
    """
    if static_padding_size != "auto":
        return static_padding_size
    try:
        return NATIVE_RESOLUTION[reference_variant(backbone)]
    except ValueError:  # not a network the reference builds
        return None


def use_static_same_padding(
    model: nn.Module, reference_size: int
) -> dict[str, tuple[int, int, int, int]]:
    """Fix the padding of every dynamic "same" convolution as for a ``reference_size`` input.

    Each such convolution of ``model`` (a timm network) is replaced in place
    by a :class:`StaticSamePadConv2d` padding as the reference does;
    parameters and their names are unchanged. Returns the padding fixed for
    each replaced convolution, by module name.
    """
    from timm.layers import Conv2dSame

    dynamic = {name: m for name, m in model.named_modules() if isinstance(m, Conv2dSame)}
    sizes: dict[str, tuple[int, int]] = {}

    def record_size(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            sizes[name] = tuple(args[0].shape[-2:])

        return hook

    hooks = [module.register_forward_pre_hook(record_size(n)) for n, module in dynamic.items()]
    # shapes only: run the network on meta tensors, no arithmetic
    meta = {
        name: torch.empty_like(t, device="meta")
        for name, t in [*model.named_parameters(), *model.named_buffers()]
    }
    try:
        with torch.no_grad():
            torch.func.functional_call(
                model, meta, (torch.empty(1, 3, reference_size, reference_size, device="meta"),)
            )
    finally:
        for hook in hooks:
            hook.remove()
    fixed = {}
    for name, conv in dynamic.items():
        if name not in sizes:  # a stage the network never runs
            continue
        fixed[name] = same_padding(sizes[name], conv.kernel_size, conv.stride, conv.dilation)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, StaticSamePadConv2d(conv, fixed[name]))
    return fixed
