"""Which ``resize`` should be the default: the reference's 8-bit Pillow resize or a float one?

For each data set (an MVTec-style category folder) and each seed, two
detectors are fitted on its ``train/good`` images, identical but for
``resize`` (``"pil-uint8"``: the reference's, the 8-bit image resized with
Pillow's bilinear filter, then scaled; ``"float"``: scaled first, resized with
torch's antialiased bilinear interpolation). Both are scored on the test
split (image and pixel AUROC at model resolution). Also measured, on the
training images: how far apart the two modes put the backbone's features
(relative L2), and the decode + resize throughput of each mode (one process,
no workers). Usage::

    python benchmarks/resize_choice.py [--epochs 10] [--image-size 224] [--seeds 0]
        [--precision auto]
        [--data ../shared/data/mvtec-ad/bottle ../shared/data/real-ad/tire]

Prints the machine, one line per data set, mode and seed, a summary per
data set and mode (mean over seeds), and writes the numbers as JSON to
``--output`` (default: resize_choice.json in the working directory).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DEFAULT_DATA = [SHARED / "mvtec-ad" / "bottle", SHARED / "real-ad" / "tire"]
MODES = ("pil-uint8", "float")
BACKBONE = "tf_efficientnet_lite0"


def _test_metrics(det, test) -> dict:
    import numpy as np

    from skuniad.datasets import load_mask
    from skuniad.metrics import image_auroc, pixel_auroc

    maps = det.anomaly_maps(test.paths, size="model")
    scores = -det.score_samples(test.paths)
    size = maps.shape[1:]
    masks = np.stack(
        [np.zeros(size, bool) if m is None else load_mask(m, size=size) for m in test.mask_paths]
    )
    return {
        "image_auroc": float(image_auroc(test.labels, scores)),
        "pixel_auroc": float(pixel_auroc(masks, maps)),
    }


def _throughput(paths: list, mode: str, size: int = 224) -> float:
    from skuniad.io import load_resized

    start = time.perf_counter()
    for i, path in enumerate(paths):
        load_resized(path, i, size, mode)
    return len(paths) / (time.perf_counter() - start)


def _feature_difference(paths: list) -> float:
    """Relative L2 distance between the lite0 features of the two modes, over ``paths``."""
    import torch

    from skuniad.io import iter_batches
    from skuniad.nn.backbone import FrozenBackbone

    backbone = FrozenBackbone(BACKBONE, (0, 1, 2, 3), "imagenet")
    features = {}
    for mode in MODES:
        batches = iter_batches(paths, 224, backbone.mean, backbone.std, 32, resize=mode)
        with torch.inference_mode():
            features[mode] = torch.cat([backbone(images) for images, _ in batches])
    difference = features["float"] - features["pil-uint8"]
    return float(difference.norm() / features["pil-uint8"].norm())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, nargs="+", default=DEFAULT_DATA)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=224, help="of the fits")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    parser.add_argument("--output", type=Path, default=Path("resize_choice.json"))
    args = parser.parse_args()

    from skuniad import UniADDetector
    from skuniad.datasets import load_mvtec
    from skuniad.device import tune_cpu_runtime

    tune_cpu_runtime()
    print(machine(), flush=True)
    print(
        f"{BACKBONE}, {args.image_size} px, {args.epochs} epochs, seeds {args.seeds}, "
        f"precision {args.precision}"
    )
    results = {
        "machine": machine(),
        "image_size": args.image_size,
        "epochs": args.epochs,
        "seeds": args.seeds,
        "data": {},
    }
    for root in args.data:
        train = [str(p) for p in load_mvtec(root, "train").paths]
        test = load_mvtec(root, "test")
        entry = {
            "n_train": len(train),
            "n_test": len(test),
            "feature_difference": _feature_difference(train),
            "images_per_second": {mode: _throughput(train, mode) for mode in MODES},
            "runs": [],
        }
        speed = ", ".join(f"{m} {v:.0f} images/s" for m, v in entry["images_per_second"].items())
        print(
            f"{root.name}: {len(train)} train / {len(test)} test images; features float vs "
            f"pil-uint8: {100 * entry['feature_difference']:.2f} % (relative L2); "
            f"decode + resize: {speed}",
            flush=True,
        )
        for seed in args.seeds:
            for mode in MODES:
                start = time.perf_counter()
                det = UniADDetector(
                    backbone=BACKBONE,
                    resize=mode,
                    image_size=args.image_size,
                    max_epochs=args.epochs,
                    precision=args.precision,
                    random_state=seed,
                ).fit(train)
                run = {"seed": seed, "mode": mode, "final_loss": det.loss_curve_[-1]}
                run.update(_test_metrics(det, test))
                run["seconds"] = time.perf_counter() - start
                entry["runs"].append(run)
                print(
                    f"  seed {seed} {mode:9s}  image AUROC {100 * run['image_auroc']:.1f}  "
                    f"pixel AUROC {100 * run['pixel_auroc']:.1f}  final loss "
                    f"{run['final_loss']:.4f}  ({run['seconds']:.0f} s)",
                    flush=True,
                )
        for mode in MODES:
            runs = [r for r in entry["runs"] if r["mode"] == mode]
            image = sum(r["image_auroc"] for r in runs) / len(runs)
            pixel = sum(r["pixel_auroc"] for r in runs) / len(runs)
            print(f"  mean {mode:9s}  image AUROC {100 * image:.1f}  pixel AUROC {100 * pixel:.1f}")
        results["data"][root.name] = entry
        args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written: {args.output}")


if __name__ == "__main__":
    main()
