"""Choosing hyper-parameters with GridSearchCV, training on normal images only.

    python examples/model_selection.py

UniADDetector.fit ignores y and learns whatever it is given as normal, so the
split decides what it trains on. The recommended construction, with
PredefinedSplit: every normal training image is in the training part of
every split (test_fold = -1), and one held-out validation set of normal AND
anomalous images, with labels, is the test fold (test_fold = 0). Do not let
plain KFold mix validation anomalies into the training folds.

GridSearchCV then ranks the candidates by UniADDetector.score, the image
AUROC, with no `scoring` argument; skuniad.metrics' scorers work as
`scoring=` too. Keep refit=False: refit=True would retrain the winner on ALL
of X, anomalies included. Refit it yourself on the normal images.

The validation set must not be the test set you report: here both are
synthetic, drawn with different seeds. Four fits of 30 epochs: several
minutes on a laptop CPU.
"""

import os

import numpy as np
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, PredefinedSplit, cross_val_score

from skuniad import UniADDetector
from skuniad.datasets import make_synthetic
from skuniad.metrics import image_ap_scorer

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
    n, size = (4, 64) if TINY else (16, 128)
    normal = make_synthetic("train", n_per_category=n, image_size=size, seed=0)
    validation = make_synthetic("test", n_per_category=n, image_size=size, seed=1)
    test = make_synthetic("test", n_per_category=n, image_size=size, seed=0)

    X = np.stack(normal.images + validation.images)
    y = np.concatenate([np.zeros(len(normal.images), dtype=int), validation.labels])
    test_fold = np.concatenate(
        [np.full(len(normal.images), -1), np.zeros(len(validation.images), dtype=int)]
    )
    cv = PredefinedSplit(test_fold)  # one split: train = the normal images only

    detector = UniADDetector(
        backbone="tf_efficientnet_lite0",
        image_size=128,
        max_epochs=30,
        learning_rate=1e-3,
        random_state=0,
    )
    if TINY:
        detector.set_params(**TINY_MODEL)
    grid = {"jitter_scale": [10.0, 20.0]}  # the feature-jitter strength (paper: 20)

    search = GridSearchCV(detector, grid, cv=cv, refit=False)  # scored by image AUROC
    search.fit(X, y)
    for params, auroc in zip(
        search.cv_results_["params"], search.cv_results_["mean_test_score"], strict=True
    ):
        print(f"{params}: validation image AUROC {auroc:.3f}")
    print(f"best: {search.best_params_}")

    # One configuration, cross-validated the same way, with a metric from skuniad.metrics
    # as `scoring` (sklearn's "roc_auc" would give 1 - AUROC for an outlier detector with
    # 1 = anomalous labels). y may also use sklearn's -1 = outlier / +1 = inlier.
    sklearn_labels = np.where(y == 1, -1, 1)
    ap = cross_val_score(detector, X, sklearn_labels, cv=cv, scoring=image_ap_scorer)
    print(f"validation image AP of the detector as configured: {ap[0]:.3f}")

    # The final model: the best parameters, refitted on the normal images only.
    best = clone(detector).set_params(**search.best_params_).fit(np.stack(normal.images))
    print(
        f"test image AUROC of the refitted best model: "
        f"{best.score(np.stack(test.images), test.labels):.3f}"
    )


if __name__ == "__main__":
    main()
