"""skuniad export-json: any data set as the UniAD authors' JSON lists."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from skuniad.cli._common import app, check_meta_options, read_split, require_root
from skuniad.cli._errors import domain_errors
from skuniad.cli._options import DatasetFormat, TestMeta, TrainMeta


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
    root = require_root(root, dataset)
    check_meta_options(dataset, train_meta, test_meta)
    with domain_errors():
        from skuniad.datasets import write_uniad_json

        splits = {}
        for split, meta in (("train", train_meta), ("test", test_meta)):
            if dataset is DatasetFormat.uniad_json and meta is None:
                continue  # converting a single list is fine
            splits[split] = read_split(dataset, root, split, category, meta)
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
