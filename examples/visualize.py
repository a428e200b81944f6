"""Heat-map overlays: where the detector thinks each defect is.

    python examples/visualize.py [--data ROOT] [--output DIR]

Writes one PNG per test image: the image on the left; on the right the
anomaly map blended over it, with the ground-truth defect outlined in white
and the pixels above the detector's pixel threshold (``predict_masks``)
outlined in green. All overlays share one colour scale, 0 to twice the pixel
threshold, so a normal image stays blue instead of having its largest noise
painted red.
"""

import argparse
import os
from pathlib import Path

from skuniad import UniADDetector
from skuniad.datasets import load_image, load_mask, load_mvtec, write_synthetic
from skuniad.evaluation import scores_and_maps
from skuniad.visualize import save_overlay

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
    parser = argparse.ArgumentParser(description="skuniad heat-map overlays")
    parser.add_argument("--data", type=Path, help="MVTec-layout root (default: synthetic)")
    parser.add_argument("--output", type=Path, default=Path("skuniad-overlays"))
    args = parser.parse_args()

    root = args.data
    if root is None:
        n, size = (4, 64) if TINY else (32, 128)
        root = write_synthetic(
            args.output / "data", n_train=n, n_test=n, image_size=size, overwrite=True
        )
    train = load_mvtec(root, "train")
    test = load_mvtec(root, "test")

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
    det.fit(train.paths)

    # One pass of the network for both; HIGHER = MORE ANOMALOUS. The maps come at model
    # resolution; save_overlay resizes each to its image.
    anomaly, maps = scores_and_maps(det, test.paths)
    for i, path in enumerate(test.paths):
        image = load_image(path)
        truth = load_mask(test.mask_paths[i], size=image.shape[:2])  # all False when normal
        name = f"{test.categories[i]}_{test.defect_types[i]}_{path.stem}.png"
        written = save_overlay(
            args.output / "overlays" / name,
            image,
            maps[i],
            vmin=0.0,
            vmax=2.0 * det.pixel_threshold_,
            mask=truth,
            threshold=det.pixel_threshold_,
        )
        print(f"{written}  anomaly score {anomaly[i]:.3f}")


if __name__ == "__main__":
    main()
