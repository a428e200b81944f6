"""Checks of a model file's contents, made before anything is built from them.

A model file may come from anyone, so :func:`skuniad.persistence.load_detector`
trusts none of it: the JSON metadata is checked field by field (types,
ranges), and the networks the parameters describe are first laid out on
torch's ``"meta"`` device, which allocates no memory, so that every saved
tensor's name, shape and dtype is compared with theirs before a real network
(whose size the file chose) is built. Each problem is one
:class:`ModelFileError` naming the file and the field.
"""

from __future__ import annotations

import dataclasses
import math
from numbers import Integral, Real
from pathlib import Path

import torch

from skuniad._spec import NetworkSpec
from skuniad.errors import ModelFileError

MAX_TOKENS = 128 * 128
"""The largest feature grid (height x width) a model file may declare.

Attention masks hold ``tokens ** 2`` values (1.3 GB at this size, a 2048 px
input at stride 16), and they are built from the grid, not read from the file.
"""


def _is_int(value) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _is_held_out(held_out) -> bool:
    """The values of the normal images ``fit`` held out, as a model file keeps them."""
    if not isinstance(held_out, dict) or not isinstance(held_out.get("scores"), list):
        return False
    scores, maxima, groups = (held_out.get(k) for k in ("scores", "map_maxima", "groups"))
    columns = [maxima] + ([] if groups is None else [groups])
    if not all(isinstance(c, list) and len(c) == len(scores) for c in columns):
        return False
    numbers = all(_is_number(v) and math.isfinite(v) for v in scores + maxima)
    return numbers and all(isinstance(g, str) or _is_int(g) for g in groups or [])


def check_fitted(path: Path, metadata: dict) -> None:
    """The ``fitted`` and ``backbone`` sections hold values of the types a model has."""
    fitted, norm = metadata["fitted"], metadata["backbone"]

    def refuse(field: str, value, expected: str):
        shown = repr(value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise ModelFileError(f"{path}: {field} is {shown}, not {expected}")

    for name in ("n_epochs_", "loss_curve_", "feature_shape_"):
        if name not in fitted:
            raise ModelFileError(f"{path}: the skuniad metadata lacks fitted.{name}")
    if not _is_int(fitted["n_epochs_"]) or fitted["n_epochs_"] < 0:
        refuse("fitted.n_epochs_", fitted["n_epochs_"], "a count of epochs")
    curve = fitted["loss_curve_"]
    if not isinstance(curve, list) or not all(_is_number(v) for v in curve):
        refuse("fitted.loss_curve_", curve, "a list of numbers")
    shape = fitted["feature_shape_"]
    if not (isinstance(shape, list) and len(shape) == 3 and all(_is_int(v) for v in shape)):
        refuse("fitted.feature_shape_", shape, "[channels, height, width]")
    if min(shape) < 1 or shape[1] * shape[2] > MAX_TOKENS:
        refuse("fitted.feature_shape_", shape, f"a grid of 1 to {MAX_TOKENS} tokens")
    offset, pixel = fitted.get("offset_"), fitted.get("pixel_threshold_")
    if offset is not None and not _is_number(offset):
        refuse("fitted.offset_", offset, "a number or null")
    if offset is not None and not _is_number(pixel):
        refuse("fitted.pixel_threshold_", pixel, "a number (the model has an image threshold)")
    groups = fitted.get("group_thresholds", [])
    if not isinstance(groups, list):
        refuse("fitted.group_thresholds", groups, "a list of [group, image, pixel] thresholds")
    for entry in groups:
        if not (
            isinstance(entry, list)
            and len(entry) == 3
            and isinstance(entry[0], str | Integral)
            and not isinstance(entry[0], bool)
            and all(_is_number(v) for v in entry[1:])
        ):
            refuse("an entry of fitted.group_thresholds", entry, "[group, image, pixel]")
    if groups and offset is None:
        raise ModelFileError(f"{path}: fitted.group_thresholds are set but offset_ is null")
    held_out = fitted.get("held_out")
    if held_out is not None and not _is_held_out(held_out):
        refuse(
            "fitted.held_out",
            held_out,
            "{scores, map_maxima: lists of finite numbers, groups: null or one per score}",
        )
    for name in ("mean", "std"):
        values = norm.get(name)
        if not (isinstance(values, list) and len(values) == 3 and all(map(_is_number, values))):
            refuse(f"backbone.{name}", values, "3 numbers, one per colour channel")


def check_tensors(
    path: Path, spec: NetworkSpec, feature_shape: tuple[int, int, int], tensors: dict
) -> None:
    """Every saved tensor has the name, shape and dtype the described networks give it.

    The networks are laid out on the ``"meta"`` device (no memory); the image
    size must give the saved feature grid.
    """
    layers = spec.num_encoder_layers + spec.num_decoder_layers
    if layers > len(tensors):  # each layer holds weights: an absurd count cannot match
        raise ModelFileError(
            f"{path}: the parameters describe {layers} transformer layers, but the file "
            f"holds only {len(tensors)} tensors"
        )
    values = sum(tensor.numel() for tensor in tensors.values())
    for name in ("hidden_dim", "dim_feedforward"):  # each is the side of a saved weight
        if getattr(spec, name) > values:
            raise ModelFileError(
                f"{path}: {name}={getattr(spec, name)} is more than the {values} values the "
                "file holds"
            )
    # the neighbour mask is a buffer computed from values, not saved: it changes no tensor
    layout = dataclasses.replace(spec, neighbor_size=None)
    with torch.device("meta"):
        backbone = layout.build_backbone(weights=None)
        grid = backbone.grid_size(spec.image_size)
        if (backbone.out_channels, *grid) != tuple(feature_shape):
            raise ModelFileError(
                f"{path}: image_size={spec.image_size} gives {backbone.out_channels} x "
                f"{grid[0]} x {grid[1]} features, but the file says feature_shape_="
                f"{list(feature_shape)}"
            )
        model = layout.build_model(feature_shape, dropout=0.0, jitter_scale=0.0, jitter_prob=0.0)
    expected = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    expected |= {f"model.{k}": v for k, v in model.state_dict().items()}
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        details = [f"missing {missing[:3]}"] if missing else []
        details += [f"unexpected {unexpected[:3]}"] if unexpected else []
        raise ModelFileError(
            f"{path}: the saved tensors do not fit the saved parameters ({'; '.join(details)})"
        )
    for name, want in expected.items():
        saved = tensors[name]
        if saved.shape != want.shape:
            raise ModelFileError(
                f"{path}: tensor {name!r} has shape {list(saved.shape)}, but the saved "
                f"parameters give {list(want.shape)}"
            )
        if saved.dtype != want.dtype:
            raise ModelFileError(
                f"{path}: tensor {name!r} is stored as {saved.dtype}, not {want.dtype} "
                "(skuniad writes every tensor as its network holds it)"
            )
