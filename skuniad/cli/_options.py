"""The options the commands share: choice enums, option types, and options -> detector parameters.

The choices are built from the library's own tuples in the torch-free
``skuniad._choices``, so ``skuniad --help`` imports no torch and a new
choice is added once.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from skuniad._choices import (
    CALIBRATION_OBJECTIVES,
    DATASET_FORMATS,
    IMAGE_SCORES,
    LAYER_QUERIES,
    LR_SCHEDULES,
    PRECISIONS,
    SETTINGS,
)
from skuniad.cli._errors import one_line

TRAIN_PANEL = "Training options"


def _choice_enum(name: str, values: tuple[str, ...]) -> Any:
    """A ``str, Enum`` of a library tuple, for typer: member names are the values, "-" as "_"."""
    return Enum(name, [(value.replace("-", "_"), value) for value in values], type=str)


DataKind = _choice_enum("DataKind", ("folder", *DATASET_FORMATS))
DatasetFormat = _choice_enum("DatasetFormat", DATASET_FORMATS)
Setting = _choice_enum("Setting", SETTINGS)
LayerQueries = _choice_enum("LayerQueries", LAYER_QUERIES)
LrSchedule = _choice_enum("LrSchedule", LR_SCHEDULES)
ImageScore = _choice_enum("ImageScore", IMAGE_SCORES)
Precision = _choice_enum("Precision", PRECISIONS)
Objective = _choice_enum("Objective", tuple(o.replace("_", "-") for o in CALIBRATION_OBJECTIVES))


def objective_name(objective: Any) -> str:
    """The library's name of an ``--objective`` choice (``false-alarms`` -> ``false_alarms``)."""
    return objective.value.replace("-", "_")


ObjectiveOption = Annotated[
    Objective,
    typer.Option(
        help="How the thresholds are chosen: contamination (the model's rule on the good "
        "images), f1 (the best F1 on the labelled images), false-alarms (flag at most "
        "--target of the good images) or recall (catch at least --target of the defective ones)."
    ),
]
TargetOption = Annotated[
    float | None,
    typer.Option(
        metavar="X", help="With --objective false-alarms or recall: the share, in (0, 1)."
    ),
]


