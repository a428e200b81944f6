"""UniAD in a scikit-learn Pipeline: file paths in, scores and labels out.

    python examples/sklearn_pipeline.py [--data ROOT]

``ImageLoader`` reads the files; the pipeline then behaves like any sklearn
outlier detector (fit, score_samples, decision_function, predict,
fit_predict, score). Anomaly maps are not part of sklearn's Pipeline
interface: reach them through the fitted steps, as shown at the end.
"""

import argparse
import os
from pathlib import Path

import joblib
from sklearn.pipeline import make_pipeline

from skuniad import UniADDetector
from skuniad.datasets import load_mvtec, write_synthetic
from skuniad.preprocessing import ImageLoader

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
    parser = argparse.ArgumentParser(description="skuniad in a scikit-learn Pipeline")
    parser.add_argument("--data", type=Path, help="MVTec-layout root (default: synthetic)")
    parser.add_argument("--output", type=Path, default=Path("skuniad-pipeline"))
    args = parser.parse_args()

    root = args.data
    if root is None:
        n, size = (4, 64) if TINY else (32, 128)
        root = write_synthetic(
            args.output / "data", n_train=n, n_test=n, image_size=size, overwrite=True
        )
    train = [str(p) for p in load_mvtec(root, "train").paths]
    test = load_mvtec(root, "test")
    test_paths = [str(p) for p in test.paths]

    detector = UniADDetector(
        backbone="tf_efficientnet_lite0",
        image_size=128,
        max_epochs=30,
        learning_rate=1e-3,
        random_state=0,
    )
    if TINY:
        detector.set_params(**TINY_MODEL)
    # Resizing while loading keeps 3 x 128 x 128 bytes per image in memory, and the
    # detector then has nothing left to resize: give the loader its image_size.
    pipe = make_pipeline(ImageLoader(size=detector.image_size), detector)
    print(pipe)

    pipe.fit(train)  # normal images only; Pipeline.fit passes no labels here
    scores = pipe.score_samples(test_paths)  # HIGHER = MORE NORMAL
    labels = pipe.predict(test_paths)  # +1 normal, -1 anomalous
    print(f"lowest score {scores.min():.3f}, highest {scores.max():.3f}")
    print(f"{(labels == -1).sum()} of {len(labels)} test images flagged anomalous")
    # score(): image AUROC; labels as 1 = anomalous / 0 = normal, or sklearn's -1 / +1
    print(f"image AUROC: {pipe.score(test_paths, test.labels):.3f}")

    # Anomaly maps and masks: the fitted steps, sliced like a list.
    loaded = pipe[:-1].transform(test_paths[:3])  # (3, 128, 128, 3) uint8
    maps = pipe[-1].anomaly_maps(loaded)  # at the loaded size, i.e. the loader's `size`
    masks = pipe[-1].predict_masks(loaded)
    print(f"maps {maps.shape}, mask pixels per image {masks.reshape(3, -1).sum(1).tolist()}")

    # A fitted pipeline pickles like any other (the networks travel as CPU tensors).
    args.output.mkdir(parents=True, exist_ok=True)
    path = args.output / "pipeline.joblib"
    joblib.dump(pipe, path)
    print(f"saved {path}; reloaded scores agree:", end=" ")
    print(bool((joblib.load(path).score_samples(test_paths) == scores).all()))


if __name__ == "__main__":
    main()
