"""The UniAD authors' reference checkpoints: read them into a detector, write them back.

The authors' training script saves ``ckpt.pth.tar``: a ``torch.save``'d dict
with ``epoch``, ``arch`` (the network config: a list of ``easydict`` objects
named ``backbone``, ``neck`` and ``reconstruction``), ``state_dict``
(DistributedDataParallel keys ``module.backbone.*``, ``module.reconstruction.*``),
``best_metric`` and ``optimizer``.

- :func:`read_reference_checkpoint` loads one with ``torch.load(weights_only=True)``:
  tensors and plain containers only. The ``easydict.EasyDict`` config objects
  are allow-listed as :class:`collections.OrderedDict`, so reading runs no
  code from the file and needs no ``easydict`` package.
- :func:`detector_params` turns ``arch`` into :class:`~skuniad.UniADDetector`
  parameters; :func:`~skuniad._efficientnet_names.backbone_from_reference` and
  :func:`reconstruction_from_reference` rename the weights (lukemelas
  EfficientNet names onto timm's ``tf_efficientnet_b*``; the reference's
  transformer names onto :class:`~skuniad.nn.UniADReconstruction`'s, see
  :data:`RECONSTRUCTION_NAMES`). Their inverses write the reference layout
  back (:func:`write_reference_checkpoint`).
- The reference's lukemelas EfficientNet fixes its TF "same" padding for the
  network's native resolution (380 px for B4), where timm computes it from
  each input. :func:`~skuniad.nn.padding.use_static_same_padding` reproduces
  the fixed padding; at 224 px it changes one B4 layer (the stride-2 5 x 5
  depthwise convolution opening the 56-channel stage pads (2, 2) instead of
  (1, 2)).
"""

from __future__ import annotations

import collections
import itertools
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from skuniad._efficientnet_names import (
    backbone_from_reference,
    backbone_to_reference,
    timm_block_names,
)
from skuniad._spec import NetworkSpec, check_params
from skuniad.device import resolve_device
from skuniad.nn.backbone import IMAGENET_MEAN, IMAGENET_STD
from skuniad.nn.padding import NATIVE_RESOLUTION, reference_variant
from skuniad.persistence import atomic_write

# reference name -> skuniad name, most specific first; {i}: layer index, {j}: 1 or 2
RECONSTRUCTION_NAMES = (
    ("transformer.encoder.layers.{i}.linear{j}.", "encoder.{i}.ffn.linear{j}."),
    ("transformer.encoder.layers.{i}.", "encoder.{i}."),
    ("transformer.decoder.layers.{i}.learned_embed.weight", "decoder.{i}.layer_queries"),
    ("transformer.decoder.layers.{i}.linear{j}.", "decoder.{i}.ffn.linear{j}."),
    ("transformer.decoder.layers.{i}.", "decoder.{i}."),
    ("transformer.decoder.norm.", "decoder_norm."),
    ("input_proj.", "input_proj."),
    ("output_proj.", "output_proj."),
    ("pos_embed.", "pos_embed."),
)

_EXPECTED = (
    "a UniAD reference checkpoint (the authors' ckpt.pth.tar: a torch.save'd dict with "
    "'arch', the list of network configs, and 'state_dict' with 'module.backbone.*' and "
    "'module.reconstruction.*' tensors)"
)
# the reference's config objects, read as ordered dicts: no code runs and easydict is not needed
_CONFIG_CLASS = (collections.OrderedDict, "easydict.EasyDict")


# ------------------------------------------------------------------ reading
@dataclass
class ReferenceCheckpoint:
    """The parts of a reference checkpoint that skuniad uses, as plain Python and tensors."""

    arch: list[dict]
    backbone: dict[str, torch.Tensor]
    reconstruction: dict[str, torch.Tensor]
    epoch: int


