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


# ------------------------------------------------- CUDA-only code paths, on a CPU
# No GPU runs the tests: torch.cuda queries are monkeypatched (gpus), the "meta" device
# stands in for an accelerator (a tensor there has no values, so code that reads one
# back fails), and distributed training runs in a one-process gloo group or under
# torchrun with two CPU processes.
class Calls(list):
    """A stand-in function that records its calls and returns ``result``."""

    def __init__(self, result=None):
        super().__init__()
        self.result = result

    def __call__(self, *args, **kwargs):
        self.append((args, kwargs))
        return self.result


@pytest.fixture
def recorder():
    """Makes stand-in functions: ``f = recorder(result)``; ``f`` lists its (args, kwargs)."""
    return Calls


@pytest.fixture
def cuda_oom_message() -> str:
    return "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 16 GiB"


@pytest.fixture
def gpus(monkeypatch):
    """Pretend this machine has GPUs; returns a setter for their count and capabilities."""

    def setup(count=1, capabilities=((8, 0),), current=0):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: current)

        def capability(device=None):
            index = device if isinstance(device, int) else torch.device(device).index
            return capabilities[index]

        monkeypatch.setattr(torch.cuda, "get_device_capability", capability)
        # emulated bf16 counts here: precision="auto" must not ask it
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)

    return setup


@pytest.fixture
def current_gpu(monkeypatch) -> list[int]:
    """A fake ``torch.cuda.device`` context; ``current_gpu[0]`` is the current GPU's index."""
    current = [0]

    class Device:
        def __init__(self, device):
            self.index = torch.device(device).index

        def __enter__(self):
            self.previous, current[0] = current[0], self.index

        def __exit__(self, *exc):
            current[0] = self.previous

    monkeypatch.setattr(torch.cuda, "device", Device)
    return current


@pytest.fixture
def train_tiny_model():
    """Trains a fresh 8-channel UniADReconstruction on ``features`` (N, 8, 3, 3), on the CPU."""
    from skuniad.nn.transformer import UniADReconstruction
    from skuniad.training import train_reconstruction

    def train(features, **options):
        model = UniADReconstruction(
            8,
            (3, 3),
            hidden_dim=8,
            num_heads=2,
            num_encoder_layers=1,
            num_decoder_layers=1,
            dim_feedforward=16,
            neighbor_size=1,
        )
        settings = dict(
            max_epochs=1,
            batch_size=4,
            learning_rate=1e-3,
            weight_decay=0.0,
            grad_clip=0.1,
            device=torch.device("cpu"),
            amp_dtype=None,
        )
        return train_reconstruction(model, features, **{**settings, **options})

    return train


@pytest.fixture
def compile_eagerly(monkeypatch):
    """``torch.compile`` with dynamo's "eager" backend, and the toolchain probe passed.

    Dynamo still traces and wraps the network (what ``compile=True`` must keep
    out of state dicts, files and pickles) without TorchInductor's minutes of
    C++ compilation. Returns dynamo's counters, cleared.
    """
    import functools

    import torch._dynamo

    import skuniad.device

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    monkeypatch.setattr(skuniad.device, "compile_unavailable", lambda device_type: None)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    return torch._dynamo.utils.counters


@pytest.fixture
def bomb_png(tmp_path) -> Path:
    """A 100-byte PNG whose header declares 30000 x 30000 pixels (a decompression bomb).

    Only its first rows are stored: a reader that checks the header refuses it
    unread; one that decodes it would allocate 900 megapixels first.
    """
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    side = 30000
    rows = zlib.compress(b"\0" * (1 + (side + 7) // 8) * 4, 9)
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path = tmp_path / "bomb.png"
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")
    )
    return path
