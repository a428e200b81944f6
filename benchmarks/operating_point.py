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

Why ``f1`` smooths and aims at a defect rate: the test images are scored once
and, over many draws (``--seed`` 0, 1, ...), four ways of choosing the F1
threshold on the same calibration images are compared by their gap to the best
F1 on the reported images: raw counts or kernel-smoothed scores, each at the
calibration images' defect share (0.5) or at the reported images' (per category)::

    python benchmarks/operating_point.py rules MODEL ROOT [--calibrate-with 10] [--draws 100]
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


def compare_rules(argv: list[str]) -> None:
    """The four F1 rules' gaps to the best F1, over ``--draws`` calibration draws."""
    parser = argparse.ArgumentParser(description="compare the F1 threshold rules")
    parser.add_argument("model", type=Path)
    parser.add_argument("root", type=Path)
    parser.add_argument("--calibrate-with", type=int, default=10)
    parser.add_argument("--draws", type=int, default=100)
    args = parser.parse_args(argv)

    from skuniad import UniADDetector
    from skuniad._thresholds import f1_threshold, smoothed_f1_threshold
    from skuniad.datasets import load_mvtec
    from skuniad.evaluation import calibration_split
    from skuniad.metrics import f1_max, operating_point

    def counted(defects, normals, rate):  # raw counts, weighted to the defect rate
        weights = np.r_[np.full(len(defects), rate / (1 - rate) * len(normals) / len(defects)),
                        np.ones(len(normals))]  # fmt: skip
        labels = np.r_[np.ones(len(defects)), np.zeros(len(normals))]
        return f1_threshold(labels, np.r_[defects, normals], weights)

    rules = {"counts": counted, "smoothed": smoothed_f1_threshold}
    print(f"{machine()}\n")
    model = UniADDetector.load(args.model, device="cpu")
    test = load_mvtec(args.root, "test")
    position = {path: i for i, path in enumerate(test.paths)}
    scores = -model.score_samples(test.paths)
    held_out = model.thresholds_.held_out or {"scores": [], "groups": []}
    held_scores, held_groups = np.asarray(held_out["scores"]), np.asarray(held_out["groups"])
    gaps: dict[str, list[list[float]]] = {}
    for seed in range(args.draws):
        calibration, reported = calibration_split(test, args.calibrate_with, seed)
        per_rule: dict[str, list[float]] = {}
        for category in test.category_names:
            mine = calibration.subset(category)
            values = scores[[position[p] for p in mine.paths]]
            defects = values[mine.labels == 1]
            normals = np.r_[values[mine.labels == 0], held_scores[held_groups == category]]
            shown = reported.subset(category)
            shown_scores = scores[[position[p] for p in shown.paths]]
            best = f1_max(shown.labels, shown_scores)
            for share in ("calibration", "reported"):
                rate = 0.5 if share == "calibration" else float(np.mean(shown.labels))
                for name, rule in rules.items():
                    flagged = shown_scores > rule(defects, normals, rate)
                    f1 = operating_point(shown.labels, flagged)["f1"]
                    per_rule.setdefault(f"{name}, {share} share", []).append(100 * (best - f1))
        for name, category_gaps in per_rule.items():
            gaps.setdefault(name, []).append(category_gaps)
    print(f"{args.draws} draws of {args.calibrate_with} defective and good images per category")
    names = " | ".join(test.category_names)
    print(f"\n| rule | mean gap | draws within 5 | 90th percentile | {names} |")
    print("|---|---:|---:|---:|" + "---:|" * len(test.category_names))
    for name, table in gaps.items():
        table = np.array(table)  # (draws, categories)
        means = table.mean(axis=1)
        cells = [
            f"{means.mean():.1f}",
            f"{np.mean(means <= 5):.0%}",
            f"{np.percentile(means, 90):.1f}",
        ]
        cells += [f"{v:.1f}" for v in table.mean(axis=0)]
        print(f"| {name} | " + " | ".join(cells) + " |")


def main() -> None:
    if sys.argv[1:2] == ["summarize"]:
        summarize([Path(p) for p in sys.argv[2:]])
        return
    if sys.argv[1:2] == ["rules"]:
        compare_rules(sys.argv[2:])
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
