"""What the commands share: the Typer app, option types, error handling, data set helpers."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from skuniad._choices import (
    DATASET_FORMATS,
    IMAGE_SCORES,
    LAYER_QUERIES,
    LR_SCHEDULES,
    PRECISIONS,
    SETTINGS,
)

app = typer.Typer(
    name="skuniad",
    help="UniAD unified anomaly detection: train on normal images, score new ones.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


def _argument_type(self, ctx):
    """No Python type (``<list[Path]>``) next to an argument whose metavar names it."""
    return None if self.metavar else _typer_argument_type(self, ctx)


# every skuniad argument has a metavar (MODEL, IMAGES...); typer would add "<path>" after it
_typer_argument_type = typer.core.TyperArgument.display_type_rich
typer.core.TyperArgument.display_type_rich = _argument_type

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130
MODEL_SUFFIX = ".skuniad"

_TRAIN = "Training options"


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


# Training options shared by `fit` and `evaluate`. The defaults are the
# detector's (the paper's); tests check they stay in step.
Epochs = Annotated[
    int,
    typer.Option("--epochs", min=1, metavar="N", help="Training epochs.", rich_help_panel=_TRAIN),
]
Backbone = Annotated[
    str,
    typer.Option(
        metavar="NAME",
        help="timm backbone; tf_efficientnet_lite0 is fast on CPUs and ships its weights.",
        rich_help_panel=_TRAIN,
    ),
]
BackboneWeights = Annotated[
    str,
    typer.Option(
        metavar="WEIGHTS",
        help="'imagenet', a weights file, or 'none' (random, for tests).",
        rich_help_panel=_TRAIN,
    ),
]
ImageSize = Annotated[
    int,
    typer.Option(
        min=32, metavar="PIXELS", help="Model resolution (square).", rich_help_panel=_TRAIN
    ),
]
BatchSize = Annotated[
    int,
    typer.Option(
        min=1,
        metavar="N",
        help="Training images per step; scoring runs min(4 N, 32) at a time. Lower it when "
        "the device runs out of memory.",
        rich_help_panel=_TRAIN,
    ),
]
LearningRate = Annotated[float, typer.Option("--lr", metavar="RATE", rich_help_panel=_TRAIN)]
LrScheduleOption = Annotated[
    LrSchedule,
    typer.Option(
        help="step: the paper's (x 0.1 after 80 % of the epochs); cosine: warm-up, then cosine "
        "decay to 0, for short fits (docs/results.md).",
        rich_help_panel=_TRAIN,
    ),
]
HiddenDim = Annotated[int, typer.Option(min=1, metavar="N", rich_help_panel=_TRAIN)]
NumHeads = Annotated[int, typer.Option(min=1, metavar="N", rich_help_panel=_TRAIN)]
EncoderLayers = Annotated[int, typer.Option(min=0, metavar="N", rich_help_panel=_TRAIN)]
DecoderLayers = Annotated[int, typer.Option(min=1, metavar="N", rich_help_panel=_TRAIN)]
FeedforwardDim = Annotated[int, typer.Option(min=1, metavar="N", rich_help_panel=_TRAIN)]
NeighborSize = Annotated[
    int,
    typer.Option(
        min=0,
        metavar="N",
        help="Neighbor-mask window (odd); 0 disables the mask.",
        rich_help_panel=_TRAIN,
    ),
]
JitterScale = Annotated[
    float,
    typer.Option(
        min=0.0,
        metavar="ALPHA",
        help="Feature-jitter strength alpha; 0 disables jittering.",
        rich_help_panel=_TRAIN,
    ),
]
LayerQueriesOption = Annotated[
    LayerQueries,
    typer.Option(
        help="Decoder layers with their own learned queries: every (the paper), first, none.",
        rich_help_panel=_TRAIN,
    ),
]
ImageScoreOption = Annotated[
    ImageScore,
    typer.Option(
        help="Image score from the anomaly map: max of the 16x16-pooled map (the paper's), "
        "mean or std.",
        rich_help_panel=_TRAIN,
    ),
]
Contamination = Annotated[
    str,
    typer.Option(
        metavar="FRACTION",
        help="'auto' or the fraction of training images that falls on the anomalous side; "
        "sets the +1/-1 threshold.",
        rich_help_panel=_TRAIN,
    ),
]
ValidationFraction = Annotated[
    float | None,
    typer.Option(
        help="Hold this share of the normal images (of each category) out of training and set "
        "the thresholds on it; default: set them on the training images.",
        rich_help_panel=_TRAIN,
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
    Precision, typer.Option(help="'auto': bf16 where fast, else fp32.", rich_help_panel=_TRAIN)
]
Seed = Annotated[
    int | None, typer.Option(metavar="SEED", help="Random seed.", rich_help_panel=_TRAIN)
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

# CLI option name -> UniADDetector parameter
_DETECTOR_PARAMS = {
    "epochs": "max_epochs",
    "backbone": "backbone",
    "backbone_weights": "backbone_weights",
    "image_size": "image_size",
    "batch_size": "batch_size",
    "lr": "learning_rate",
    "lr_schedule": "lr_schedule",
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
    "seed": "random_state",
}
# options that shape the networks: they come from the model with --model / --init-model
_NETWORK_OPTIONS = (
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


class CliError(Exception):
    """A domain error to report in one line (exit code 1)."""


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _is_domain_error(exc: Exception) -> bool:
    """A problem with the input or the machine (one line, exit 1), not a bug (a traceback)."""
    from skuniad.errors import SkuniadError

    return isinstance(exc, CliError | SkuniadError | ValueError | OSError)


def _one_line_message(exc: BaseException) -> str:
    message = _one_line(exc)
    from skuniad.device import DeviceOutOfMemoryError

    if isinstance(exc, DeviceOutOfMemoryError):  # the library's advice, in option words
        message = message.replace("batch_size=", "--batch-size ").replace(
            "batch_size", "--batch-size"
        )
    return message


@contextmanager
def _domain_errors() -> Iterator[None]:
    """Turn domain errors into one line + exit 1, and Ctrl-C into exit 130."""
    try:
        yield
    except KeyboardInterrupt as exc:
        if str(exc):  # TrainingInterrupted says what was kept
            typer.echo(str(exc), err=True)
        typer.echo("Interrupted.", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except typer.Exit:
        raise
    except Exception as exc:
        if not _is_domain_error(exc):
            raise
        typer.echo(f"Error: {_one_line_message(exc)}", err=True)
        raise typer.Exit(EXIT_ERROR) from None


def _detector_params(options: dict[str, Any]) -> dict[str, Any]:
    """Map CLI training options onto UniADDetector keyword arguments."""
    params = {_DETECTOR_PARAMS[k]: v for k, v in options.items() if k in _DETECTOR_PARAMS}
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


def _check_options(params: dict[str, Any]) -> None:
    """Refuse out-of-range training options as usage errors (exit 2), before any work."""
    from sklearn.utils._param_validation import InvalidParameterError

    from skuniad import UniADDetector
    from skuniad._spec import check_params
    from skuniad.device import resolve_device

    det = UniADDetector(**params)
    try:
        check_params(det.get_params())
        resolve_device(det.device)
    except (InvalidParameterError, ValueError) as exc:
        message = re.sub(r"^The '(\w+)' parameter of \w+ ", r"\1 ", _one_line(exc))
        for option, name in _DETECTOR_PARAMS.items():  # "name=value", "name must": parameters
            flag = "--" + option.replace("_", "-")
            message = re.sub(rf"\b{name}\b(?==| must)", flag, message)
        raise typer.BadParameter(message) from None


def _given_options(ctx: typer.Context, names) -> list[str]:
    """The options among ``names`` typed on the command line, as flags."""
    return [
        "--" + name.replace("_", "-")
        for name in names
        if getattr(ctx.get_parameter_source(name), "name", None) == "COMMANDLINE"
    ]


def _training_images(
    data_dirs: list[Path],
    dataset: DataKind,
    categories: list[str] | None,
    train_meta: Path | None = None,
) -> list[Path]:
    from skuniad.datasets import find_images

    if dataset is not DataKind.folder:
        data_format = DatasetFormat(dataset.value)
        _check_meta_options(data_format, train_meta, None)
        if dataset is DataKind.uniad_json and len(data_dirs) != 1:
            raise typer.BadParameter(
                "--dataset uniad-json takes one DATA_DIR, the image folder of --train-meta",
                param_hint="DATA_DIR",
            )
        paths: list[Path] = []
        for root in data_dirs:
            paths += _read_split(data_format, root, "train", categories, train_meta).paths
        return paths
    _check_plain_folders(data_dirs, categories, train_meta)
    return find_images(data_dirs)


def _check_plain_folders(
    data_dirs: list[Path], categories: list[str] | None, train_meta: Path | None
) -> None:
    """Refuse data set options, and data sets, given as plain folders of images."""
    from skuniad.datasets import list_categories

    if categories or train_meta:
        flag = "--category" if categories else "--train-meta"
        raise typer.BadParameter(
            f"{flag} needs --dataset mvtec, visa or uniad-json", param_hint=flag
        )
    for root in data_dirs:
        if root.is_dir() and list_categories(root):
            raise CliError(
                f"{root} looks like an MVTec-style data set (it has train/ or test/ folders); "
                "pass --dataset mvtec to train on its train/good images only"
            )


def _images_and_categories(
    data_dirs: list[Path],
    dataset: DataKind,
    categories: list[str] | None,
    train_meta: Path | None = None,
) -> tuple[list[Path], list[str]]:
    """Normal images and the category of each: the data set's categories, else each
    DATA_DIR's name."""
    from skuniad.datasets import DuplicateFolderNameError, images_and_categories

    if dataset is not DataKind.folder:
        paths: list[Path] = []
        names: list[str] = []
        for root in data_dirs:
            data = _read_split(DatasetFormat(dataset.value), root, "train", categories, train_meta)
            paths += data.paths
            names += data.categories
        return paths, names
    _check_plain_folders(data_dirs, categories, None)
    try:
        return images_and_categories(data_dirs)
    except DuplicateFolderNameError as exc:
        raise CliError(
            f"{exc.first} and {exc.second} are both named {exc.name!r}: with --per-category "
            "each DATA_DIR is one category named after its folder, so the names must differ"
        ) from None


