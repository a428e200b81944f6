"""Epochs to quality: UniAD's test AUROCs against fit minutes, beside a nearest-neighbour baseline.

Two sub-commands. ``nn`` scores a data set with a training-free
PatchCore-style detector on the same aligned backbone features UniAD
reconstructs (one memory bank for all categories, a random share of the
training patches; a test patch scores its distance to the nearest bank
patch; maps, image scores and AUROCs as in ``skuniad evaluate
--eval-every``) and writes its figures and time as JSON. ``plot`` draws the
``curve.json`` of ``skuniad evaluate --eval-every`` runs against their fit
minutes (``fit_seconds``: training only, scoring excluded), with the
baseline as a horizontal line, and prints the points. ``batch`` measures the
training step's images/s for several batch sizes (random features: the step
alone)::

    python benchmarks/epochs_to_quality.py nn --root ../shared/data/real-ad \\
        --image-size 128 -o runs/nn-realad.json
    skuniad evaluate --dataset mvtec --root ../shared/data/real-ad --backbone \\
        tf_efficientnet_lite0 --image-size 128 --epochs 18 --eval-every 3 --seed 0 \\
        --threads 1 -o runs/step                      # the paper's schedule
    skuniad evaluate ... --lr-schedule cosine --lr 3e-4 -o runs/cosine
    python benchmarks/epochs_to_quality.py batch --batch-sizes 8 16 32
    python benchmarks/epochs_to_quality.py plot runs/step:paper runs/cosine:cosine \\
        --baseline runs/nn-realad.json -o curves.png

The runs compared must share the machine and thread count (their minutes
are compared).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, peak_rss_gb  # noqa: E402

BACKBONE = "tf_efficientnet_lite0"


def nearest_neighbour(args: argparse.Namespace) -> None:
    import torch

    from skuniad import UniADDetector
    from skuniad._inference import extract_features
    from skuniad._spec import NetworkSpec
    from skuniad.datasets import load_mvtec
    from skuniad.evaluation import token_map_aurocs
    from skuniad.evaluation._evaluate import load_masks, mean_defined

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    det = UniADDetector(backbone=BACKBONE, image_size=args.image_size)
    backbone = NetworkSpec.from_params(det.get_params()).build_backbone(det.backbone_weights)
    device = torch.device("cpu")

    def features(paths) -> torch.Tensor:
        return extract_features(
            backbone,
            paths,
            image_size=args.image_size,
            batch_size=32,
            device=device,
            amp_dtype=None,
            resize=det.resize,
        )

    train = load_mvtec(args.root, "train")
    test = load_mvtec(args.root, "test")
    bank = features(train.paths)  # (n, C, h, w)
    bank = bank.permute(0, 2, 3, 1).reshape(-1, bank.shape[1])
    generator = torch.Generator().manual_seed(args.seed)
    keep = torch.randperm(len(bank), generator=generator)[: max(1, int(args.fraction * len(bank)))]
    bank = bank[keep]
    size = (args.image_size, args.image_size)
    rows = {}
    for category in test.category_names:
        subset = test.subset(category)
        test_features = features(subset.paths)
        n, channels, h, w = test_features.shape
        patches = test_features.permute(0, 2, 3, 1).reshape(-1, channels)
        distances = torch.cat(
            [torch.cdist(chunk, bank).min(dim=1).values for chunk in patches.split(4096)]
        )
        masks = load_masks(subset, size)
        row = token_map_aurocs(subset.labels, distances.reshape(n, h, w), masks, "max")
        rows[category] = row
        pixel = "n/a" if row["pixel_auroc"] is None else f"{100 * row['pixel_auroc']:.1f}"
        print(f"{category}: image {100 * row['image_auroc']:.1f}  pixel {pixel}", flush=True)
    mean = {
        key: mean_defined([r[key] for r in rows.values()]) for key in ("image_auroc", "pixel_auroc")
    }
    result = {
        "machine": machine(),
        "root": str(args.root),
        "image_size": args.image_size,
        "fraction": args.fraction,
        "bank_patches": len(bank),
        "seconds": time.perf_counter() - started,
        "peak_rss_gb": peak_rss_gb(),
        "categories": rows,
        "mean": mean,
    }
    print(
        f"mean: image {100 * mean['image_auroc']:.1f}  pixel {100 * mean['pixel_auroc']:.1f}  "
        f"in {result['seconds']:.0f} s ({result['machine']})"
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")


def batch_speed(args: argparse.Namespace) -> None:
    """Training images/s of the step alone (random features) for each batch size."""
    import torch

    from skuniad import UniADDetector
    from skuniad._spec import NetworkSpec
    from skuniad.training import FeatureFeed, _train_epoch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tokens = args.image_size // 16  # lite0's aligned features: stride 16
    cpu = torch.device("cpu")
    data = FeatureFeed(torch.randn(args.images, 272, tokens, tokens), cpu)
    print(f"{machine()}; {args.images} images of {tokens} x {tokens} tokens, fp32")
    for batch_size in args.batch_sizes:
        spec = NetworkSpec.from_params(UniADDetector(backbone=BACKBONE).get_params())
        training = dict(dropout=0.1, jitter_scale=20.0, jitter_prob=1.0)  # the defaults
        model = spec.build_model((272, tokens, tokens), **training).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        _train_epoch(model, data, optimizer, batch_size, 0.1, None)  # warm-up
        seconds = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            _train_epoch(model, data, optimizer, batch_size, 0.1, None)
            seconds.append(time.perf_counter() - start)
        rate = args.images / float(np.median(seconds))
        print(f"batch {batch_size}: {rate:.1f} training images/s (median of {args.repeats})")


def plot(args: argparse.Namespace) -> None:
    from matplotlib.figure import Figure

    from skuniad.evaluation import read_curves

    baseline = json.loads(args.baseline.read_text()) if args.baseline else None
    figure = Figure(figsize=(11, 4.2), layout="constrained")
    axes = dict(zip(("image_auroc", "pixel_auroc"), figure.subplots(1, 2), strict=True))
    print("| run | epoch | fit min | loss | image AUROC | pixel AUROC |")
    print("|---|---:|---:|---:|---:|---:|")
    for item in args.runs:
        folder, _, label = item.partition(":")
        curve = read_curves(folder)[0]  # the first seed's
        minutes = np.asarray(curve["fit_seconds"]) / 60
        x = minutes if args.x == "minutes" else np.asarray(curve["epoch"])
        for key, ax in axes.items():
            ax.plot(
                x,
                100 * np.asarray(curve["mean"][key], dtype=float),
                marker="o",
                label=label or folder,
            )
        for i, epoch in enumerate(curve["epoch"]):
            print(
                f"| {label or folder} | {epoch} | {minutes[i]:.1f} | {curve['loss'][i]:.3f} | "
                f"{100 * curve['mean']['image_auroc'][i]:.1f} | "
                f"{100 * curve['mean']['pixel_auroc'][i]:.1f} |"
            )
    for key, ax in axes.items():
        if baseline is not None:
            ax.axhline(
                100 * baseline["mean"][key],
                color="black",
                linestyle="--",
                label=f"nearest neighbour ({baseline['seconds'] / 60:.1f} min)",
            )
        name = key.replace("_auroc", "")
        xlabel = "fit minutes (training only)" if args.x == "minutes" else "epoch"
        ax.set(xlabel=xlabel, ylabel=f"mean {name} AUROC (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.output, dpi=110)
    print(f"wrote {args.output}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    nn = commands.add_parser("nn", help="the nearest-neighbour baseline of a data set")
    nn.add_argument("--root", type=Path, required=True, help="MVTec-layout data set")
    nn.add_argument("--image-size", type=int, default=224)
    nn.add_argument("--fraction", type=float, default=0.1, help="share of patches kept")
    nn.add_argument("--seed", type=int, default=0)
    nn.add_argument("--threads", type=int, default=1)
    nn.add_argument("-o", "--output", type=Path, required=True, help="JSON to write")
    speed = commands.add_parser("batch", help="training step speed per batch size")
    speed.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 16, 32])
    speed.add_argument("--image-size", type=int, default=128)
    speed.add_argument("--images", type=int, default=256)
    speed.add_argument("--repeats", type=int, default=3)
    speed.add_argument("--threads", type=int, default=1)
    drawing = commands.add_parser("plot", help="curves against fit minutes or epochs")
    drawing.add_argument("runs", nargs="+", help="FOLDER:LABEL, a folder holding curve.json")
    drawing.add_argument("--baseline", type=Path, help="JSON written by the nn sub-command")
    drawing.add_argument(
        "--x",
        choices=("minutes", "epoch"),
        default="minutes",
        help="x axis: fit minutes (runs on a quiet machine) or epochs (runs that shared it)",
    )
    drawing.add_argument("-o", "--output", type=Path, required=True, help="PNG to write")
    args = parser.parse_args()
    {"nn": nearest_neighbour, "batch": batch_speed, "plot": plot}[args.command](args)


if __name__ == "__main__":
    main()
