"""What the commands share: the Typer app, the model file, data set reading, timing.

The option types are in ``_options``, error handling in ``_errors``, the
printed tables in ``_tables``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer

from skuniad.cli._errors import CliError, one_line
from skuniad.cli._options import DatasetFormat

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

MODEL_SUFFIX = ".skuniad"


def check_output_file(path: Path) -> None:
    """Fail before training, not after, when the model cannot be written."""
    if path.is_dir():
        raise CliError(f"--output is a folder; give a file name such as model{MODEL_SUFFIX}")
    path.parent.mkdir(parents=True, exist_ok=True)


def check_weights(params: dict[str, Any]) -> None:
    """An offline machine without the backbone's weights fails now, before torch loads."""
    from skuniad.weights import check_weights_available

    check_weights_available(params["backbone"], params["backbone_weights"])


@contextmanager
def in_option_words(another_checkpoint: str) -> Iterator[None]:
    """The library's checks before training, with this command's options in their messages.

    ``another_checkpoint`` replaces "set another checkpoint_path" (e.g. "pass
    another --checkpoint").
    """
    try:
        yield
    except ValueError as exc:
        message = one_line(exc).replace("neighbor_size=None", "--neighbor-size 0")
        message = re.sub(r"\bneighbor_size=", "--neighbor-size ", message)
        message = message.replace("set another checkpoint_path", another_checkpoint)
        raise CliError(message) from None


def fit_detector(
    det: Any, images: list[Path], groups: list[str] | None = None
) -> tuple[bool, float]:
    """Fit ``det``; return (interrupted, seconds).

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
    return interrupted, time.perf_counter() - start


# underscored and called as _common._tune_runtime: tests replace it to keep their process settings
def _tune_runtime(threads: int | None = None) -> None:
    """The process-wide CPU settings skuniad.device recommends (denormals, malloc)."""
    from skuniad.device import tune_cpu_runtime

    tune_cpu_runtime()
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def load_detector(path: Path, device: str) -> Any:
    from skuniad import UniADDetector

    if not path.is_file():
        raise CliError(f"model file not found: {path}")
    return UniADDetector.load(path, device=device)


def echo_thresholds(det: Any, *, details: bool = False) -> None:
    """The model's image and pixel thresholds, pooled then per category, one line each.

    ``fit`` and ``calibrate`` print the short form; ``info`` (``details``) adds
    where the thresholds were set, ``offset_`` and what other categories get.
    """
    if details:
        typer.echo("Thresholds:")
    if not hasattr(det, "offset_"):
        typer.echo(
            "  none: not calibrated (run 'skuniad calibrate MODEL DIR -o MODEL')"
            if details
            else "Thresholds: none (not calibrated; see 'skuniad calibrate')."
        )
        return
    image, pixel = f"{det.image_threshold_:.6g}", f"{det.pixel_threshold_:.6g}"
    if details:
        source = (
            f"a held-out share ({det.validation_fraction:g}) of the training images"
            if det.validation_fraction is not None
            else "the training images, or the images given to 'skuniad calibrate'"
        )
        typer.echo(f"  from {source}, contamination={det.contamination!r}")
        typer.echo(
            f"  image (anomaly_score): {image}   pixel (anomaly map): {pixel}   "
            f"offset_: {det.offset_:.6g}"
        )
    else:
        typer.echo(f"Thresholds: image {image} (anomaly score), pixel {pixel} (anomaly map)")
    groups = getattr(det, "group_image_thresholds_", {})
    for group, image_threshold in groups.items():
        pixel_threshold = det.group_pixel_thresholds_[group]
        typer.echo(
            f"  {'category ' if details else ''}{group}: image {image_threshold:.6g}, "
            f"pixel {pixel_threshold:.6g}"
        )
    if details and groups:
        typer.echo(f"  other categories: unknown_group={det.unknown_group!r}")
    echo_calibration(det.thresholds_.calibration)


def echo_calibration(calibration: dict | None) -> None:
    """What labelled calibration chose and achieved on its images (nothing for fit's rule)."""
    if calibration is None:
        return
    target = "" if calibration["target"] is None else f", target {calibration['target']:g}"
    typer.echo(f"Calibrated for {calibration['objective']}{target}; on the calibration images:")
    parts = [(None, calibration["pooled"]), *calibration["groups"]]
    for group, achieved in parts:
        rate = achieved.get("defect_rate")  # "f1" only
        aim = "" if rate is None else f" (aimed at a defect rate of {100 * rate:.1f} %)"
        for level in ("image", "pixel"):
            if achieved[level] is None:
                continue
            values = achieved[level]
            typer.echo(
                f"  {'all' if group is None else group} {level}s: "
                f"recall {100 * values['recall']:.1f} %, false alarms "
                f"{100 * values['false_alarm_rate']:.1f} %, F1 {100 * values['f1']:.1f} %"
                + (aim if level == "image" else "")
            )


def format_seconds(seconds: float) -> str:
    if seconds < 59.95:  # would print as 60.0 s
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)  # round first: never "5 min 60 s"
    return f"{minutes} min {rest} s"


def require_root(root: Path | None, dataset: DatasetFormat) -> Path:
    """Without --root: what the data set is, where to get it and its layout (usage error)."""
    if root is not None:
        return root
    from skuniad.datasets import describe_format

    typer.echo(f"Missing --root for --dataset {dataset.value}.\n", err=True)
    typer.echo(describe_format(dataset.value), err=True)
    raise typer.Exit(2)


def check_meta_options(dataset: DatasetFormat, train_meta: Path | None, test_meta: Path | None):
    given = [n for n, v in (("--train-meta", train_meta), ("--test-meta", test_meta)) if v]
    if dataset is not DatasetFormat.uniad_json and given:
        raise typer.BadParameter(
            f"{', '.join(given)} only with --dataset uniad-json", param_hint=given[0]
        )


def read_split(
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
