"""The network specification: what a detector's networks are built from, and its rules.

:class:`NetworkSpec` is the part of a detector's parameters that decides
which networks a fit builds and how they score. ``fit`` snapshots it as
``network_spec_``; scoring, calibration, saving, pickling and the reference
checkpoint export read that snapshot, so a later ``set_params`` cannot make a
fitted model silently score otherwise, and a warm start that would change it
is refused. Persistence and interop build networks through it rather than
through the estimator.

The module also holds the parameter rules the estimator validates in ``fit``
(:data:`PARAMETER_CONSTRAINTS` and :func:`check_param_consistency`), so the
command line can check options before any work with the same code.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.utils._param_validation import (
    Interval,
    StrOptions,
    validate_parameter_constraints,
)

from skuniad._choices import (
    CACHE_DTYPES,
    IMAGE_SCORES,
    LAYER_QUERIES,
    LR_SCHEDULES,
    PRECISIONS,
    RESIZE_MODES,
    UNKNOWN_GROUP_POLICIES,
)
from skuniad.nn.attention import neighbor_mask
from skuniad.nn.backbone import FrozenBackbone
from skuniad.nn.padding import static_padding_for, use_static_same_padding
from skuniad.nn.transformer import UniADReconstruction

PARAMETER_CONSTRAINTS: dict = {
    "backbone": [str],
    "backbone_weights": [str, os.PathLike, None],
    "out_indices": [tuple, list],
    "image_size": [Interval(Integral, 32, None, closed="left")],
    "resize": [StrOptions(set(RESIZE_MODES))],
    "static_padding_size": [
        StrOptions({"auto"}),
        Interval(Integral, 1, None, closed="left"),
        None,
    ],
    "hidden_dim": [Interval(Integral, 1, None, closed="left")],
    "num_heads": [Interval(Integral, 1, None, closed="left")],
    "num_encoder_layers": [Interval(Integral, 0, None, closed="left")],
    "num_decoder_layers": [Interval(Integral, 1, None, closed="left")],
    "dim_feedforward": [Interval(Integral, 1, None, closed="left")],
    "dropout": [Interval(Real, 0, 1, closed="left")],
    "neighbor_size": [Interval(Integral, 1, None, closed="left"), None],
    "jitter_scale": [Interval(Real, 0, None, closed="left")],
    "jitter_prob": [Interval(Real, 0, 1, closed="both")],
    "layer_queries": [StrOptions(set(LAYER_QUERIES))],
    "image_score": [StrOptions(set(IMAGE_SCORES))],
    "max_epochs": [Interval(Integral, 1, None, closed="left")],
    "batch_size": [Interval(Integral, 1, None, closed="left")],
    "learning_rate": [Interval(Real, 0, None, closed="neither")],
    "weight_decay": [Interval(Real, 0, None, closed="left")],
    "grad_clip": [Interval(Real, 0, None, closed="neither")],
    "lr_schedule": [StrOptions(set(LR_SCHEDULES))],
    "ema_decay": [Interval(Real, 0, 1, closed="neither"), None],
    "cache_dtype": [StrOptions(set(CACHE_DTYPES))],
    "cache_max_gb": [Interval(Real, 0, None, closed="left"), None],
    "warm_start": ["boolean"],
    "checkpoint_path": [str, os.PathLike, None],
    "checkpoint_every": [Interval(Integral, 1, None, closed="left"), None],
    "checkpoint_interval": [Interval(Real, 0, None, closed="left")],
    "contamination": [StrOptions({"auto"}), Interval(Real, 0, 0.5, closed="right")],
    "validation_fraction": [Interval(Real, 0, 1, closed="neither"), None],
    "unknown_group": [StrOptions(set(UNKNOWN_GROUP_POLICIES))],
    "device": [str],
    "precision": [StrOptions(set(PRECISIONS))],
    "compile": ["boolean"],
    "random_state": ["random_state"],
    "verbose": ["verbose"],
}
"""``UniADDetector._parameter_constraints``: each parameter's allowed types and ranges."""