def read_reference_checkpoint(path: str | os.PathLike) -> ReferenceCheckpoint:
    """Read a reference ``ckpt.pth.tar`` without executing code from it.

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    ValueError
        The file is not a reference checkpoint; the message says what was expected.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals([_CONFIG_CLASS]):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any reader failure means "not a checkpoint"
        raise ValueError(f"{path} is not {_EXPECTED}: {_why_unreadable(path, exc)}") from None
    if not isinstance(checkpoint, Mapping) or not {"arch", "state_dict"} <= set(checkpoint):
        found = sorted(map(str, checkpoint)) if isinstance(checkpoint, Mapping) else None
        what = f"a dict with keys {found}" if found is not None else type(checkpoint).__name__
        raise ValueError(f"{path} is not {_EXPECTED}: it holds {what}")
    state = checkpoint["state_dict"]
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise ValueError(f"{path} is not {_EXPECTED}: its 'state_dict' is not a dict of tensors")
    parts: dict[str, dict[str, torch.Tensor]] = {"backbone": {}, "reconstruction": {}}
    for key, value in state.items():
        # DistributedDataParallel adds "module."; a checkpoint saved without it reads the same
        head, _, name = key.removeprefix("module.").partition(".")
        if head in parts:
            parts[head][name] = value
        elif head != "neck":
            raise ValueError(
                f"{path} is not {_EXPECTED}: unexpected tensor {key!r} "
                "(expected module.backbone.*, module.reconstruction.*)"
            )
    for part, tensors in parts.items():
        if not tensors:
            raise ValueError(f"{path} is not {_EXPECTED}: it has no 'module.{part}.*' tensors")
    arch = _plain(checkpoint["arch"])
    if not isinstance(arch, list) or not all(isinstance(net, dict) for net in arch):
        raise ValueError(f"{path} is not {_EXPECTED}: its 'arch' is not a list of configs")
    epoch = checkpoint.get("epoch", 0)
    return ReferenceCheckpoint(
        arch=arch,
        backbone=parts["backbone"],
        reconstruction=parts["reconstruction"],
        epoch=int(epoch) if isinstance(epoch, int) else 0,
    )


def _plain(value):
    """Config objects (any mapping) as plain dicts, tuples as lists, recursively."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _why_unreadable(path: Path, error: Exception) -> str:
    with open(path, "rb") as f:
        head = f.read(16)
    if len(head) >= 10 and head[8:10] == b'{"':
        return "it looks like a safetensors file (a skuniad model? read it with UniADDetector.load)"
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    refused = next((line for line in lines if "GLOBAL" in line), None)
    if refused is not None:
        return (
            "it holds objects other than tensors and the reference's configs, which are never "
            f"unpickled here ({refused.split('. ')[0]})"
        )
    if "WeightsUnpickler error" in str(error):
        return "it is not a torch.save file, or it is damaged"
    return f"it is damaged or of another kind ({type(error).__name__}: {lines[0] if lines else ''})"


# ------------------------------------------------------------- arch <-> params
def detector_params(arch: list[dict]) -> tuple[dict, int]:
    """:class:`~skuniad.UniADDetector` parameters described by a reference ``arch``.

    Returns the parameters and the native resolution of the EfficientNet (the
    input size for which the reference fixes its padding).

    Raises
    ------
    ValueError
        ``arch`` lacks a value skuniad needs or describes a network skuniad does
        not build (another backbone, sine position embedding, pre-norm, a mask
        on only some attentions...).
    """
    nets = {net.get("name"): net for net in arch}
    backbone_type = _config(nets, "backbone", "type")
    match = re.fullmatch(r"(?:.*\.)?efficientnet_(b\d)", str(backbone_type))
    if match is None or match.group(1) not in NATIVE_RESOLUTION:
        raise ValueError(
            f"reference backbone {backbone_type!r} is not supported: skuniad imports "
            "EfficientNet-B0...B8 checkpoints (type models.backbones.efficientnet_b*)"
        )
    variant = match.group(1)
    strides = _config(nets, "backbone", "kwargs", "outstrides")
    out_indices = tuple(_stage_index(s) for s in strides)
    neck_strides = _config(nets, "neck", "kwargs", "outstrides")
    if len(neck_strides) != 1:
        raise ValueError(f"the reference neck must have one output stride, got {neck_strides}")
    outstride = neck_strides[0]
    if outstride != max(strides):
        raise ValueError(
            f"the reference neck aligns features to stride {outstride}, but skuniad aligns "
            f"them to the deepest selected stage (stride {max(strides)})"
        )
    rec = _config(nets, "reconstruction", "kwargs")
    height, width = _config(nets, "reconstruction", "kwargs", "feature_size")
    if height != width:
        raise ValueError(f"skuniad needs a square feature grid, the arch has {height}x{width}")
    for key, supported in (
        ("pos_embed_type", "learned"),
        ("activation", "relu"),
        ("normalize_before", False),
    ):
        if rec.get(key, supported) != supported:
            raise ValueError(f"reference reconstruction with {key}={rec[key]!r} is not supported")
    params = {
        "backbone": _timm_name(variant),
        "out_indices": out_indices,
        "image_size": int(height * outstride),
        "hidden_dim": int(_config(nets, "reconstruction", "kwargs", "hidden_dim")),
        "num_heads": int(_config(nets, "reconstruction", "kwargs", "nhead")),
        "num_encoder_layers": int(_config(nets, "reconstruction", "kwargs", "num_encoder_layers")),
        "num_decoder_layers": int(_config(nets, "reconstruction", "kwargs", "num_decoder_layers")),
        "dim_feedforward": int(_config(nets, "reconstruction", "kwargs", "dim_feedforward")),
        "dropout": float(rec.get("dropout", 0.1)),
        "neighbor_size": _neighbor_size(rec.get("neighbor_mask")),
    }
    jitter = rec.get("feature_jitter")
    if jitter:
        params["jitter_scale"] = float(jitter["scale"])
        params["jitter_prob"] = float(jitter["prob"])
    else:
        params["jitter_prob"] = 0.0
    return params, NATIVE_RESOLUTION[variant]