# The option types; TRAINING_OPTIONS below gives the training ones their defaults.
Epochs = Annotated[
    int,
    typer.Option(
        "--epochs", min=1, metavar="N", help="Training epochs.", rich_help_panel=TRAIN_PANEL
    ),
]
Backbone = Annotated[
    str,
    typer.Option(
        metavar="NAME",
        help="timm backbone; tf_efficientnet_lite0 is fast on CPUs and ships its weights.",
        rich_help_panel=TRAIN_PANEL,
    ),
]
BackboneWeights = Annotated[
    str,
    typer.Option(
        metavar="WEIGHTS",
        help="'imagenet', a weights file, or 'none' (random, for tests).",
        rich_help_panel=TRAIN_PANEL,
    ),
]
ImageSize = Annotated[
    int,
    typer.Option(
        min=32, metavar="PIXELS", help="Model resolution (square).", rich_help_panel=TRAIN_PANEL
    ),
]
BatchSize = Annotated[
    int,
    typer.Option(
        min=1,
        metavar="N",
        help="Training images per step; scoring runs min(4 N, 32) at a time. Lower it when "
        "the device runs out of memory.",
        rich_help_panel=TRAIN_PANEL,
    ),
]
LearningRate = Annotated[float, typer.Option("--lr", metavar="RATE", rich_help_panel=TRAIN_PANEL)]
LrScheduleOption = Annotated[
    LrSchedule,
    typer.Option(
        help="step: the paper's (x 0.1 after 80 % of the epochs); cosine: warm-up, then cosine "
        "decay to 0, for short fits (docs/results.md).",
        rich_help_panel=TRAIN_PANEL,
    ),
]
EmaDecay = Annotated[
    float | None,
    typer.Option(
        min=0.0,
        max=1.0,
        metavar="DECAY",
        help="Score with an exponential moving average of the weights (e.g. 0.999); "
        "default: the last step's weights.",
        rich_help_panel=TRAIN_PANEL,
    ),
]
HiddenDim = Annotated[int, typer.Option(min=1, metavar="N", rich_help_panel=TRAIN_PANEL)]
NumHeads = Annotated[int, typer.Option(min=1, metavar="N", rich_help_panel=TRAIN_PANEL)]
EncoderLayers = Annotated[int, typer.Option(min=0, metavar="N", rich_help_panel=TRAIN_PANEL)]
DecoderLayers = Annotated[int, typer.Option(min=1, metavar="N", rich_help_panel=TRAIN_PANEL)]
FeedforwardDim = Annotated[int, typer.Option(min=1, metavar="N", rich_help_panel=TRAIN_PANEL)]
NeighborSize = Annotated[
    int,
    typer.Option(
        min=0,
        metavar="N",
        help="Neighbor-mask window (odd); 0 disables the mask.",
        rich_help_panel=TRAIN_PANEL,
    ),
]
JitterScale = Annotated[
    float,
    typer.Option(
        min=0.0,
        metavar="ALPHA",
        help="Feature-jitter strength alpha; 0 disables jittering.",
        rich_help_panel=TRAIN_PANEL,
    ),
]
LayerQueriesOption = Annotated[
    LayerQueries,
    typer.Option(
        help="Decoder layers with their own learned queries: every (the paper), first, none.",
        rich_help_panel=TRAIN_PANEL,
    ),
]
ImageScoreOption = Annotated[
    ImageScore,
    typer.Option(
        help="Image score from the anomaly map: max of the 16x16-pooled map (the paper's), "
        "mean or std.",
        rich_help_panel=TRAIN_PANEL,
    ),
]
Contamination = Annotated[
    str,
    typer.Option(
        metavar="FRACTION",
        help="'auto' or the fraction of training images that falls on the anomalous side; "
        "sets the +1/-1 threshold.",
        rich_help_panel=TRAIN_PANEL,
    ),
]
ValidationFraction = Annotated[
    float | None,
    typer.Option(
        help="Hold this share of the normal images (of each category) out of training and set "
        "the thresholds on it; default: set them on the training images.",
        rich_help_panel=TRAIN_PANEL,
    ),
]
PerCategory = Annotated[
    bool,
    typer.Option(
        "--per-category",
        help="Also set thresholds per category: the data set's categories with --dataset "
        "mvtec, else each DATA_DIR is one category, named after its folder.",
    ),
]
Device = Annotated[
    str,
    typer.Option(
        metavar="DEVICE", help="'auto' (CUDA if available), 'cpu', 'cuda', 'cuda:1', 'mps'."
    ),
]
PrecisionOption = Annotated[
    Precision, typer.Option(help="'auto': bf16 where fast, else fp32.", rich_help_panel=TRAIN_PANEL)
]
CompileOption = Annotated[
    bool,
    typer.Option(
        "--compile",
        help="Run the reconstruction network through torch.compile (training and scoring): "
        "faster steps once compiled, a slow first step; warns and runs uncompiled where no "
        "compiler works.",
        rich_help_panel=TRAIN_PANEL,
    ),
]
Seed = Annotated[
    int | None, typer.Option(metavar="SEED", help="Random seed.", rich_help_panel=TRAIN_PANEL)
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
Threads = Annotated[
    int | None,
    typer.Option(
        min=1,
        metavar="N",
        help="CPU threads (default: torch's, one per core). On a CPU that other programs keep "
        "busy, fewer threads than cores can be several times faster.",
    ),
]
ChunkSize = Annotated[
    int, typer.Option(min=1, metavar="N", help="Images scored per pass (bounds memory).")
]
ScoringBatchSize = Annotated[
    int | None,
    typer.Option(
        min=1,
        metavar="N",
        help="The model's batch_size for scoring (min(4 N, 32) images at a time; default: "
        "the model's). Lower it when the device runs out of memory.",
    ),
]

TrainMeta = Annotated[
    Path | None,
    typer.Option(
        metavar="FILE",
        help="With --dataset uniad-json: the training list (one JSON object per line).",
    ),
]
TestMeta = Annotated[
    Path | None,
    typer.Option(
        metavar="FILE", help="With --dataset uniad-json: the test list (one JSON object per line)."
    ),
]


# The training options of `fit` and `evaluate`, declared once, in --help order: (type,
# default). The defaults are the detector's (the paper's), spelled here because reading
# them from UniADDetector would import torch for `skuniad --help`; tests/test_cli.py
# checks that they stay in step.
TRAINING_OPTIONS: dict[str, tuple[Any, Any]] = {
    "epochs": (Epochs, 1000),
    "backbone": (Backbone, "tf_efficientnet_b4.aa_in1k"),
    "backbone_weights": (BackboneWeights, "imagenet"),
    "image_size": (ImageSize, 224),
    "batch_size": (BatchSize, 8),
    "lr": (LearningRate, 1e-4),
    "lr_schedule": (LrScheduleOption, LrSchedule.step),
    "ema_decay": (EmaDecay, None),
    "hidden_dim": (HiddenDim, 256),
    "num_heads": (NumHeads, 8),
    "encoder_layers": (EncoderLayers, 4),
    "decoder_layers": (DecoderLayers, 4),
    "feedforward_dim": (FeedforwardDim, 1024),
    "neighbor_size": (NeighborSize, 7),
    "jitter_scale": (JitterScale, 20.0),
    "layer_queries": (LayerQueriesOption, LayerQueries.every),
    "image_score": (ImageScoreOption, ImageScore.max),
    "contamination": (Contamination, "auto"),
    "validation_fraction": (ValidationFraction, None),
    "compile": (CompileOption, False),
}


def with_training_options(command: Callable[..., None]) -> Callable[..., None]:
    """Give ``command`` the :data:`TRAINING_OPTIONS`, listed just before its ``per_category``.

    The command receives them in ``**training`` (option name -> value). Typer
    reads the options from the signature set here, so ``--help`` shows them
    as if the command spelled them out.
    """
    signature = inspect.signature(command, eval_str=True)
    own = [p for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
    at = [p.name for p in own].index("per_category")
    training = [
        inspect.Parameter(name, own[at].kind, annotation=kind, default=default)
        for name, (kind, default) in TRAINING_OPTIONS.items()
    ]
    command.__signature__ = signature.replace(parameters=[*own[:at], *training, *own[at:]])
    return command


# CLI option name -> UniADDetector parameter
DETECTOR_PARAMS = {
    "epochs": "max_epochs",
    "backbone": "backbone",
    "backbone_weights": "backbone_weights",
    "image_size": "image_size",
    "batch_size": "batch_size",
    "lr": "learning_rate",
    "lr_schedule": "lr_schedule",
    "ema_decay": "ema_decay",
    "hidden_dim": "hidden_dim",
    "num_heads": "num_heads",
    "encoder_layers": "num_encoder_layers",
    "decoder_layers": "num_decoder_layers",
    "feedforward_dim": "dim_feedforward",
    "neighbor_size": "neighbor_size",
    "jitter_scale": "jitter_scale",
    "layer_queries": "layer_queries",
    "image_score": "image_score",
    "contamination": "contamination",
    "validation_fraction": "validation_fraction",
    "device": "device",
    "precision": "precision",
    "compile": "compile",
    "seed": "random_state",
}
# options that shape the networks: they come from the model with --model / --init-model
NETWORK_OPTIONS = (
    "backbone",
    "backbone_weights",
    "image_size",
    "hidden_dim",
    "num_heads",
    "encoder_layers",
    "decoder_layers",
    "feedforward_dim",
    "neighbor_size",
    "layer_queries",
    "image_score",
)


def detector_params(options: dict[str, Any]) -> dict[str, Any]:
    """Map CLI training options onto UniADDetector keyword arguments."""
    params = {DETECTOR_PARAMS[k]: v for k, v in options.items() if k in DETECTOR_PARAMS}
    weights = params.get("backbone_weights")
    if isinstance(weights, str) and weights.lower() == "none":
        params["backbone_weights"] = None
    if params.get("neighbor_size") == 0:
        params["neighbor_size"] = None
    for name, value in params.items():
        if isinstance(value, Enum):
            params[name] = value.value
    contamination = params.get("contamination")
    if isinstance(contamination, str) and contamination != "auto":
        try:
            params["contamination"] = float(contamination)
        except ValueError:
            raise typer.BadParameter(
                f"must be 'auto' or a number in (0, 0.5], got {contamination!r}",
                param_hint="--contamination",
            ) from None
    return params


def check_options(params: dict[str, Any]) -> None:
    """Refuse out-of-range training options as usage errors (exit 2), before any work."""
    from skuniad import UniADDetector
    from skuniad._spec import check_params
    from skuniad.device import resolve_device

    det = UniADDetector(**params)
    try:
        check_params(det.get_params())
        resolve_device(det.device)
    except ValueError as exc:  # scikit-learn's InvalidParameterError is one
        message = re.sub(r"^The '(\w+)' parameter of \w+ ", r"\1 ", one_line(exc))
        for option, name in DETECTOR_PARAMS.items():  # "name=value", "name must": parameters
            flag = "--" + option.replace("_", "-")
            message = re.sub(rf"\b{name}\b(?==| must)", flag, message)
        raise typer.BadParameter(message) from None


def given_options(ctx: typer.Context, names) -> list[str]:
    """The options among ``names`` typed on the command line, as flags."""
    return [
        "--" + name.replace("_", "-")
        for name in names
        if getattr(ctx.get_parameter_source(name), "name", None) == "COMMANDLINE"
    ]
