"""The benchmark scripts compare like with like, and the GPU check runs on a CPU."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _script(name):
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module


FAKE = {
    "images": 8, "epochs": 1, "fit_s": 1.0, "fit_images_per_s": 8.0, "epoch_s": 0.5,
    "images_per_s": 16.0, "peak_rss_gb": 1.0, "step_s": 1.0, "extract_s": 1.0,
    "projected_1000_epochs_min": 1.0,
}  # fmt: skip


@pytest.mark.parametrize(
    ("script", "argv"), [("train_speed", ["--repeats", "1"]), ("infer_speed", [])]
)
@pytest.mark.parametrize("gpu", [False, True])
def test_both_sides_of_a_ratio_run_on_the_same_device(script, argv, gpu, monkeypatch, capsys):
    module = _script(script)
    children = []

    def run_child(path, kind, *args):
        children.append((kind, args))
        return FAKE

    monkeypatch.setattr(module, "run_child", run_child)
    monkeypatch.setattr(module, "machine", lambda: "test machine")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    monkeypatch.setattr(module, "_onnx_runtime_has_cuda", lambda: False, raising=False)
    monkeypatch.setattr(sys, "argv", [script, "--device", "auto", *argv])
    module.main()
    out = capsys.readouterr().out
    device = "cuda" if gpu else "cpu"
    compared = [args for kind, args in children if kind in ("a", "b", "c")]
    assert compared and all(args[-1] == device for args in compared)
    assert f"device: {device} for (a)" in out and f"(both on {device})" in out


@pytest.mark.parametrize("script", ["train_speed", "infer_speed"])
def test_skuniads_side_builds_its_detector_on_the_device_it_is_given(script, monkeypatch):
    import skuniad
    import skuniad.device
    from skuniad import training

    module, built = _script(script), []

    class Detector:  # records the device; "fits" with one (timed) epoch
        def __init__(self, **params):
            built.append(params.get("device", "auto"))

        def fit(self, X):
            training._train_epoch()
            return self

        def predict_all(self, X, size):
            pass

    monkeypatch.setattr(skuniad, "UniADDetector", Detector, raising=False)
    monkeypatch.setattr(training, "_train_epoch", lambda *a, **k: 0.5)
    monkeypatch.setattr(skuniad.device, "tune_cpu_runtime", lambda: False)
    monkeypatch.setattr(module, "training_images", lambda n: ["image.png"] * n)
    module.skuniad_path(8, 8, "cuda:7")  # 8 epochs, or scoring batches of 8
    assert built == ["cuda:7"]


def test_the_gpu_projection_leaves_the_warm_up_epoch_out():
    # epoch 1 ends at 10 s (start-up, the cache's copy, warm-up), then 2 s and 3 s epochs
    assert _script("train_speed").steady_epoch_seconds([10.0, 12.0, 15.0]) == 2.5


def test_gpu_check_runs_on_a_cpu_in_reduced_mode_and_says_so(capsys, monkeypatch):
    import skuniad.device

    # process-wide flush-to-zero would outlive this test (and break hypothesis's floats)
    monkeypatch.setattr(skuniad.device, "tune_cpu_runtime", lambda: False)
    # the torchrun step runs the same `torchrun ... -m skuniad fit` as test_distributed.py
    assert _script("gpu_check").main(["--images", "8", "--no-torchrun"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("gpu check: REDUCED MODE on the CPU")
    for figure in (
        "feature extraction (fp32): ",
        "training (bf16): ",
        "training (fp32): ",
        "projected 1000-epoch recipe (bf16): ",
        "fp32 vs bf16 maps (8 images): ",
        "stride-0 query in scaled_dot_product_attention",
        "  math float32 masked: relative difference output ",
        "gpu check: ok",
    ):
        assert figure in out, figure


def test_operating_point_summary_reports_each_draws_gap_and_false_alarms(tmp_path, capsys):
    def row(f1, best, false_alarms):
        return {"image_f1": f1, "image_f1_max": best, "image_false_alarm_rate": false_alarms,
                "n_images": 30, "n_anomalous": 10}  # fmt: skip

    paths = []
    for seed, f1 in enumerate([0.8, 0.7]):
        table = {
            "f1": {"a": row(f1, 0.9, 0.3), "b": row(f1, 0.9, 0.3)},
            "false_alarms 0.05": {"a": row(0.5, 0.9, 0.05), "b": row(0.5, 0.9, 0.1)},
        }
        paths.append(tmp_path / f"op-seed{seed}.json")
        paths[-1].write_text(json.dumps(table))
    _script("operating_point").summarize(paths)
    out = capsys.readouterr().out
    assert "a (20 good)" in out
    assert "| op-seed0 | 80.0 | 90.0 | 10.0 | 5.0 | 10.0 |" in out
    assert "| op-seed1 | 70.0 | 90.0 | 20.0 | 5.0 | 10.0 |" in out
    assert "mean gap 15.0 points over 2 draws" in out