def reference_arch(detector) -> list[dict]:
    """The reference ``arch`` (plain dicts) describing a fitted ``detector``.

    It is what the reference's ``update_config`` and ``ModelHelper`` leave in
    the config they save.
    """
    network = detector.network_spec_
    variant = reference_variant(network.backbone)
    body = detector.backbone_.body
    channels = [int(c) for c in body.feature_info.channels()]
    strides = [int(s) for s in body.feature_info.reduction()]
    # the reference names a stage by the flat index of its last block
    stage_ends = list(itertools.accumulate(len(stage) for stage in body.blocks))
    outblocks = [stage_ends[int(n.split(".")[1])] - 1 for n in body.feature_info.module_name()]
    channels_total, height, width = detector.feature_shape_
    if height * max(strides) != network.image_size:
        raise ValueError(
            f"the reference needs an input size divisible by the feature stride "
            f"{max(strides)}; this detector has image_size={network.image_size}"
        )
    if network.layer_queries != "every":
        raise ValueError(
            "the reference has learned queries in every decoder layer; this detector has "
            f"layer_queries={network.layer_queries!r}, which its checkpoint cannot describe"
        )
    k = network.neighbor_size
    return [
        {
            "name": "backbone",
            "type": f"models.backbones.efficientnet_{variant}",
            "frozen": True,
            "kwargs": {"pretrained": True, "outblocks": outblocks, "outstrides": strides},
        },
        {
            "name": "neck",
            "prev": "backbone",
            "type": "models.necks.MFCN",
            "kwargs": {
                "outstrides": [max(strides)],
                "outplanes": [int(channels_total)],
                "inplanes": channels,
                "instrides": strides,
            },
        },
        {
            "name": "reconstruction",
            "prev": "neck",
            "type": "models.reconstructions.UniAD",
            "kwargs": {
                "pos_embed_type": "learned",
                "hidden_dim": int(network.hidden_dim),
                "nhead": int(network.num_heads),
                "num_encoder_layers": int(network.num_encoder_layers),
                "num_decoder_layers": int(network.num_decoder_layers),
                "dim_feedforward": int(network.dim_feedforward),
                "dropout": float(detector.dropout),
                "activation": "relu",
                "normalize_before": False,
                "feature_jitter": {
                    "scale": float(detector.jitter_scale),
                    "prob": float(detector.jitter_prob),
                },
                "neighbor_mask": None
                if k is None
                else {"neighbor_size": [int(k), int(k)], "mask": [True, True, True]},
                "save_recon": False,
                "initializer": {"method": "xavier_uniform"},
                "inplanes": [int(channels_total)],
                "instrides": [max(strides)],
                "feature_size": [int(height), int(width)],
            },
        },
    ]


def _config(nets: dict, *keys: str):
    value = nets
    for depth, key in enumerate(keys):
        if not isinstance(value, Mapping) or key not in value or value[key] is None:
            where = ".".join(keys[: depth + 1])
            raise ValueError(f"the checkpoint's arch lacks {where}")
        value = value[key]
    return value


def _stage_index(stride) -> int:
    # EfficientNet stages at strides 2, 4, 8, 16, 32 are timm's feature indices 0...4
    if stride not in (2, 4, 8, 16, 32):
        raise ValueError(f"unsupported backbone output stride {stride!r} in the arch")
    return int(math.log2(stride)) - 1


def _neighbor_size(mask_config) -> int | None:
    if not mask_config:
        return None
    applied = [bool(m) for m in mask_config.get("mask", [True, True, True])]
    if not any(applied):
        return None
    if not all(applied):
        raise ValueError(
            f"the arch masks only some attentions (mask={applied}); skuniad applies the "
            "neighbor mask to all three or none"
        )
    size = mask_config["neighbor_size"]
    height, width = (size, size) if isinstance(size, int) else size
    if height != width or height % 2 == 0:
        raise ValueError(f"skuniad needs an odd square neighbor window, the arch has {size}")
    return int(height)


