import numpy as np
import pytest
import torch

torch.set_num_threads(2)

TINY = dict(
    backbone="tf_efficientnet_lite0",
    backbone_weights=None,
    image_size=64,
    hidden_dim=32,
    num_heads=2,
    num_encoder_layers=1,
    num_decoder_layers=1,
    dim_feedforward=64,
    neighbor_size=1,
    max_epochs=2,
    batch_size=4,
    random_state=0,
)


@pytest.fixture
def tiny_params() -> dict:
    """A detector small enough to fit in about a second on a CPU."""
    return dict(TINY)


@pytest.fixture
def images() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(6, 40, 48, 3), dtype=np.uint8)


@pytest.fixture(scope="session")
def fitted_tiny():
    """One tiny fitted detector shared by read-only tests."""
    from skuniad import UniADDetector

    rng = np.random.default_rng(1)
    X = rng.integers(0, 256, size=(6, 40, 48, 3), dtype=np.uint8)
    return UniADDetector(**TINY).fit(X), X
