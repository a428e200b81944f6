"""A short fit on synthetic images with planted defects must find and localise them."""

import numpy as np
import pytest
from scipy.ndimage import binary_dilation

from skuniad import UniADDetector
from skuniad.datasets import make_synthetic
from skuniad.metrics import image_auroc, pixel_auroc


@pytest.mark.slow
def test_short_fit_detects_and_localises_planted_defects():
    train = make_synthetic("train", n_per_category=16, image_size=64, seed=0)
    test = make_synthetic("test", n_per_category=12, image_size=64, seed=0)
    det = UniADDetector(
        backbone="tf_efficientnet_lite0",
        image_size=128,
        hidden_dim=64,
        num_heads=4,
        num_encoder_layers=1,
        num_decoder_layers=1,
        dim_feedforward=128,
        neighbor_size=3,
        max_epochs=40,
        learning_rate=1e-3,
        random_state=0,
    ).fit(train.images)
    assert det.loss_curve_[-1] < 0.7 * det.loss_curve_[0]

    anomaly = -det.score_samples(test.images)
    assert image_auroc(test.labels, anomaly) >= 0.9

    maps = np.stack(det.anomaly_maps(test.images))  # a list in, a list out
    assert maps.shape == (len(test), 64, 64)
    assert pixel_auroc(np.stack(test.masks), maps) >= 0.9
    # the map's peak falls inside the defect, up to the 8 px token resolution
    defective = np.flatnonzero(test.labels)
    hits = [
        binary_dilation(test.masks[i], iterations=6)[np.unravel_index(maps[i].argmax(), (64, 64))]
        for i in defective
    ]
    assert np.mean(hits) >= 0.8