def _check_output_file(path: Path) -> None:
    """Fail before training, not after, when the model cannot be written."""
    if path.is_dir():
        raise CliError(f"--output is a folder; give a file name such as model{MODEL_SUFFIX}")
    path.parent.mkdir(parents=True, exist_ok=True)


def _check_weights(params: dict[str, Any]) -> None:
    """An offline machine without the backbone's weights fails now, before torch loads."""
    from skuniad.weights import check_weights_available

    check_weights_available(params["backbone"], params["backbone_weights"])


def _fit_detector(
    det: Any, images: list[Path], groups: list[str] | None = None
) -> tuple[Any, bool, float]:
    """Fit; return (det, interrupted, seconds).

    Ctrl-C during training keeps the last finished epoch: the library fits
    the detector with it and raises TrainingInterrupted, which the commands
    catch here on purpose to write that model. Interrupted before any epoch
    finished, the Ctrl-C goes on (exit 130, nothing written).
    """
    from skuniad.training import TrainingInterrupted

    start = time.perf_counter()
    interrupted = False
    try:
        det.fit(images, groups=groups)
    except TrainingInterrupted as exc:
        typer.echo(str(exc), err=True)
        if not exc.loss_curve:
            raise
        interrupted = True
    return det, interrupted, time.perf_counter() - start


