import numpy as np
import pytest
import torch

from skuniad import UniADDetector, device
from skuniad.device import resolve_precision


def test_bf16_and_fp32_anomaly_maps_agree_closely(images):
    """bf16 autocast changes a map by at most 3 % of its range (Pearson r > 0.99)."""
    det = UniADDetector(
        backbone="tf_efficientnet_lite0",
        image_size=64,
        hidden_dim=32,
        num_heads=2,
        num_encoder_layers=1,
        num_decoder_layers=1,
        dim_feedforward=64,
        neighbor_size=1,
        max_epochs=2,
        precision="fp32",
        random_state=0,
    ).fit(images)
    fp32 = det.anomaly_maps(images, size="model")
    det.set_params(precision="bf16")
    bf16 = det.anomaly_maps(images, size="model")
    assert not np.array_equal(fp32, bf16)  # bf16 really ran
    spread = fp32.max() - fp32.min()
    assert np.abs(bf16 - fp32).max() <= 0.03 * spread
    assert np.corrcoef(bf16.ravel(), fp32.ravel())[0, 1] > 0.99


def test_explicit_precision_ignores_the_hardware(monkeypatch):
    monkeypatch.setattr(device, "cpu_has_fast_bf16", lambda: pytest.fail("probed"))
    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) is None
    assert resolve_precision("bf16", cpu) is torch.bfloat16


@pytest.mark.parametrize(("fast_bf16", "expected"), [(True, torch.bfloat16), (False, None)])
def test_auto_precision_on_a_cpu_follows_its_bf16_instructions(monkeypatch, fast_bf16, expected):
    monkeypatch.setattr(device, "cpu_has_fast_bf16", lambda: fast_bf16)
    assert resolve_precision("auto", torch.device("cpu")) is expected
