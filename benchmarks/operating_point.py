"""Choosing the operating point: the four calibration objectives on one fitted model.

For a saved model and an MVTec-style test split, per category: 10 defective
and 10 good test images (drawn with the seed) calibrate the thresholds with
each objective in turn (``evaluation.calibrate_on_test_images``, the same
draw for all four), then the other test images are scored. The table gives
the image recall, false-alarm rate and F1 at the chosen threshold, beside the
best F1 any threshold reaches on those same images (``image_f1_max``) and the
recall the ranking allows at 1 % and 5 % false alarms. Usage::

    python benchmarks/operating_point.py MODEL ROOT [--calibrate-with 10] [--seed 0]
        [--output results.json]

Prints the machine and a Markdown table; with ``--output``, the numbers as JSON.
Several such JSON files (one per draw, ``--seed``) make one summary table::

    python benchmarks/operating_point.py summarize runs/op-seed0.json runs/op-seed1.json ...

Per draw: the ``f1`` objective's mean F1 beside the best any threshold reaches
(and the gap), and the false alarms of ``false_alarms 0.05`` in each category
(its count of reported good images in the header).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from _common import machine  # noqa: E402

OBJECTIVES = (
    ("contamination", None),
    ("f1", None),
    ("false_alarms", 0.05),
    ("recall", 0.9),
)
KEYS = ("image_recall", "image_false_alarm_rate", "image_f1")


def summarize(paths: list[Path]) -> None:
    """The per-draw table of several ``--output`` files, their mean gap last."""
    tables = [json.loads(path.read_text()) for path in paths]
    categories = list(tables[0]["f1"])
    goods = [
        row["n_images"] - row["n_anomalous"] for row in tables[0]["false_alarms 0.05"].values()
    ]
    header = [f"{c} ({g} good)" for c, g in zip(categories, goods, strict=True)]
    print(
        "| file | `f1`: mean F1 | best F1 | gap | `false_alarms` 0.05: " + " | ".join(header) + " |"
    )
    print("|---|---:|---:|---:|---:|" + "---:|" * (len(categories) - 1))
    gaps = []
    for path, table in zip(paths, tables, strict=True):
        f1 = 100 * np.mean([row["image_f1"] for row in table["f1"].values()])
        best = 100 * np.mean([row["image_f1_max"] for row in table["f1"].values()])
        gaps.append(best - f1)
        alarms = [100 * table["false_alarms 0.05"][c]["image_false_alarm_rate"] for c in categories]
        cells = [f"{f1:.1f}", f"{best:.1f}", f"{best - f1:.1f}", *(f"{a:.1f}" for a in alarms)]
        print(f"| {path.stem} | " + " | ".join(cells) + " |")
    print(f"\nmean gap {np.mean(gaps):.1f} points over {len(paths)} draws")


def main() -> None:
    if sys.argv[1:2] == ["summarize"]:
        summarize([Path(p) for p in sys.argv[2:]])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("root", type=Path)
    parser.add_argument("--calibrate-with", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()

    from skuniad import UniADDetector
    from skuniad.datasets import load_mvtec
    from skuniad.evaluation import (
        calibrate_on_test_images,
        calibration_split,
        evaluate_detector,
    )

    print(f"{machine()}\n")
    model = UniADDetector.load(args.model, device="cpu")
    test = load_mvtec(args.root, "test")
    table: dict[str, dict[str, dict[str, float]]] = {}
    started = time.perf_counter()
    for objective, target in OBJECTIVES:
        det = copy.deepcopy(model)
        if objective == "contamination":  # the thresholds fit set, as the model ships
            reported = calibration_split(test, args.calibrate_with, args.seed)[1]
        else:
            reported = calibrate_on_test_images(
                det, test, args.calibrate_with, args.seed, objective, target
            )
        results = evaluate_detector(det, reported, n_overlays=0)
        name = objective if target is None else f"{objective} {target:g}"
        table[name] = {
            category: {
                key: row[key]
                for key in (
                    *KEYS,
                    "image_f1_max",
                    "recall_at_1pct_false_alarms",
                    "recall_at_5pct_false_alarms",
                    "n_images",
                    "n_anomalous",
                )
            }
            for category, row in results["categories"].items()
        }
    seconds = time.perf_counter() - started

    def pct(value: float) -> str:
        return f"{100 * value:.1f}"

    print(
        "| category | good / defective reported | best F1 | R@1%FA | R@5%FA | objective "
        "| recall | false alarms | F1 |"
    )
    print("|---|---:|---:|---:|---:|---|---:|---:|---:|")
    categories = list(next(iter(table.values())))
    for category in categories:
        for i, (name, rows) in enumerate(table.items()):
            row = rows[category]
            lead = ["", "", "", "", ""]
            if i == 0:
                good = row["n_images"] - row["n_anomalous"]
                lead = [
                    category,
                    f"{good} / {row['n_anomalous']}",
                    pct(row["image_f1_max"]),
                    pct(row["recall_at_1pct_false_alarms"]),
                    pct(row["recall_at_5pct_false_alarms"]),
                ]
            cells = [pct(row[key]) for key in KEYS]
            print("| " + " | ".join([*lead, name, *cells]) + " |")
    print()
    for name, rows in table.items():
        f1 = np.mean([row["image_f1"] for row in rows.values()])
        best = np.mean([row["image_f1_max"] for row in rows.values()])
        print(f"{name}: mean F1 {pct(f1)} (best any threshold reaches: {pct(best)})")
    print(f"\n{len(OBJECTIVES)} calibrations and evaluations in {seconds:.0f} s")
    if args.output is not None:
        args.output.write_text(json.dumps(table, indent=2) + "\n")


if __name__ == "__main__":
    main()
