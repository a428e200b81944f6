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


@pytest.mark.parametrize("gpu", [False, True])
def test_train_speed_compile_times_eager_and_compiled_on_the_same_device(gpu, monkeypatch, capsys):
    module = _script("train_speed")
    children = []
    side = {"eager": 0.2, "compiled": 0.1, "ratio": 2.0, "warmup_s": 60.0}

    def run_child(path, kind, *args):
        children.append((kind, args))
        return {"fp32": side, "bf16": side}

    monkeypatch.setattr(module, "run_child", run_child)
    monkeypatch.setattr(module, "machine", lambda: "test machine")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    argv = ["train_speed", "--device", "auto", "--compile", "--batch-size", "64"]
    monkeypatch.setattr(sys, "argv", argv)
    module.main()
    out = capsys.readouterr().out
    assert children == [("compile", ("64", "20", "cuda" if gpu else "cpu"))]
    assert "fp32: eager 200.0 ms, compiled 100.0 ms per step -> ratio 2.00" in out
    assert "compile ratio: fp32 2.00, bf16 2.00" in out


def test_train_speed_compile_child_times_both_sides_per_precision(compile_eagerly, monkeypatch):
    import skuniad.device

    monkeypatch.setattr(skuniad.device, "tune_cpu_runtime", lambda: False)  # as below
    tiny = dict(hidden_dim=8, num_heads=2, num_encoder_layers=1, num_decoder_layers=1)
    result = _script("train_speed").compile_speed(
        2, 2, "cpu", warmup=1, channels=8, grid=3, dim_feedforward=16, neighbor_size=1, **tiny
    )
    assert "fp32" in result
    for timing in result.values():
        assert timing["eager"] > 0 and timing["compiled"] > 0 and timing["warmup_s"] > 0
        assert timing["ratio"] == timing["eager"] / timing["compiled"]
    assert compile_eagerly["stats"]["unique_graphs"] >= len(result)


def test_gpu_check_runs_on_a_cpu_in_reduced_mode_and_says_so(compile_eagerly, capsys, monkeypatch):
    import skuniad.device

    # process-wide flush-to-zero would outlive this test (and break hypothesis's floats)
    monkeypatch.setattr(skuniad.device, "tune_cpu_runtime", lambda: False)
    # the torchrun step runs the same `torchrun ... -m skuniad fit` as test_distributed.py
    argv = ["--images", "8", "--no-torchrun", "--budget-s", "100000"]
    assert _script("gpu_check").main(argv) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("python ") and "torch " in lines[0]
    assert lines[1].startswith("scikit-learn ") and lines[2].startswith("skuniad ")
    assert lines[3].startswith("gpu check: REDUCED MODE on the CPU")
    for figure in (
        "feature extraction (fp32): ",
        *(f"training (bf16, batch {b}, eager): " for b in (8, 32, 64, 128)),
        *(f"training (bf16, batch {b}, compiled): " for b in (8, 32, 64, 128)),
        "  compile ratio, batch 64: ",
        "training (fp32, batch 8, eager): ",
        "median of 3 after a ",
        "projected 1000-epoch recipe ",
        "profiler, bf16 batch 8, 20 eager steps: wall ",
        "profiler, bf16 batch 64, 20 eager steps: wall ",
        "fp32 vs bf16 maps (8 images): ",
        "fp32 vs bf16 end to end (8 images): backbone features ",
        "image scores Spearman rho ",
        "one-rank process group: gloo: 1 epoch on 8 features",
        "stride-0 query in scaled_dot_product_attention",
        "  math float32 masked: relative difference output ",
        "gpu check: ok",
    ):
        assert figure in out, figure
    assert compile_eagerly["stats"]["unique_graphs"] > 0  # the compiled arms compiled


def test_gpu_check_budget_skips_sweep_arms_and_says_so(compile_eagerly, capsys, monkeypatch):
    import skuniad.device

    monkeypatch.setattr(skuniad.device, "tune_cpu_runtime", lambda: False)
    gpu_check = _script("gpu_check")
    features = torch.randn(8, 8, 2, 2)
    stubs = {  # only the sweep's bookkeeping runs
        "extraction": lambda *args: (None, features, 1.0, "n/a"),
        "profiled_steps": lambda *args: {"wall_ms": 1.0, "busy_ms": 1.0, "kernels": 0},
        "map_agreement": lambda *args: (0.0, 1.0),
        "precision_agreement": lambda *args: (0.0, 1.0),
        "nccl_smoke": lambda *args: (True, "gloo"),
        "stride_zero_attention": lambda device, full: (True, []),
    }
    for name, stub in stubs.items():
        monkeypatch.setattr(gpu_check, name, stub)
    assert gpu_check.main(["--images", "8", "--no-torchrun", "--budget-s", "0"]) == 0
    out = capsys.readouterr().out
    assert "training (bf16, batch 8, eager): skipped (time budget, --budget-s 0)" in out
    assert "gpu check: ok" in out


def test_a_timed_out_command_leaves_no_process_in_a_session_of_its_own(tmp_path):
    """As torchrun's workers: started with start_new_session, they outlive a plain kill."""
    import os
    import time

    run_bounded = _script("gpu_check").run_bounded
    pid_file = tmp_path / "worker.pid"
    launcher = (
        "import subprocess, sys, time; "
        "worker = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'], "
        "start_new_session=True); "
        f"open({str(pid_file)!r}, 'w').write(str(worker.pid)); time.sleep(120)"
    )
    start = time.perf_counter()
    returncode, _, _ = run_bounded([sys.executable, "-c", launcher], timeout=5)
    assert returncode is None and time.perf_counter() - start < 60
    worker = int(pid_file.read_text())
    for _ in range(50):  # SIGKILL is asynchronous
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(worker, 9)
        raise AssertionError("the worker survived")


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
