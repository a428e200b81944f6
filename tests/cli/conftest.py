"""What the command-line tests share: synthetic data, a fitted model, untouched process settings."""

import pytest
from typer.testing import CliRunner

from skuniad.cli import _common, app
from skuniad.datasets import write_synthetic


@pytest.fixture(autouse=True, scope="module")
def _keep_process_settings():
    """In-process runs leave denormal and malloc settings alone (other tests compare bits)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_common, "_tune_runtime", lambda threads=None: None)
        yield


@pytest.fixture(scope="session")
def synthetic_mvtec(tmp_path_factory):
    """Writes an MVTec-style set of two categories, grain and parts, of 32 px images."""

    def write(n_train: int = 6, n_test: int = 6):
        root = tmp_path_factory.mktemp("mvtec")
        return write_synthetic(
            root, categories=("grain", "parts"), n_train=n_train, n_test=n_test, image_size=32
        )

    return write


@pytest.fixture(scope="module")
def data_root(synthetic_mvtec):
    """6 training and 6 test images per category."""
    return synthetic_mvtec()


@pytest.fixture(scope="module")
def model_file(data_root, tiny_args, tmp_path_factory):
    """The tiny detector trained on ``data_root`` for one epoch by ``skuniad fit``."""
    path = tmp_path_factory.mktemp("model") / "model.skuniad"
    result = CliRunner().invoke(
        app,
        ["fit", str(data_root), "--dataset", "mvtec", "-o", str(path), "--epochs", "1", *tiny_args],
    )
    assert result.exit_code == 0, result.output
    return path
