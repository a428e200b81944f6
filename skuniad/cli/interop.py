"""skuniad import-reference and skuniad export: the authors' checkpoints, ONNX."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from skuniad.cli import _common
from skuniad.cli._common import MODEL_SUFFIX, app, check_output_file, load_detector
from skuniad.cli._errors import CliError, domain_errors
from skuniad.cli._options import Device, Quiet, ScoringBatchSize


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
    with domain_errors():
        if not checkpoint.is_file():
            raise CliError(f"checkpoint not found: {checkpoint}")
        from skuniad.datasets import find_images

        images = find_images([calibrate]) if calibrate is not None else None
        _common._tune_runtime()
        from skuniad import UniADDetector
        from skuniad.evaluation import run_info

        det = UniADDetector.from_reference_checkpoint(
            checkpoint, device=device, reference_padding=reference_padding
        )
        check_output_file(output)  # once the checkpoint is read: a bad one leaves no folder
        info = run_info(det)
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
    with domain_errors():
        det = load_detector(model, "cpu")
        check_output_file(output)
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
