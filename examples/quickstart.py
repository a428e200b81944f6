"""Quickstart: train on normal images, score new ones, save the model.

    python examples/quickstart.py                # a synthetic data set, written first
    python examples/quickstart.py --data ROOT    # your own MVTec-layout folder

With the synthetic data this takes a few minutes on a laptop CPU.
"""

import argparse
import os
from pathlib import Path

import numpy as np

from skuniad import UniADDetector
from skuniad.datasets import load_mvtec, write_synthetic
from skuniad.metrics import image_auroc

# The test suite runs every example with SKUNIAD_EXAMPLE_TINY=1: a tiny model, a few images.
TINY = os.environ.get("SKUNIAD_EXAMPLE_TINY") == "1"
TINY_MODEL = dict(
    image_size=64,
    max_epochs=1,
    hidden_dim=32,
    num_heads=2,
    dim_feedforward=64,
    num_encoder_layers=1,
    num_decoder_layers=1,
    neighbor_size=3,
)


def main() -> None:
    parser = argparse.ArgumentParser(description="skuniad quickstart")
    parser.add_argument("--data", type=Path, help="MVTec-layout root (default: synthetic)")
    parser.add_argument("--output", type=Path, default=Path("skuniad-quickstart"))
    args = parser.parse_args()

    root = args.data
    if root is None:
        n, size = (4, 64) if TINY else (32, 128)
        root = write_synthetic(
            args.output / "data", n_train=n, n_test=n, image_size=size, overwrite=True
        )
    train = load_mvtec(root, "train")  # normal images of every category: the unified setting
    test = load_mvtec(root, "test")
    print(f"train: {train}\ntest:  {test}")

    # tf_efficientnet_lite0 ships its ImageNet weights with skuniad: no download. The paper
    # trains EfficientNet-B4 for 1000 epochs at 224 px; 30 epochs at 128 px with a 10x
    # learning rate (the settings of `skuniad demo`) are enough for the synthetic data.
    det = UniADDetector(
        backbone="tf_efficientnet_lite0",
        image_size=128,
        max_epochs=30,
        learning_rate=1e-3,
        random_state=0,
        verbose=1,
    )
    if TINY:
        det.set_params(**TINY_MODEL)
    det.fit(train.paths)  # file paths, arrays or PIL images; no labels

    normality = det.score_samples(test.paths)  # sklearn convention: HIGHER = MORE NORMAL
    anomaly = -normality  # the UniAD image score: HIGHER = MORE ANOMALOUS
    print(f"image AUROC: {image_auroc(test.labels, anomaly):.3f}")
    print(f"same, as sklearn's score(): {det.score(test.paths, test.labels):.3f}")

    predicted = det.predict(test.paths)  # +1 normal, -1 anomalous (threshold: offset_)
    flagged = predicted == -1
    print(
        f"flagged {flagged.sum()} of {len(test)} test images as anomalous "
        f"({(flagged & (test.labels == 1)).sum()} of them truly are)"
    )

    # one pass of the networks for scores, labels, maps and masks together;
    # for a list of paths, maps and masks are lists, one (H, W) array per image
    result = det.predict_all(test.paths[:2])
    maps, masks = result.anomaly_maps, result.predict_masks  # masks: maps > pixel_threshold_
    print(f"anomaly map {maps[0].shape}, defect pixels in the first mask: {masks[0].sum()}")

    path = args.output / "model.skuniad"
    det.save(path)  # one safetensors file: never runs code when loaded
    loaded = UniADDetector.load(path)
    assert np.allclose(loaded.score_samples(test.paths), normality, rtol=1e-4)
    print(f"model saved to {path} and loaded back")


if __name__ == "__main__":
    main()