def _timm_name(variant: str) -> str:
    # the lukemelas B* weights are TF's AutoAugment checkpoints: timm's .aa_in1k tags
    import timm

    name = f"tf_efficientnet_{variant}"
    return f"{name}.aa_in1k" if timm.list_pretrained(f"{name}.aa_in1k") else name


# ------------------------------------------------------------- weight names
def _template_regex(template: str) -> re.Pattern:
    pattern = re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{j\}", r"(?P<j>\d)")
    return re.compile(pattern)


def _rename(state: dict[str, torch.Tensor], pairs) -> dict[str, torch.Tensor]:
    rules = [(_template_regex(source), target) for source, target in pairs]
    renamed = {}
    for key, value in state.items():
        for regex, target in rules:
            match = regex.match(key)
            if match is not None:
                renamed[target.format(**match.groupdict()) + key[match.end() :]] = value
                break
        else:
            renamed[key] = value  # left for the strict load to report
    return renamed


def reconstruction_from_reference(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Reference ``reconstruction.*`` names (without the prefix) -> UniADReconstruction names."""
    return _rename(state, RECONSTRUCTION_NAMES)


def reconstruction_to_reference(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """UniADReconstruction names -> the reference's ``reconstruction.*`` names."""
    return _rename(state, [(ours, theirs) for theirs, ours in RECONSTRUCTION_NAMES])


def _load_exactly(module: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    own = module.state_dict()
    # checkpoints from old torch versions lack BatchNorm's num_batches_tracked
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    wrong = [
        f"{k} {tuple(state[k].shape)} (expected {tuple(own[k].shape)})"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} tensors missing, e.g. {missing[:3]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensors, e.g. {unexpected[:3]}")
    if wrong:
        problems.append(f"wrong shapes: {wrong[:3]}")
    if problems:
        raise ValueError(
            f"the checkpoint's {what} weights do not fit the network its arch describes: "
            + "; ".join(problems)
        )
    module.load_state_dict({**own, **state})


# ------------------------------------------------------------ import / export
def detector_from_reference(
    cls,
    path: str | os.PathLike,
    *,
    device: str = "auto",
    calibration_images=None,
    reference_padding: bool = True,
):
    """A fitted ``cls`` (UniADDetector) from a reference checkpoint; see its classmethod."""
    checkpoint = read_reference_checkpoint(path)
    params, native_resolution = detector_params(checkpoint.arch)
    detector = cls(
        **params,
        resize="pil-uint8",  # the reference resizes the 8-bit image, then scales it
        static_padding_size=native_resolution if reference_padding else None,
        precision="fp32",
        device=device,
    )
    check_params(detector.get_params())
    spec = detector.network_spec_ = NetworkSpec.from_params(detector.get_params())
    resolved = resolve_device(device)
    with torch.random.fork_rng(devices=[]):
        backbone = spec.build_backbone(weights=None)
    state = backbone_from_reference(checkpoint.backbone, timm_block_names(backbone.body))
    _load_exactly(backbone.body, state, "backbone")
    backbone.mean, backbone.std = IMAGENET_MEAN, IMAGENET_STD
    height = width = params["image_size"] // backbone.stride
    with torch.random.fork_rng(devices=[]):
        model = spec.build_model(
            (backbone.out_channels, height, width),
            dropout=detector.dropout,
            jitter_scale=detector.jitter_scale,
            jitter_prob=detector.jitter_prob,
        )
    _load_exactly(model, reconstruction_from_reference(checkpoint.reconstruction), "reconstruction")
    detector.backbone_ = backbone.to(resolved).to(memory_format=torch.channels_last)
    detector.model_ = model.to(resolved).eval()
    detector.device_ = resolved
    detector.feature_shape_ = (backbone.out_channels, height, width)
    detector.n_epochs_ = checkpoint.epoch
    detector.loss_curve_ = []
    if calibration_images is not None:
        detector.calibrate(calibration_images)
    return detector


def write_reference_checkpoint(detector, path: str | os.PathLike) -> None:
    """Write a fitted detector's weights in the reference layout (see the classmethod)."""
    arch = reference_arch(detector)
    body = detector.backbone_.body
    state = {}
    for name, value in backbone_to_reference(body.state_dict(), timm_block_names(body)).items():
        state[f"module.backbone.{name}"] = value.detach().cpu().contiguous()
    for name, value in reconstruction_to_reference(detector.model_.state_dict()).items():
        state[f"module.reconstruction.{name}"] = value.detach().cpu().contiguous()
    checkpoint = {
        "epoch": int(detector.n_epochs_),
        "arch": arch,
        "state_dict": state,
        "best_metric": float("nan"),
        "optimizer": None,
    }
    with atomic_write(path) as temporary:
        torch.save(checkpoint, temporary)
