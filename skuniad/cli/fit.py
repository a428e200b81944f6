"""skuniad fit and skuniad calibrate: train a model, or set its thresholds on new normal images."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from skuniad.cli import _common
from skuniad.cli._common import (
    MODEL_SUFFIX,
    app,
    check_meta_options,
    check_output_file,
    check_weights,
    echo_thresholds,
    fit_detector,
    format_seconds,
    in_option_words,
    load_detector,
    read_split,
)
from skuniad.cli._errors import (
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    CliError,
    domain_errors,
    one_line,
)
from skuniad.cli._options import (
    DETECTOR_PARAMS,
    NETWORK_OPTIONS,
    DataKind,
    DatasetFormat,
    Device,
    Objective,
    ObjectiveOption,
    PerCategory,
    Precision,
    PrecisionOption,
    Quiet,
    Seed,
    TargetOption,
    Threads,
    TrainMeta,
    check_options,
    detector_params,
    given_options,
    objective_name,
    with_training_options,
)


@app.command()
@with_training_options
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
            "once the model file is written.",
        ),
    ] = None,
    checkpoint_every: Annotated[
        int | None,
        typer.Option(
            min=0,
            metavar="N",
            help="Epochs between checkpoints, instead of --checkpoint-interval; 0: no checkpoint.",
        ),
    ] = None,
    checkpoint_interval: Annotated[
        float,
        typer.Option(
            min=0,
            metavar="SECONDS",
            help="Least seconds of training between two checkpoints (and one after the last "
            "epoch).",
        ),
    ] = 60.0,
    per_category: PerCategory = False,
    device: Device = "auto",
    precision: PrecisionOption = Precision.auto,
    seed: Seed = None,
    quiet: Quiet = False,
    threads: Threads = None,
    **training: Any,
) -> None:
    """Train one model on the normal images of all categories together.

    The +1/-1 and pixel thresholds are set on the training images, or with
    --validation-fraction on a held-out share of them; with --per-category,
    also per category ('skuniad predict' applies them to images found in a
    folder of that name).

    Ctrl-C stops training after the current epoch's weights: the model of the
    last finished epoch is still written, and the exit code is 130; SIGTERM
    (sent by schedulers and containers) does the same with exit code 143. A
    run that was killed instead resumes from its checkpoint when rerun.
    """
    params = detector_params({**training, "device": device, "precision": precision, "seed": seed})
    if init_model is not None:
        given = given_options(ctx, NETWORK_OPTIONS)
        if given:
            raise typer.BadParameter(
                f"{', '.join(given)} cannot be combined with --init-model: the network is the "
                "model's",
                param_hint="--init-model",
            )
    check_options(params)
    if checkpoint is None:
        checkpoint = output.with_name(output.name + ".ckpt")
    with domain_errors():
        if per_category:
            images, groups = _images_and_categories(data_dirs, dataset, category, train_meta)
        else:
            images, groups = _training_images(data_dirs, dataset, category, train_meta), None
        if init_model is None:  # a saved model carries its backbone's weights
            check_weights(params)
        _common._tune_runtime(threads)
        from skuniad import UniADDetector, distributed
        from skuniad._fitting import check_training_setup

        fit_settings = dict(
            verbose=0 if quiet else 1,
            # torchrun trainings cannot checkpoint (see skuniad.training)
            checkpoint_path=checkpoint
            if checkpoint_every != 0 and not distributed.launched()
            else None,
            checkpoint_every=checkpoint_every or None,
            checkpoint_interval=checkpoint_interval,
        )
        if init_model is not None:
            det = load_detector(init_model, device)
            network = {DETECTOR_PARAMS[name] for name in NETWORK_OPTIONS}
            det.set_params(
                **{k: v for k, v in params.items() if k not in network},
                **fit_settings,
                warm_start=True,
            )
        else:
            det = UniADDetector(**params, **fit_settings)
        # what would fail after reading every image fails now, with nothing written
        with in_option_words("pass another --checkpoint"):
            check_training_setup(det.get_params(), warm=init_model is not None)
        check_output_file(output)
        if init_model is not None:
            typer.echo(f"Continuing {init_model} ({det.n_epochs_} epochs) on {len(images)} images.")
        else:
            typer.echo(f"Training on {len(images)} images.")
        if fit_settings["checkpoint_path"] is not None and checkpoint.exists():
            typer.echo(f"Resuming from the checkpoint {checkpoint}.")
        with distributed.sigterm_as_interrupt() as terminated:
            try:
                interrupted, seconds = fit_detector(det, images, groups)
            except KeyboardInterrupt:
                if not terminated[0]:
                    raise
                typer.echo("Terminated (SIGTERM) before an epoch finished.", err=True)
                raise typer.Exit(EXIT_TERMINATED) from None
        if distributed.is_main_process():  # under torchrun every rank has the same weights
            _write_model(det, output, fit_settings["checkpoint_path"])
            typer.echo(
                f"Trained {det.n_epochs_} epochs in {format_seconds(seconds)}; model written to "
                f"{output}"
            )
            echo_thresholds(det)
        distributed.finish()
        if interrupted:
            raise typer.Exit(EXIT_TERMINATED if terminated[0] else EXIT_INTERRUPTED)


def _write_model(det: Any, output: Path, checkpoint: Path | None) -> None:
    """Save the model; a failed write says where the training is kept (the checkpoint)."""
    try:
        det.save(output)
    except Exception as exc:  # noqa: BLE001 - a full disk, a quota, safetensors' own errors
        kept = ""
        if checkpoint is not None and checkpoint.exists():
            kept = (
                f"; the training is kept in the checkpoint {checkpoint}: free the space and "
                "rerun the same command to write the model from it"
            )
        raise CliError(f"could not write the model file {output}: {one_line(exc)}{kept}") from None


def _training_images(
    data_dirs: list[Path],
    dataset: DataKind,
    categories: list[str] | None,
    train_meta: Path | None = None,
) -> list[Path]:
    from skuniad.datasets import find_images

    if dataset is not DataKind.folder:
        data_format = DatasetFormat(dataset.value)
        check_meta_options(data_format, train_meta, None)
        if dataset is DataKind.uniad_json and len(data_dirs) != 1:
            raise typer.BadParameter(
                "--dataset uniad-json takes one DATA_DIR, the image folder of --train-meta",
                param_hint="DATA_DIR",
            )
        paths: list[Path] = []
        for root in data_dirs:
            paths += read_split(data_format, root, "train", categories, train_meta).paths
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
            data = read_split(DatasetFormat(dataset.value), root, "train", categories, train_meta)
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


# ---------------------------------------------------------------- calibrate
@app.command()
def calibrate(
    model: Annotated[
        Path,
        typer.Argument(metavar="MODEL", help=f"A model written by 'skuniad fit' ({MODEL_SUFFIX})."),
    ],
    data_dirs: Annotated[
        list[Path] | None,
        typer.Argument(
            metavar="DATA_DIR",
            help="Normal images (folders searched recursively, or files); with --dataset "
            "mvtec, MVTec-style roots (CATEGORY/train/good is used).",
        ),
    ] = None,
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            metavar="FILE",
            help=f"Model file to write ({MODEL_SUFFIX}); may be MODEL.",
        ),
    ] = ...,
    normal: Annotated[
        list[Path] | None,
        typer.Option(metavar="DIR", help="More normal images (folders or files); repeatable."),
    ] = None,
    defects: Annotated[
        list[Path] | None,
        typer.Option(
            metavar="DIR",
            help="Defective images (folders or files; an MVTec test folder may be given whole: "
            "its 'good' images count as normal); repeatable.",
        ),
    ] = None,
    masks: Annotated[
        list[Path] | None,
        typer.Option(
            metavar="DIR",
            help="Ground truth of the images of each --defects, in the same order, laid out "
            "as they are (DIR/TYPE/STEM_mask.png for DEFECTS/TYPE/STEM.png, as MVTec's "
            "ground_truth): the pixel threshold of f1 and recall is chosen on these pixels.",
        ),
    ] = None,
    objective: ObjectiveOption = Objective.contamination,
    target: TargetOption = None,
    defect_rate: Annotated[
        float | None,
        typer.Option(
            metavar="P",
            help="With --objective f1: the share of defective images where the model will "
            "be used, in (0, 1) (F1 depends on it); default: their share among these images.",
        ),
    ] = None,
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
    """Set a model's thresholds from images it has not trained on, normal or labelled.

    With normal images only (DATA_DIR, --normal) the rule is fit's (the
    model's contamination). With --defects, --objective chooses: f1 (the
    best F1 at --defect-rate), false-alarms --target X (at most that share
    of the good images flagged) or recall --target X (at least that share
    of the defective ones caught); the recall, false alarms and F1 this
    gives on these images are printed and kept in the model ('skuniad
    info'). Every threshold is replaced, per category too with
    --per-category (categories from the folders: the one above train/test
    in an MVTec layout, else each DATA_DIR's name). The weights are
    unchanged.
    """
    with domain_errors():
        images, labels, groups, mask_list = _calibration_images(
            data_dirs or [],
            normal or [],
            defects or [],
            masks or [],
            dataset,
            category,
            per_category,
        )
        check_output_file(output)
        _common._tune_runtime(threads)
        det = load_detector(model, device)
        det.set_params(verbose=0 if quiet else 1)
        det.calibrate(
            images,
            labels if defects else None,
            groups=groups,
            masks=mask_list,
            objective=objective_name(objective),
            target=target,
            defect_rate=defect_rate,
        )
        det.save(output)
        n_defects = sum(labels)
        what = f"{len(images) - n_defects} normal" + (
            f" and {n_defects} defective" if defects else ""
        )
        typer.echo(f"Calibrated on {what} images; model written to {output}")
        echo_thresholds(det)


def _calibration_images(
    data_dirs: list[Path],
    normal: list[Path],
    defects: list[Path],
    masks: list[Path],
    dataset: DataKind,
    category: list[str] | None,
    per_category: bool,
) -> tuple[list[Path], list[int], list[str] | None, list | None]:
    """Images, labels (1 = defective), categories and masks for 'skuniad calibrate'."""
    from skuniad.datasets import find_masks, labelled_images, layout_categories, load_mask

    if not (data_dirs or normal or defects):
        raise typer.BadParameter("give normal images (DATA_DIR or --normal) or --defects")
    if masks and len(masks) != len(defects):
        raise typer.BadParameter(
            f"one --masks per --defects, in the same order: got {len(masks)} for {len(defects)}",
            param_hint="--masks",
        )
    images: list[Path] = []
    groups: list[str] | None = None
    if data_dirs:
        if per_category:
            images, groups = _images_and_categories(data_dirs, dataset, category)
        else:
            images = _training_images(data_dirs, dataset, category)
    more, labels, roots = labelled_images(normal, defects)
    if per_category and more:
        groups = (groups or []) + layout_categories(more)
    labels = [0] * len(images) + labels
    mask_list = None
    if masks:
        mask_list = [None] * (len(images) + len(more))
        for defect_root, mask_root in zip(defects, masks, strict=True):
            marked = [
                i for i, root in enumerate(roots) if root == defect_root and labels[len(images) + i]
            ]
            found = find_masks([more[i] for i in marked], [roots[i] for i in marked], mask_root)
            for i, mask in zip(marked, found, strict=True):
                mask_list[len(images) + i] = load_mask(mask)
    return images + more, labels, groups, mask_list
