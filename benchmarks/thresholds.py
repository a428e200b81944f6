"""Decision thresholds at the operating point: training-set vs held-out, pooled vs per category.

One unified model on real-ad's three categories and MVTec AD bottle together
(tf_efficientnet_lite0, a fixed seed, a modest epoch budget), two fits:

- fit A, ``validation_fraction=F`` with the categories as ``groups``: trains
  on the other (1 - F) of each category's normal images and sets its
  thresholds on the held-out F (pooled and per category). The training part,
  scored after the fit, gives the same model's training-set thresholds, so
  one fit compares both calibrations;
- fit B, all normal images (the paper's recipe, ``validation_fraction=None``):
  today's model and thresholds; its AUROC minus fit A's is what holding out
  costs.

For each calibration, on the test images of each data set and category: the
false-alarm rate on good images and the recall on defective ones at the
image threshold (``predict``), precision and F1 too, and the same at the pixel
threshold (``predict_masks``, model resolution, all pixels pooled). Usage::

    python benchmarks/thresholds.py [--epochs 10] [--fraction 0.1] [--seed 0]
        [--output-dir /tmp/skuniad-thresholds] [--real-ad PATH] [--mvtec PATH]

Writes results.json, results.md, the raw scores (scores.npz) and both models
to the output folder; prints the Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REAL_AD, machine, peak_rss_gb  # noqa: E402

MVTEC = REAL_AD.parent / "mvtec-ad"
BACKBONE = "tf_efficientnet_lite0"
CHUNK = 64


def _datasets(split: str, real_ad: Path, mvtec: Path, category: str):
    """The split of real-ad (all categories) + one MVTec AD category, and each image's set."""
    from skuniad.datasets import load_mvtec

    parts = [
        ("real-ad", load_mvtec(real_ad, split)),
        (category, load_mvtec(mvtec, split, category)),
    ]
    paths, categories, sources, labels, masks = [], [], [], [], []
    for name, data in parts:
        paths += data.paths
        categories += data.categories
        sources += [name] * len(data)
        labels.append(data.labels)
        masks += data.mask_paths
    return (
        paths,
        np.array(categories, dtype=object),
        np.array(sources),
        np.concatenate(labels),
        masks,
    )


def _scores_and_maxima(det, paths) -> tuple[np.ndarray, np.ndarray]:
    """Image anomaly scores and per-image map maxima (model resolution), chunk by chunk."""
    from skuniad.evaluation import scores_and_maps

    scores, maxima = [], []
    for begin in range(0, len(paths), CHUNK):
        s, maps = scores_and_maps(det, paths[begin : begin + CHUNK])
        scores.append(s)
        maxima.append(maps.reshape(len(maps), -1).max(1))
    return np.concatenate(scores), np.concatenate(maxima)


def _thresholds(det, scores, maxima, groups, members) -> dict:
    """The contamination rule on ``members``: pooled and per group, image and pixel."""
    from skuniad._thresholds import contamination_threshold

    rule = det.contamination
    per_group = {}
    for group in sorted(set(groups[members])):
        chosen = members & (groups == group)
        per_group[group] = (
            contamination_threshold(scores[chosen], rule),
            contamination_threshold(maxima[chosen], rule),
        )
    pooled = (
        contamination_threshold(scores[members], rule),
        contamination_threshold(maxima[members], rule),
    )
    return {"pooled": pooled, "per_category": per_group}


def _test_pass(det, test) -> dict:
    """Test scores, per-image pixel counts above candidate thresholds need the maps: keep them
    per category at model resolution, with the resized ground-truth masks."""
    from skuniad.datasets import load_mask
    from skuniad.evaluation import scores_and_maps
    from skuniad.metrics import image_auroc, pixel_auroc

    paths, categories, _, labels, mask_paths = test
    out = {"scores": np.empty(len(paths)), "maps": {}, "masks": {}, "auroc": {}}
    for category in sorted(set(categories)):
        index = np.flatnonzero(categories == category)
        scores, maps = [], []
        for begin in range(0, len(index), CHUNK):
            s, m = scores_and_maps(det, [paths[i] for i in index[begin : begin + CHUNK]])
            scores.append(s)
            maps.append(m)
        scores, maps = np.concatenate(scores), np.concatenate(maps)
        size = maps.shape[1:]
        masks = np.stack(
            [
                np.zeros(size, dtype=bool)
                if mask_paths[i] is None
                else load_mask(mask_paths[i], size)
                for i in index
            ]
        )
        out["scores"][index] = scores
        out["maps"][category], out["masks"][category] = maps, masks
        out["auroc"][category] = {
            "image_auroc": image_auroc(labels[index], scores),
            "pixel_auroc": pixel_auroc(masks, maps),
        }
    return out