def _tune_runtime(threads: int | None = None) -> None:
    """The process-wide CPU settings skuniad.device recommends (denormals, malloc)."""
    from skuniad.device import tune_cpu_runtime

    tune_cpu_runtime()
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def _load_detector(path: Path, device: str) -> Any:
    from skuniad import UniADDetector

    if not path.is_file():
        raise CliError(f"model file not found: {path}")
    return UniADDetector.load(path, device=device)


def _format_seconds(seconds: float) -> str:
    if seconds < 59.95:  # would print as 60.0 s
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)  # round first: never "5 min 60 s"
    return f"{minutes} min {rest} s"


def _print_results(results: dict[str, Any]) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from skuniad.evaluation import TITLES, results_table

    columns, rows = results_table(results)
    seeds = results.get("seeds") or []
    caption = "I = image level, P = pixel level; mean over categories"
    if len(seeds) > 1:
        caption += f"; mean ± std over {len(seeds)} seeds"
    table = Table(
        title=f"Results (%) at {results['image_size']} px", caption=caption, box=box.SIMPLE_HEAD
    )
    table.add_column("Category", no_wrap=True)
    for key in columns:
        table.add_column(TITLES[key].short, justify="right", no_wrap=True)
    for name, *cells in rows[:-1]:
        table.add_row(name, *cells)
    table.add_section()
    table.add_row(*rows[-1], style="bold")
    Console(width=max(120, 11 * len(columns) + 16)).print(table)
    _print_operating_point(results)


