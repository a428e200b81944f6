"""Static TF "same" padding: the reference EfficientNet's, fixed for its native size."""

import math

import torch
import torch.nn.functional as F
from torch import nn

from skuniad import UniADDetector
from skuniad._spec import NetworkSpec
from skuniad.nn import padding


def _dynamic_paddings(model: nn.Module, size: int) -> dict:
    """timm's padding of each dynamic "same" conv for a ``size`` input (meta run)."""
    from timm.layers import Conv2dSame
    from timm.layers.padding import get_same_padding

    paddings, hooks = {}, []
    for name, module in model.named_modules():
        if isinstance(module, Conv2dSame):

            def record(module, args, name=name):
                (ih, iw), (kh, kw) = args[0].shape[-2:], module.kernel_size
                (sh, sw), (dh, dw) = module.stride, module.dilation
                h, w = get_same_padding(ih, kh, sh, dh), get_same_padding(iw, kw, sw, dw)
                paddings[name] = (w // 2, w - w // 2, h // 2, h - h // 2)

            hooks.append(module.register_forward_pre_hook(record))
    model(torch.empty(1, 3, size, size, device="meta"))
    for hook in hooks:
        hook.remove()
    return paddings


def test_reference_padding_changes_exactly_one_b4_layer_at_224():
    import timm

    with torch.device("meta"):
        body = timm.create_model("tf_efficientnet_b4", features_only=True, out_indices=(0, 1, 2, 3))
    body.blocks = body.blocks[:5]  # up to stride 16, as FrozenBackbone
    dynamic = _dynamic_paddings(body, 224)
    static = padding.use_static_same_padding(body, 380)
    assert (
        set(static)
        == set(dynamic)
        == {
            "conv_stem",
            "blocks.1.0.conv_dw",
            "blocks.2.0.conv_dw",
            "blocks.3.0.conv_dw",
        }
    )
    changed = {name for name in static if static[name] != dynamic[name]}
    assert changed == {"blocks.2.0.conv_dw"}
    assert body.blocks[2][0].conv_dw.kernel_size == (5, 5)
    assert static["blocks.2.0.conv_dw"] == (2, 2, 2, 2) and dynamic["blocks.2.0.conv_dw"] == (
        1,
        2,
        1,
        2,
    )


def test_reference_padding_changes_only_that_layers_output_at_224():
    from timm.layers.padding import pad_same

    torch.manual_seed(0)
    spec = NetworkSpec.from_params(
        UniADDetector(backbone="tf_efficientnet_b4", static_padding_size=380).get_params()
    )
    backbone = spec.build_backbone(weights=None)
    seen = {}

    def record(name):
        def hook(module, args, output):
            seen[name] = (module, args[0], output)

        return hook

    for name, module in backbone.body.named_modules():
        if isinstance(module, padding.StaticSamePadConv2d):
            module.register_forward_hook(record(name))
    backbone(torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0)))
    assert len(seen) == 4
    differs = set()
    for name, (conv, x, out) in seen.items():
        # what timm's dynamic padding computes from the same input
        dynamic = pad_same(x, conv.kernel_size, conv.stride, conv.dilation)
        timm_out = F.conv2d(dynamic, conv.weight, conv.bias, conv.stride, 0, 1, conv.groups)
        if not torch.equal(out, timm_out):
            differs.add(name)
    assert differs == {"blocks.2.0.conv_dw"}
    conv, x, out = seen["blocks.2.0.conv_dw"]
    expected = F.conv2d(F.pad(x, (2, 2, 2, 2)), conv.weight, None, 2, 0, 1, conv.groups)
    assert torch.equal(out, expected)


def test_auto_padding_is_the_references_for_efficientnet_b_only():
    assert padding.static_padding_for("tf_efficientnet_b4.aa_in1k", "auto") == 380
    assert padding.static_padding_for("tf_efficientnet_b0", "auto") == 224
    for backbone in ("tf_efficientnet_lite0", "efficientnet_b4", "resnet18"):
        assert padding.static_padding_for(backbone, "auto") is None
    assert padding.static_padding_for("tf_efficientnet_b4", None) is None
    assert padding.static_padding_for("tf_efficientnet_lite0", 300) == 300
    with torch.device("meta"):
        spec = NetworkSpec.from_params(UniADDetector(backbone="tf_efficientnet_b4").get_params())
        backbone = spec.build_backbone(weights=None)
    conv = backbone.body.blocks[2][0].conv_dw
    assert isinstance(conv, padding.StaticSamePadConv2d)
    assert conv.static_padding.padding == (2, 2, 2, 2)


def test_same_padding_matches_the_reference_formula():
    # lukemelas Conv2dStaticSamePadding: pad = max((ceil(i/s) - 1) * s + (k - 1) * d + 1 - i, 0)
    assert padding.same_padding((95, 95), (5, 5), (2, 2)) == (2, 2, 2, 2)
    assert padding.same_padding((56, 56), (5, 5), (2, 2)) == (1, 2, 1, 2)
    assert padding.same_padding((380, 190), (3, 3), (2, 1)) == (1, 1, 0, 1)
    assert padding.same_padding((7, 7), (1, 1), (1, 1)) == (0, 0, 0, 0)
    for size in range(8, 40):
        total = sum(padding.same_padding((size, size), (3, 3), (2, 2))[:2])
        assert math.ceil(size / 2) == (size + total - 3) // 2 + 1