def _operating_points(test, scored, calibration) -> dict:
    """Image and pixel operating points of one calibration, per category and per data set."""
    from skuniad.metrics import operating_point

    paths, categories, sources, labels, _ = test
    pooled, per_group = calibration
    image_t = np.array([per_group.get(c, pooled)[0] for c in categories])
    flagged = scored["scores"] > image_t
    rows = {}
    units = [(c, categories == c) for c in sorted(set(categories))]
    units += [(f"[{s}]", sources == s) for s in sorted(set(sources))]
    for name, chosen in units:
        row = {"image": operating_point(labels[chosen], flagged[chosen])}
        truth, predicted = [], []
        for category in sorted(set(categories[chosen])):
            threshold = np.float32(per_group.get(category, pooled)[1])
            truth.append(scored["masks"][category].ravel())
            predicted.append((scored["maps"][category] > threshold).ravel())
        row["pixel"] = operating_point(np.concatenate(truth), np.concatenate(predicted))
        rows[name] = row
    return rows


def _calibrations(thresholds: dict) -> tuple:
    pooled = thresholds["pooled"]
    return {"pooled": (pooled, {}), "per_category": (pooled, thresholds["per_category"])}


def _markdown(results: dict) -> str:
    lines = [
        "# Thresholds at the operating point",
        "",
        f"- {results['machine']}",
        f"- {results['settings']}",
        "",
        "Image level: false-alarm rate on good test images / recall on defective ones, %",
        "(flagged / images). Pixel level: the same over pixels at model resolution.",
        "",
    ]
    variants = results["variants"]
    units = list(next(iter(variants.values()))["rows"])
    header = ["Calibration", *units]
    for level in ("image", "pixel"):
        lines += [f"## {level} level: false alarms / recall (%)", ""]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join(["---"] + ["---:"] * len(units)) + "|")
        for name, variant in variants.items():
            cells = []
            for unit in units:
                op = variant["rows"][unit][level]
                cells.append(f"{100 * op['false_alarm_rate']:.1f} / {100 * op['recall']:.1f}")
            lines.append("| " + " | ".join([name, *cells]) + " |")
        lines.append("")
    lines += ["## AUROC (%)", "", "| Fit | " + " | ".join(results["auroc"]["A"]) + " |"]
    lines.append("|" + "|".join(["---"] + ["---:"] * len(results["auroc"]["A"])) + "|")
    for fit in results["auroc"]:
        cells = [
            f"{100 * v['image_auroc']:.1f} / {100 * v['pixel_auroc']:.1f}"
            for v in results["auroc"][fit].values()
        ]
        lines.append(f"| {fit} (image / pixel) | " + " | ".join(cells) + " |")
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--real-ad", type=Path, default=REAL_AD)
    parser.add_argument("--mvtec", type=Path, default=MVTEC)
    parser.add_argument("--mvtec-category", default="bottle")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", type=Path, default=Path("/tmp/skuniad-thresholds"))
    parser.add_argument(
        "--fit-a",
        type=Path,
        help="Reuse fit A from this model file (written by an earlier run as fit_a.skuniad).",
    )
    args = parser.parse_args()

    from sklearn.utils import check_random_state

    from skuniad import UniADDetector
    from skuniad._thresholds import validation_split
    from skuniad.device import tune_cpu_runtime

    tune_cpu_runtime()
    out = args.output_dir
    out.mkdir(parents=True, exist_ok=True)
    train = _datasets("train", args.real_ad, args.mvtec, args.mvtec_category)
    test = _datasets("test", args.real_ad, args.mvtec, args.mvtec_category)
    paths, groups = train[0], train[1]
    params = dict(
        backbone=BACKBONE,
        max_epochs=args.epochs,
        image_size=args.image_size,
        random_state=args.seed,
    )
    settings = (
        f"{BACKBONE}, {args.epochs} epochs, seed {args.seed}, {args.image_size} px; "
        f"{len(paths)} normal training images, {len(test[0])} test images; "
        f"held-out share {args.fraction}"
    )
    print(settings, flush=True)
    results: dict = {"machine": machine(), "settings": settings, "variants": {}, "auroc": {}}
    raw = {}

    # fit A: held-out share, per-category thresholds set by fit itself
    if args.fit_a is not None:
        det_a = UniADDetector.load(args.fit_a)
        expected = {**params, "validation_fraction": args.fraction}
        differ = {k: v for k, v in expected.items() if det_a.get_params()[k] != v}
        if differ:
            raise SystemExit(f"{args.fit_a} was fitted with other settings than {differ}")
        results["fit_a"] = f"reused from {args.fit_a}"
    else:
        start = time.perf_counter()
        det_a = UniADDetector(**params, validation_fraction=args.fraction)
        det_a.fit(paths, groups=groups)
        results["fit_a_seconds"] = round(time.perf_counter() - start, 1)
        det_a.save(out / "fit_a.skuniad")
        print(f"fit A: {results['fit_a_seconds']} s", flush=True)
    seed = int(check_random_state(args.seed).randint(np.iinfo(np.int32).max))
    train_idx, held_idx = validation_split(len(paths), groups, args.fraction, seed)
    scores_a, maxima_a = _scores_and_maxima(det_a, paths)
    raw.update(train_scores_a=scores_a, train_maxima_a=maxima_a, held_out_a=held_idx)
    is_held = np.isin(np.arange(len(paths)), held_idx)
    on_train = _thresholds(det_a, scores_a, maxima_a, groups, ~is_held)
    on_held = _thresholds(det_a, scores_a, maxima_a, groups, is_held)
    # the reproduced split must give exactly fit's own held-out thresholds
    results["split_check_abs_diff"] = max(
        abs(on_held["pooled"][0] - det_a.image_threshold_),
        abs(on_held["pooled"][1] - det_a.pixel_threshold_),
        *(abs(on_held["per_category"][g][0] - t) for g, t in det_a.group_image_thresholds_.items()),
    )
    scored_a = _test_pass(det_a, test)
    raw["test_scores_a"] = scored_a["scores"]
    results["auroc"]["A"] = scored_a["auroc"]
    for source, thresholds in (("training-set", on_train), ("held-out", on_held)):
        for kind, calibration in _calibrations(thresholds).items():
            name = f"A, {source}, {kind.replace('_', '-')}"
            results["variants"][name] = {
                "thresholds": {"pooled": thresholds["pooled"], **thresholds["per_category"]},
                "rows": _operating_points(test, scored_a, calibration),
            }
    del scored_a
    _write(out, results, raw, test)  # fit A's part stands on its own

    # fit B: all images (today's recipe and thresholds)
    start = time.perf_counter()
    det_b = UniADDetector(**params).fit(paths)
    results["fit_b_seconds"] = round(time.perf_counter() - start, 1)
    det_b.save(out / "fit_b.skuniad")
    print(f"fit B: {results['fit_b_seconds']} s", flush=True)
    scores_b, maxima_b = _scores_and_maxima(det_b, paths)
    raw.update(train_scores_b=scores_b, train_maxima_b=maxima_b)
    on_all = _thresholds(det_b, scores_b, maxima_b, groups, np.ones(len(paths), dtype=bool))
    scored_b = _test_pass(det_b, test)
    raw["test_scores_b"] = scored_b["scores"]
    results["auroc"]["B"] = scored_b["auroc"]
    for kind, calibration in _calibrations(on_all).items():
        name = f"B (all images), training-set, {kind.replace('_', '-')}"
        results["variants"][name] = {
            "thresholds": {"pooled": on_all["pooled"], **on_all["per_category"]},
            "rows": _operating_points(test, scored_b, calibration),
        }
    _write(out, results, raw, test)


def _write(out: Path, results: dict, raw: dict, test) -> None:
    """results.json, results.md and scores.npz as they stand; the report on stdout."""
    results["peak_rss_gb"] = round(peak_rss_gb(), 2)
    np.savez(out / "scores.npz", **raw, test_labels=test[3], test_categories=test[1].astype(str))
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    report = _markdown(results)
    (out / "results.md").write_text(report)
    print(report, flush=True)


if __name__ == "__main__":
    main()
