"""skuniad info: versions, devices, usable weights; or what a model file holds."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from skuniad.cli._common import MODEL_SUFFIX, app, echo_thresholds, load_detector
from skuniad.cli._errors import domain_errors


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
        with domain_errors():
            _model_info(model)
        return
    import platform

    import timm
    import torch

    from skuniad import __version__
    from skuniad.device import cpu_has_fast_bf16, cuda_has_fast_bf16
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
    det = load_detector(path, "cpu")
    versions = metadata.get("versions", {})
    written = ", ".join(f"{k} {v}" for k, v in sorted(versions.items()))
    typer.echo(f"{path}: skuniad model, format {metadata['format_version']} ({written})")
    typer.echo(
        f"Trained: {det.n_epochs_} epochs"
        + (f", final loss {det.loss_curve_[-1]:.6g}" if det.loss_curve_ else "")
    )
    echo_thresholds(det, details=True)
    defaults = UniADDetector().get_params()
    typer.echo("Parameters (* = not the default):")
    for name, value in det.get_params().items():
        mark = "*" if value != defaults[name] else " "
        typer.echo(f" {mark} {name} = {value!r}")
