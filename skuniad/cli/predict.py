"""skuniad predict: score images into scores.csv, with overlays and masks."""

from __future__ import annotations

import contextlib
import csv
import math
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from skuniad._outputs import folder_lock, open_output, spreadsheet_safe
from skuniad.cli import _common
from skuniad.cli._common import MODEL_SUFFIX, app, load_detector
from skuniad.cli._errors import CliError, domain_errors
from skuniad.cli._options import ChunkSize, Device, Quiet, ScoringBatchSize, Threads

PARTIAL_SCORES = "scores.csv.partial"
"""scores.csv while a run writes it: the name says that rows may be missing."""
_NUMBER_COLUMNS = (2, 3, 4)  # anomaly_score, threshold, label: numbers, never neutralised


def _cell(column: int, text: str) -> str:
    return text if column in _NUMBER_COLUMNS else spreadsheet_safe(text)


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
    import numpy as np
    from PIL import Image

    from skuniad.datasets import load_image

    image = load_image(path)
    height, width = image.shape[:2]
    scale = max_side / max(height, width)
    if scale < 1:  # Pillow's bilinear filter, as load_image(size=...) resizes
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = np.array(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))
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

    Until every image is in, the rows go to OUTPUT/scores.csv.partial (an
    interrupted run leaves that name); a second run into the same OUTPUT is
    refused while the first writes. A link planted at an output file is
    replaced, not followed; text cells that a spreadsheet would run as a
    formula (starting with = + - @) get a leading '. Exit code 1 when no
    image could be read.
    """
    with domain_errors(), contextlib.ExitStack() as held:
        from skuniad.datasets import find_images, folder_categories

        _common._tune_runtime(threads)
        det = load_detector(model, device)
        paths = find_images(images, skip_masks=True)
        det.set_params(verbose=0)  # one progress bar, this command's
        if batch_size is not None:
            det.set_params(batch_size=batch_size)

        from skuniad._inference import to_image_size
        from skuniad._progress import progress_bar
        from skuniad._thresholds import decision_thresholds, masks_above
        from skuniad.visualize import save_overlay

        categories = folder_categories(paths, list(getattr(det, "group_image_thresholds_", {})))
        if masks and pixel_threshold is None and not hasattr(det, "thresholds_"):
            raise CliError(
                "--masks needs a pixel threshold: the model has none (an uncalibrated import); "
                "pass --pixel-threshold or run 'skuniad calibrate' first"
            )
        grouped = not pooled and bool(getattr(det, "group_image_thresholds_", {}))
        groups = categories if grouped else None
        image_t, pixel_t = decision_thresholds(
            getattr(det, "thresholds_", None),
            groups,
            len(paths),
            det.unknown_group,
            threshold,
            pixel_threshold,
        )
        scale = {}
        if pixel_t is not None:  # one colour scale for all overlays
            reference = pixel_threshold if pixel_threshold is not None else det.pixel_threshold_
            scale = dict(vmin=0.0, vmax=2.0 * reference)
        output.mkdir(parents=True, exist_ok=True)
        held.enter_context(folder_lock(output))  # a second run into it is refused, not mixed in
        names = _overlay_names(paths, images)
        csv_path = output / "scores.csv"
        partial = output / PARTIAL_SCORES  # renamed to scores.csv once every image is in
        csv_path.unlink(missing_ok=True)  # never a complete-looking file beside this run's
        rows: list[tuple[str, ...]] = []
        failed: list[str] = []
        unscored: list[str] = []  # read, but the model gave no finite score
        with open_output(partial, newline="") as f, progress_bar(not quiet) as progress:
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
                paths,
                chunk_size=chunk_size,
                size="model",
                errors="raise" if strict else "skip",
                groups=groups,
                threshold=threshold,
                pixel_threshold=pixel_threshold,
            )
            for chunk in chunks:
                for i, index in enumerate(chunk.indices):
                    path, error = paths[index], chunk.errors[i]
                    if error is not None:
                        failed.append(f"image {index}: {error}")
                        cells = [str(path), str(categories[index]), *[""] * 5, error]
                        writer.writerow([spreadsheet_safe(cell) for cell in cells])
                        continue
                    score = -chunk.score_samples[i]
                    if not math.isfinite(score):
                        unscored.append(str(path))
                    label = "" if chunk.predict is None else str(chunk.predict[i])
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
                        image_map = to_image_size(
                            chunk.anomaly_maps[i][None], [chunk.image_sizes[i]], stack=True
                        )
                        _save_mask(target, masks_above(image_map, pixel_t[index : index + 1])[0])
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
                    writer.writerow([*(_cell(i, cell) for i, cell in enumerate(row)), ""])
                f.flush()  # a long run's results so far survive an interruption
                progress.advance(task, len(chunk.indices))
        os.replace(partial, csv_path)
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
        if unscored:
            typer.echo(
                f"{len(unscored)} images got no finite anomaly score (e.g. {unscored[0]}): "
                "labelled -1; the model file may be damaged (check it on images it knows)",
                err=True,
            )
        if failed and not rows:
            raise CliError(f"none of the {len(paths)} images could be read (see {csv_path})")
        typer.echo(f"Scores: {csv_path}")
        if overlays:
            typer.echo(f"Overlays: {output / 'overlays'}")
        if masks:
            typer.echo(f"Masks: {output / 'masks'}")


def _save_mask(target: Path, mask: Any) -> None:
    """A boolean mask as a black/white PNG."""
    import numpy as np
    from PIL import Image

    target.parent.mkdir(parents=True, exist_ok=True)
    with open_output(target, "wb") as f:
        Image.fromarray(mask.astype(np.uint8) * 255).save(f, format="PNG")


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
