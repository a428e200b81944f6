"""Draw UniAD's learning curve beside an ablation's, as the poster's Fig. 3a.

Reads the ``curve.json`` of two (or more) ``skuniad evaluate --eval-every``
runs, finished or still training (the file follows the fit point by point),
and draws them in one PNG, with a small table of the points::

    skuniad evaluate --dataset mvtec --root DATA --backbone tf_efficientnet_lite0 \\
        --epochs 60 --eval-every 5 --seed 0 --output runs/uniad
    skuniad evaluate --dataset mvtec --root DATA --backbone tf_efficientnet_lite0 \\
        --epochs 60 --eval-every 5 --seed 0 --output runs/plain \\
        --neighbor-size 0 --jitter-scale 0 --layer-queries none
    python benchmarks/shortcut_curves.py runs/uniad:UniAD runs/plain:plain -o curves.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

from skuniad.evaluation import read_curves
from skuniad.visualize import plot_learning_curves


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="FOLDER:LABEL, a folder holding curve.json")
    parser.add_argument("-o", "--output", type=Path, required=True, help="PNG to write")
    args = parser.parse_args()
    curves = []
    for item in args.runs:
        folder, _, label = item.partition(":")
        curves += [{**run, "label": label or folder} for run in read_curves(folder)]
    plot_learning_curves(curves, args.output)
    print("| run | epoch | loss | image AUROC | pixel AUROC |")
    print("|---|---:|---:|---:|---:|")
    for curve in curves:
        for i, epoch in enumerate(curve["epoch"]):
            print(
                f"| {curve['label']} | {epoch} | {curve['loss'][i]:.4f} | "
                f"{100 * curve['mean']['image_auroc'][i]:.1f} | "
                f"{100 * curve['mean']['pixel_auroc'][i]:.1f} |"
            )
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
