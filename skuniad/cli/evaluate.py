"""skuniad evaluate: the paper's experiments on a data set, or one saved model's metrics."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from skuniad._outputs import folder_lock
from skuniad.cli import _common
from skuniad.cli._common import (
    MODEL_SUFFIX,
    app,
    check_meta_options,
    check_weights,
    format_seconds,
    in_option_words,
    load_detector,
    read_split,
    require_root,
)
from skuniad.cli._errors import EXIT_TERMINATED, CliError, domain_errors
from skuniad.cli._options import (
    DETECTOR_PARAMS,
    NETWORK_OPTIONS,
    TRAIN_PANEL,
    DatasetFormat,
    Device,
    Objective,
    ObjectiveOption,
    Precision,
    PrecisionOption,
    Quiet,
    Setting,
    TargetOption,
    TestMeta,
    Threads,
    TrainMeta,
    check_options,
    detector_params,
    given_options,
    objective_name,
    with_training_options,
)
from skuniad.cli._tables import print_results


@app.command(name="evaluate")
@with_training_options
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
        int | None,
        typer.Option(
            min=0,
            metavar="N",
            help="With --output: epochs between checkpoints, instead of --checkpoint-interval; "
            "0: no checkpoint.",
        ),
    ] = None,
    checkpoint_interval: Annotated[
        float,
        typer.Option(
            min=0,
            metavar="SECONDS",
            help="With --output: each fit checkpoints next to its model file after at least "
            "this many seconds of training (and after the last epoch); rerunning the same "
            "command resumes it.",
        ),
    ] = 60.0,
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
            rich_help_panel=TRAIN_PANEL,
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
    calibrate_with: Annotated[
        int | None,
        typer.Option(
            metavar="K",
            min=5,
            help="Per category, K defective and K good test images (drawn with the seed) set "
            "the thresholds with --objective (their masks choose the pixel threshold) and are "
            "left out of every reported metric.",
        ),
    ] = None,
    objective: ObjectiveOption = Objective.f1,
    target: TargetOption = None,
    per_category: Annotated[
        bool,
        typer.Option(
            "--per-category",
            help="Also set thresholds per category when training, and apply them.",
            rich_help_panel=TRAIN_PANEL,
        ),
    ] = False,
    device: Device = "auto",
    precision: PrecisionOption = Precision.auto,
    quiet: Quiet = False,
    threads: Threads = None,
    **training: Any,
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
    before any training, and so are the backbone, its weights file, the
    neighbour window and any checkpoint in --output: bad input fails in one
    line, with nothing written.

    Ctrl-C during a fit writes the model of the last finished epoch to
    --output and exits with code 130; SIGTERM does the same with code 143.
    """
    params = detector_params({**training, "device": device, "precision": precision})
    root = require_root(root, dataset)
    check_meta_options(dataset, train_meta, test_meta)
    if init_model is not None:
        refused = given_options(ctx, NETWORK_OPTIONS) + (["--model"] if model else [])
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
        check_options(params)
    else:
        refused = (*DETECTOR_PARAMS, "setting", "eval_every", "per_category")
        allowed = ("device", "batch_size", "compile")  # how the model runs, not what it is
        given = given_options(ctx, [n for n in refused if n not in allowed])
        if len(seed or []) > 1 or given:
            flags = ", ".join(given or ["--seed"])
            raise typer.BadParameter(
                f"{flags} cannot be combined with --model (it evaluates one trained model)",
                param_hint="--model",
            )
    epochs = training["epochs"]
    if eval_every is not None and not 1 <= eval_every <= epochs:
        raise typer.BadParameter(
            f"must be between 1 and --epochs ({epochs}), got {eval_every}",
            param_hint="--eval-every",
        )
    if eval_every is not None and output is None:
        raise typer.BadParameter("--eval-every needs --output", param_hint="--eval-every")
    if overlays and output is None:
        raise typer.BadParameter("--overlays needs --output", param_hint="--overlays")
    with domain_errors(), contextlib.ExitStack() as held:
        _refuse_torchrun()
        from skuniad import distributed
        from skuniad.evaluation import (
            calibrate_on_test_images,
            calibration_facts,
            check_calibration_split,
            check_experiment,
            check_test_set,
            evaluate_detector,
            run_block,
            run_experiment,
            write_results,
        )

        # Everything that can be wrong with the data fails here, before any training.
        test = read_split(dataset, root, "test", category, test_meta)
        check_test_set(test, ignore_pixel_metrics=ignore_pixel_metrics)
        calibration = None
        if calibrate_with is not None:
            calibration = calibration_facts(calibrate_with, objective_name(objective), target)
            check_calibration_split(test, calibrate_with, objective_name(objective), target)
        if model is None:
            train = read_split(dataset, root, "train", category, train_meta)
            if init_model is None:  # a saved model carries its backbone's weights
                check_weights(params)
        described = _describe_dataset(dataset, root, train_meta, test_meta)
        _common._tune_runtime(threads)
        if model is None:
            if init_model is not None:  # the network is the model's
                network = {DETECTOR_PARAMS[name] for name in NETWORK_OPTIONS}
                params = {k: v for k, v in params.items() if k not in network}
            seed_list = list(dict.fromkeys(seed)) if seed else [None]
            checkpoints = output is not None and checkpoint_every != 0
            # what would fail after reading every image fails now, with nothing written
            with in_option_words("use another --output"):
                check_experiment(
                    params,
                    test.category_names,
                    setting=setting.value,
                    seeds=seed_list,
                    output_dir=output if checkpoints else None,
                    init_model=init_model,
                )
            _lock_output(held, output)
            models = 1 if setting is Setting.unified else len(train.category_names)
            typer.echo(
                f"Training {models * len(seed_list)} model(s) ({setting.value} setting, "
                f"seeds {seed_list}) on {len(train)} normal images of "
                f"{len(train.category_names)} categories."
            )
            start = time.perf_counter()
            with distributed.sigterm_as_interrupt() as terminated:
                try:
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
                        checkpoint_interval=checkpoint_interval if checkpoints else None,
                        init_model=init_model,
                        run_details={"dataset": described, "model": "trained by this command"},
                        calibrate_with=calibrate_with,
                        objective=objective_name(objective),
                        target=target,
                        verbose=0 if quiet else 1,
                    )
                except KeyboardInterrupt as exc:
                    if not terminated[0]:
                        raise  # Ctrl-C: domain_errors says what was kept, exit 130
                    if str(exc):  # TrainingInterrupted says what was kept
                        typer.echo(str(exc), err=True)
                    typer.echo("Terminated (SIGTERM).", err=True)
                    raise typer.Exit(EXIT_TERMINATED) from None
            run = results["run"]
            typer.echo(f"Wall time: {format_seconds(time.perf_counter() - start)}, ", nl=False)
            typer.echo(
                f"of which fitting {format_seconds(run['fit_seconds'])}, "
                f"evaluation {format_seconds(run['evaluate_seconds'])}"
            )
            if len(results["runs"]) == 1:  # the run block has the times already
                del results["runs"][0]["fit_seconds"], results["runs"][0]["seconds"]
        else:
            det = load_detector(model, device)
            det.set_params(verbose=0 if quiet else 1)
            if given_options(ctx, ["batch_size"]):
                det.set_params(batch_size=training["batch_size"])
            det.set_params(compile=training["compile"])
            _lock_output(held, output)
            if calibration is not None:
                test = calibrate_on_test_images(
                    det,
                    test,
                    calibrate_with,
                    seed[0] if seed else None,
                    objective_name(objective),
                    target,
                )
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
            results.update(
                run_block(
                    det, dataset=described, model=str(model), evaluate_seconds=round(seconds, 1)
                )
            )
            typer.echo(f"Wall time: evaluation {format_seconds(seconds)}")
            if calibration is not None:
                results["calibration"] = calibration
        print_results(results)
        if output is not None:
            json_path, md_path = write_results(results, output)
            typer.echo(f"Results: {json_path}, {md_path}")
            if eval_every is not None:
                typer.echo(f"Learning curves: {output / 'curve.json'}, {output / 'curve.png'}")
            if model is None:
                typer.echo(f"Models: {output}/model*{MODEL_SUFFIX}")


def _lock_output(held: contextlib.ExitStack, output: Path | None) -> None:
    """Hold ``output`` until the command ends: a second run into it is refused, not mixed in."""
    if output is not None:
        output.mkdir(parents=True, exist_ok=True)
        held.enter_context(folder_lock(output))


def _refuse_torchrun() -> None:
    """evaluate is one process: under torchrun every rank would score, print and write alike."""
    from skuniad import distributed

    if distributed.launched():
        raise CliError(
            "skuniad evaluate runs in one process, not under torchrun: train the model with "
            "'torchrun ... -m skuniad fit', then run 'skuniad evaluate --model FILE' without "
            "torchrun"
        )


def _describe_dataset(
    dataset: DatasetFormat, root: Path, train_meta: Path | None, test_meta: Path | None
) -> str:
    """The data set as the report's run details name it."""
    text = f"{root} ({dataset.value})"
    if dataset is DatasetFormat.uniad_json:
        text += f", train list {train_meta}, test list {test_meta}"
    return text
