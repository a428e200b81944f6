import numpy as np
import pytest
import torch

from skuniad import UniADDetector, device
from skuniad.device import (
    DeviceOutOfMemoryError,
    explain_out_of_memory,
    resolve_device,
    resolve_precision,
)
from skuniad.nn.backbone import FrozenBackbone
from skuniad.nn.transformer import UniADReconstruction


def test_bf16_and_fp32_anomaly_maps_agree_closely(tiny_params, images):
    """bf16 autocast changes a map by at most 3 % of its range (Pearson r > 0.99)."""
    # ImageNet weights and the default batch size: maps of a trained backbone
    params = {**tiny_params, "backbone_weights": "imagenet", "batch_size": 8}
    det = UniADDetector(**params, precision="fp32").fit(images)
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


# ------------------------------------------------------------- out of memory
@pytest.mark.parametrize(
    ("module", "task"),
    [(FrozenBackbone, "extracting features"), (UniADReconstruction, "training")],
)
def test_out_of_memory_in_fit_names_batch_size(tiny_params, images, monkeypatch, module, task):
    def out_of_memory(self, *args):
        raise torch.cuda.OutOfMemoryError(
            "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 8 GiB"
        )

    monkeypatch.setattr(module, "forward", out_of_memory)
    with pytest.raises(DeviceOutOfMemoryError, match=f"while {task}.*batch_size") as caught:
        UniADDetector(**tiny_params).fit(images)
    assert isinstance(caught.value, MemoryError)
    assert "CUDA out of memory" in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


@pytest.mark.parametrize(
    ("batch_size", "inference", "images", "advice"),
    [
        (8, False, 8, "try batch_size=4"),
        (1, False, 1, "even batch_size=1 does not fit"),
        (8, True, 32, "try batch_size=4"),  # 16 images per batch
        (64, True, 32, "try batch_size=4"),
        (4, True, 16, "try batch_size=2"),  # 8 images per batch
        (1, True, 4, "even batch_size=1 does not fit"),
    ],
)
def test_out_of_memory_advice_halves_the_images_per_batch(batch_size, inference, images, advice):
    with pytest.raises(DeviceOutOfMemoryError) as caught:
        with explain_out_of_memory("working", batch_size, inference=inference):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 GiB")
    assert f"({images} images per batch)" in str(caught.value)
    assert advice in str(caught.value)


# ------------------------------------------------------- CUDA devices (faked)
def test_auto_precision_uses_the_chosen_gpus_compute_capability(gpus):
    gpus(count=2, capabilities=[(9, 0), (7, 0)])  # an H100 and a V100
    assert resolve_precision("auto", torch.device("cuda", 0)) is torch.bfloat16
    assert resolve_precision("auto", torch.device("cuda", 1)) is None  # emulated bf16: fp32
    assert resolve_precision("bf16", torch.device("cuda", 1)) is torch.bfloat16


def test_cuda_devices_resolve_to_an_index(gpus):
    gpus(count=3, capabilities=[(8, 0)] * 3, current=2)
    assert resolve_device("cuda") == torch.device("cuda", 2)
    assert resolve_device("auto") == torch.device("cuda", 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ValueError, match="has 3 CUDA device"):
        resolve_device("cuda:3")


def test_compiled_is_the_module_itself_when_off():
    model = torch.nn.Linear(2, 2)
    assert device.compiled(model, torch.device("cpu"), False) is model


def test_compiled_falls_back_to_eager_with_a_warning_where_no_compiler_works(monkeypatch):
    reason = "InvalidCxxCompiler: No working C++ compiler found"
    monkeypatch.setattr(device, "compile_unavailable", lambda device_type: reason)
    model = torch.nn.Linear(2, 2)
    with pytest.warns(RuntimeWarning, match="cannot run on cpu here.*No working C\\+\\+ compiler"):
        assert device.compiled(model, torch.device("cpu"), True) is model


def test_compile_unavailable_reports_the_toolchains_first_line(monkeypatch):
    def broken(fn, **kwargs):
        def run(*args):
            raise RuntimeError("Compiler: cc is not found.\nlong details")

        return run

    monkeypatch.setattr(torch, "compile", broken)
    probe = device.compile_unavailable.__wrapped__  # uncached
    assert probe("cpu") == "RuntimeError: Compiler: cc is not found."


def test_compiled_fit_without_a_compiler_warns_and_equals_an_eager_fit(
    monkeypatch, fast_params, images
):
    monkeypatch.setattr(device, "compile_unavailable", lambda device_type: "no compiler")
    eager = UniADDetector(**fast_params).fit(images)
    with pytest.warns(RuntimeWarning, match="no compiler"):
        fallback = UniADDetector(**fast_params, compile=True).fit(images)
    assert fallback.loss_curve_ == eager.loss_curve_
    with pytest.warns(RuntimeWarning, match="no compiler"):
        scores = fallback.score_samples(images)
    np.testing.assert_array_equal(scores, eager.score_samples(images))
