from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType

import numpy as np
import pytest
import torch
from PIL import Image

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
    """A detector small enough to fit in about a second on a CPU (a copy: change it freely)."""
    return dict(TINY)


@pytest.fixture(scope="session")
def tiny_settings() -> Mapping:
    """``tiny_params`` read-only, for fixtures shared by a module or the session."""
    return MappingProxyType(TINY)


@pytest.fixture(scope="session")
def fast_params(tiny_settings) -> Mapping:
    """The smallest model worth fitting: one epoch at 32 px (a 2 x 2 token grid); read-only."""
    return MappingProxyType({**tiny_settings, "image_size": 32, "max_epochs": 1})


# the command-line option for each tiny parameter; max_epochs is left to each test's --epochs
_CLI_OPTIONS = {
    "backbone": "--backbone",
    "backbone_weights": "--backbone-weights",
    "image_size": "--image-size",
    "hidden_dim": "--hidden-dim",
    "num_heads": "--num-heads",
    "num_encoder_layers": "--encoder-layers",
    "num_decoder_layers": "--decoder-layers",
    "dim_feedforward": "--feedforward-dim",
    "neighbor_size": "--neighbor-size",
    "batch_size": "--batch-size",
    "random_state": "--seed",
}


@pytest.fixture(scope="module")
def tiny_args(tiny_settings) -> list[str]:
    """The tiny detector as ``skuniad fit`` options (all but the epochs), then ``--quiet``."""
    assert set(tiny_settings) - set(_CLI_OPTIONS) == {"max_epochs"}
    args = []
    for name, option in _CLI_OPTIONS.items():
        value = tiny_settings[name]
        args += [option, "none" if value is None else str(value)]
    return [*args, "--quiet"]


@pytest.fixture
def images() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(6, 40, 48, 3), dtype=np.uint8)


@pytest.fixture
def image_files(tmp_path) -> Callable[[np.ndarray], list[Path]]:
    """Saves images as ``tmp_path/0.png``, ``1.png``, ... and returns their paths."""

    def save(X) -> list[Path]:
        paths = [tmp_path / f"{i}.png" for i in range(len(X))]
        for path, image in zip(paths, X, strict=True):
            Image.fromarray(image).save(path)
        return paths

    return save


@pytest.fixture(scope="session")
def fitted_tiny():
    """One tiny fitted detector shared by read-only tests."""
    from skuniad import UniADDetector

    rng = np.random.default_rng(1)
    X = rng.integers(0, 256, size=(6, 40, 48, 3), dtype=np.uint8)
    return UniADDetector(**TINY).fit(X), X


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """(path, backbone state, reconstruction module) of a synthetic reference checkpoint."""
    from reference_checkpoint import (
        ReferenceReconstruction,
        lukemelas_b0_state,
        randomized,
        save_reference_checkpoint,
    )

    backbone = lukemelas_b0_state()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        reconstruction = randomized(ReferenceReconstruction(), seed=2).eval()
    state = {f"module.backbone.{k}": v for k, v in backbone.items()}
    state.update({f"module.reconstruction.{k}": v for k, v in reconstruction.state_dict().items()})
    path = tmp_path_factory.mktemp("reference") / "ckpt.pth.tar"
    save_reference_checkpoint(path, state)
    return path, backbone, reconstruction


@pytest.fixture(scope="module")
def imported(reference):
    from skuniad import UniADDetector

    return UniADDetector.from_reference_checkpoint(reference[0], device="cpu")


@pytest.fixture
def reference_images():
    """Three 50 x 60 images: not the model's size, so the reference's resize runs."""
    return np.random.default_rng(0).integers(0, 256, size=(3, 50, 60, 3), dtype=np.uint8)