FINGERPRINT_EXEMPT = frozenset(
    {
        "cache_max_gb",
        "contamination",
        "image_score",
        "unknown_group",
        "device",
        "precision",
        "compile",
        "verbose",
        "warm_start",
        *("checkpoint_path", "checkpoint_every", "checkpoint_interval"),
    }
)
"""Parameters that do not change what training computes: a checkpoint ignores them.

``device``, ``precision`` and ``compile`` change how it is computed: the
rounding, and with ``compile`` the random numbers of dropout and jitter
(drawn by the compiler's generator), not the maths.
"""


CHECKPOINT_SETTINGS = ("checkpoint_path", "checkpoint_every", "checkpoint_interval")
"""Where and how often one run checkpoints: never saved in a model file (a moved model would
train into a folder that is gone)."""


def json_safe_params(params: Mapping) -> dict:
    """``get_params()`` as JSON values: tuples -> lists, paths -> str, numpy scalars -> Python.

    A ``RandomState`` instance becomes None: it only seeds ``fit``.
    """

    def convert(value):
        if isinstance(value, (tuple, list)):
            return [convert(v) for v in value]
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.random.RandomState):
            return None
        return value

    return {name: convert(value) for name, value in params.items()}


def check_param_consistency(params: Mapping) -> None:
    """The rules between parameters that per-parameter constraints cannot state."""
    check_backbone_name(params["backbone"])
    if params["hidden_dim"] % params["num_heads"]:
        raise ValueError(
            f"hidden_dim={params['hidden_dim']} must be divisible by "
            f"num_heads={params['num_heads']}"
        )
    if params["neighbor_size"] is not None and params["neighbor_size"] % 2 == 0:
        raise ValueError(f"neighbor_size must be odd, got {params['neighbor_size']}")
    out_indices = params["out_indices"]
    if len(out_indices) == 0:
        raise ValueError("out_indices must name at least one backbone stage")
    stages = list(out_indices)
    if not all(isinstance(i, Integral) and not isinstance(i, bool) for i in stages) or any(
        i < 0 for i in stages
    ):
        raise ValueError(
            f"out_indices must be backbone stage numbers (0 = the first), got {out_indices}"
        )
    if stages != sorted(set(stages)):
        raise ValueError(f"out_indices must be increasing without repeats, got {out_indices}")


def check_backbone_name(name: str) -> None:
    """Refuse a backbone that timm would fetch from a model hub or a folder (``"hf-hub:..."``).

    Building a backbone from such a name reads files or contacts the network;
    a model file must do neither when it is opened, and skuniad fits only
    timm's own architectures.
    """
    if ":" in name:
        raise ValueError(
            f"backbone={name!r} names a model hub or folder source ({name.partition(':')[0]}:); "
            "skuniad builds backbones from timm's own architecture names only "
            "(e.g. 'tf_efficientnet_lite0'), so that opening a model never reaches the network"
        )


def check_params(params: Mapping) -> None:
    """Everything ``fit`` checks of its parameters, before any work.

    Raises sklearn's ``InvalidParameterError`` (a ValueError) for a value out
    of its constraints, a ValueError for inconsistent ones.
    """
    validate_parameter_constraints(PARAMETER_CONSTRAINTS, dict(params), "UniADDetector")
    check_param_consistency(params)


def training_fingerprint(params: Mapping, warm_start_from_epoch: int) -> dict:
    """What a checkpoint must have been written for to be resumed by a fit with ``params``."""
    fingerprint = {
        name: value
        for name, value in json_safe_params(params).items()
        if name not in FINGERPRINT_EXEMPT
    }
    return {**fingerprint, "warm_start_from_epoch": warm_start_from_epoch}