def _print_operating_point(results: dict[str, Any]) -> None:
    """What the model's own thresholds do, per category: a second table."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from skuniad.evaluation import TITLES, operating_point_table

    columns, rows = operating_point_table(results)
    if not columns:
        return
    table = Table(
        title="At the model's own thresholds (%)",
        caption="false alarms: good images (normal pixels) flagged; per-category thresholds "
        "where the model has them",
        box=box.SIMPLE_HEAD,
    )
    table.add_column("Category", no_wrap=True)
    for key in columns:
        table.add_column(TITLES[key].short, justify="right", no_wrap=True)
    for name, *cells in rows[:-1]:
        table.add_row(name, *cells)
    table.add_section()
    table.add_row(*rows[-1], style="bold")
    Console(width=max(120, 13 * len(columns) + 16)).print(table)


def _run_info(det: Any, **extra: Any) -> dict[str, Any]:
    from skuniad.evaluation import run_info

    return run_info(det, **extra)


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


def _describe_dataset(
    dataset: DatasetFormat, root: Path, train_meta: Path | None, test_meta: Path | None
) -> str:
    """The data set as the report's run details name it."""
    text = f"{root} ({dataset.value})"
    if dataset is DatasetFormat.uniad_json:
        text += f", train list {train_meta}, test list {test_meta}"
    return text


def _require_root(root: Path | None, dataset: DatasetFormat) -> Path:
    """Without --root: what the data set is, where to get it and its layout (usage error)."""
    if root is not None:
        return root
    from skuniad.datasets import describe_format

    typer.echo(f"Missing --root for --dataset {dataset.value}.\n", err=True)
    typer.echo(describe_format(dataset.value), err=True)
    raise typer.Exit(2)


def _check_meta_options(dataset: DatasetFormat, train_meta: Path | None, test_meta: Path | None):
    given = [n for n, v in (("--train-meta", train_meta), ("--test-meta", test_meta)) if v]
    if dataset is not DatasetFormat.uniad_json and given:
        raise typer.BadParameter(
            f"{', '.join(given)} only with --dataset uniad-json", param_hint=given[0]
        )


def _read_split(
    dataset: DatasetFormat,
    root: Path,
    split: str,
    categories: list[str] | None,
    meta: Path | None,
) -> Any:
    from skuniad.datasets import load_dataset

    if dataset is DatasetFormat.uniad_json and meta is None:
        raise typer.BadParameter(
            f"--dataset uniad-json needs --{split}-meta", param_hint=f"--{split}-meta"
        )
    return load_dataset(dataset.value, root, split, categories or None, meta)