@dataclasses.dataclass(frozen=True)
class NetworkSpec:
    """The parameters that build a detector's networks and decide how they score.

    Values are JSON-safe (a path is a string), except ``out_indices``, a tuple.
    """

    backbone: str
    backbone_weights: str | None
    out_indices: tuple[int, ...]
    image_size: int
    resize: str
    static_padding_size: str | int | None
    hidden_dim: int
    num_heads: int
    num_encoder_layers: int
    num_decoder_layers: int
    dim_feedforward: int
    neighbor_size: int | None
    layer_queries: str
    image_score: str

    @classmethod
    def from_params(cls, params: Mapping) -> NetworkSpec:
        """The spec of a detector's parameters (``get_params()`` or a saved dict)."""
        names = [field.name for field in dataclasses.fields(cls)]
        values = json_safe_params({name: params[name] for name in names})
        return cls(**{**values, "out_indices": tuple(values["out_indices"])})

    def as_params(self) -> dict:
        """The spec as detector parameters in JSON values (``out_indices`` a list)."""
        return json_safe_params(dataclasses.asdict(self))

    def changes_from(self, other: NetworkSpec) -> list[str]:
        """Names of the parameters whose value differs in ``other``, in field order."""
        return [
            field.name
            for field in dataclasses.fields(self)
            if getattr(self, field.name) != getattr(other, field.name)
        ]

    def check_warm_start(self, requested: NetworkSpec) -> None:
        """Refuse a warm start whose parameters would change these fitted networks."""
        changed = self.changes_from(requested)
        if changed:
            before, now = self.as_params(), requested.as_params()
            details = "; ".join(
                f"{name}={before[name]!r} when fitted, {now[name]!r} now" for name in changed
            )
            raise ValueError(
                f"warm_start=True continues the fitted networks, which need the parameters "
                f"they were fitted with ({details}): set them back, or set warm_start=False "
                "to train new networks"
            )

    def build_backbone(self, weights) -> FrozenBackbone:
        """The frozen feature extractor, with ``weights`` ("imagenet", a path or None)."""
        backbone = FrozenBackbone(self.backbone, self.out_indices, weights)
        padding_size = static_padding_for(self.backbone, self.static_padding_size)
        if padding_size is not None:
            use_static_same_padding(backbone.body, padding_size)
        return backbone

    def token_grid(self) -> tuple[int, int]:
        """The feature grid ``(h, w)`` at ``image_size``, without weights or values.

        The backbone is built on the meta device (a fraction of a second, even
        for B4), so the grid is exactly what the fitted one gives.
        """
        with torch.device("meta"):
            backbone = self.build_backbone(None)
        return backbone.grid_size(self.image_size)

    def check_buildable(self) -> None:
        """Fail now, not after feature extraction, when these networks cannot be built.

        An unknown backbone, a stage it lacks (``out_indices``), or a
        ``neighbor_size`` that hides every key of some query on the token grid
        raise a ValueError.
        """
        height, width = self.token_grid()
        if self.neighbor_size is not None:
            neighbor_mask(height, width, self.neighbor_size)

    def build_model(
        self,
        feature_shape: tuple[int, int, int],
        *,
        dropout: float,
        jitter_scale: float,
        jitter_prob: float,
    ) -> UniADReconstruction:
        """The reconstruction network for ``(C, h, w)`` backbone features.

        Dropout and jitter are training parameters, not the spec's: they hold
        no weights, and a warm start may change them.
        """
        channels, height, width = (int(v) for v in feature_shape)
        return UniADReconstruction(
            channels,
            (height, width),
            hidden_dim=self.hidden_dim,
            num_heads=self.num_heads,
            num_encoder_layers=self.num_encoder_layers,
            num_decoder_layers=self.num_decoder_layers,
            dim_feedforward=self.dim_feedforward,
            dropout=dropout,
            neighbor_size=self.neighbor_size,
            jitter_scale=jitter_scale,
            jitter_prob=jitter_prob,
            layer_queries=self.layer_queries,
        )
