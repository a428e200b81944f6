import csv
import inspect
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from skuniad import UniADDetector
from skuniad import cli as cli_module
from skuniad._spec import json_safe_params
from skuniad.cli import _errors, _options, app, demo, evaluate, fit, predict
from skuniad.device import resolve_precision

runner = CliRunner()


def test_fit_writes_a_loadable_model(model_file):
    det = UniADDetector.load(model_file, device="cpu")
    assert det.n_epochs_ == 1
    assert (det.image_size, det.hidden_dim, det.neighbor_size) == (64, 32, 1)
    assert det.backbone_weights is None


def test_fit_on_a_folder_of_images(data_root, tmp_path, tiny_args):
    output = tmp_path / "nested" / "m.skuniad"
    folder = data_root / "grain" / "train"  # images are found recursively (train/good)
    result = runner.invoke(
        app, ["fit", str(folder), "-o", str(output), "--epochs", "1", *tiny_args]
    )
    assert result.exit_code == 0, result.output
    assert "Training on 6 images" in result.output
    assert output.is_file()
    assert UniADDetector.load(output, device="cpu").n_epochs_ == 1


def test_compile_runs_fit_and_evaluate_through_torch_compile(
    compile_eagerly, data_root, model_file, tmp_path, tiny_args
):
    folder = data_root / "grain" / "train"
    output = tmp_path / "m.skuniad"
    args = ["fit", str(folder), "-o", str(output), "--epochs", "1", "--compile", *tiny_args]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert compile_eagerly["stats"]["unique_graphs"] > 0
    compile_eagerly.clear()
    args = ["evaluate", "--root", str(data_root), "--model", str(model_file), "--compile"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert compile_eagerly["stats"]["unique_graphs"] > 0  # scoring a saved model


def test_predict_writes_scores_and_overlays(model_file, data_root, tmp_path):
    folder = data_root / "parts" / "test"
    result = runner.invoke(
        app, ["predict", str(model_file), str(folder), "-o", str(tmp_path), "--chunk-size", "4"]
    )
    assert result.exit_code == 0, result.output
    with open(tmp_path / "scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["path"] for r in rows] == [str(p) for p in sorted(folder.rglob("*.png"))]
    det = UniADDetector.load(model_file, device="cpu")
    paths = [r["path"] for r in rows]
    np.testing.assert_allclose(
        [float(r["anomaly_score"]) for r in rows], -det.score_samples(paths), rtol=1e-5
    )
    assert [int(r["label"]) for r in rows] == det.predict(paths).tolist()
    overlays = [Path(r["overlay"]) for r in rows]
    assert all(p.is_file() for p in overlays)
    # names mirror the input folders, so good/000.png and hole/000.png do not collide
    assert {p.relative_to(tmp_path / "overlays").parts[0] for p in overlays} == {
        "good", "hole", "scratch", "stain",
    }  # fmt: skip


def test_predict_leaves_labels_empty_without_thresholds(
    model_file, data_root, tmp_path, monkeypatch
):
    det = UniADDetector.load(model_file, device="cpu")
    del det.thresholds_  # as after importing an uncalibrated checkpoint
    monkeypatch.setattr(predict, "load_detector", lambda path, device: det)
    image = data_root / "parts" / "test" / "good" / "000.png"
    result = runner.invoke(app, ["predict", str(model_file), str(image), "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "labels are left empty" in result.output
    with open(tmp_path / "scores.csv", newline="") as f:
        (row,) = csv.DictReader(f)
    assert row["label"] == "" and float(row["anomaly_score"]) > 0
    assert Path(row["overlay"]).is_file()


def test_evaluate_a_saved_model(model_file, data_root, tmp_path):
    result = runner.invoke(
        app,
        ["evaluate", "--root", str(data_root), "--model", str(model_file), "-o", str(tmp_path)]
        + ["--category", "parts", "--overlays", "--overlays-per-category", "2", "-q"]
        + ["--batch-size", "1"],  # the out-of-memory advice can be followed
    )
    assert result.exit_code == 0, result.output
    assert "P-AUROC" in result.output and "AUPRO" in result.output
    assert "Wall time: evaluation" in result.output
    results = json.loads((tmp_path / "results.json").read_text())
    assert list(results["categories"]) == ["parts"]
    for key in ("image_auroc", "pixel_auroc", "aupro", "image_ap", "pixel_ap", "image_f1_max"):
        assert 0.0 <= results["categories"]["parts"][key] <= 1.0
        assert results["mean"][key] == results["categories"]["parts"][key]
    assert results["run"]["model"] == str(model_file)
    det = UniADDetector.load(model_file, device="cpu")
    assert results["schema_version"] == 1 and "seconds" not in results
    assert results["params"] == {**json_safe_params(det.get_params()), "batch_size": 1}
    assert results["thresholds"]["offset_"] == det.offset_
    amp_dtype = resolve_precision(det.precision, det.device_)
    assert results["precision"] == ("fp32" if amp_dtype is None else "bf16")
    with open(tmp_path / "scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == results["n_images"] and set(rows[0]) == {
        "path",
        "category",
        "label",
        "score",
    }
    assert "| parts |" in (tmp_path / "results.md").read_text()
    assert len(list((tmp_path / "overlays" / "parts").glob("*.png"))) == 2
    assert not (tmp_path / "model.skuniad").exists()


@pytest.mark.slow
def test_evaluate_trains_on_all_categories_and_saves_the_model(data_root, tmp_path, tiny_args):
    result = runner.invoke(
        app,
        ["evaluate", "--root", str(data_root), "-o", str(tmp_path), "--epochs", "2", *tiny_args],
    )
    assert result.exit_code == 0, result.output
    assert "of which fitting" in result.output
    results = json.loads((tmp_path / "results.json").read_text())
    assert list(results["categories"]) == ["grain", "parts"]
    assert results["n_images"] == 12 and results["run"]["epochs"] == 2
    assert results["run"]["fit_seconds"] > 0
    assert UniADDetector.load(tmp_path / "model.skuniad", device="cpu").n_epochs_ == 2


@pytest.mark.slow
def test_evaluate_separate_setting_over_seeds_with_learning_curves(data_root, tmp_path, tiny_args):
    args = ["evaluate", "--root", str(data_root), "-o", str(tmp_path), "--epochs", "2"]
    args += ["--setting", "separate", "--seed", "1", "--eval-every", "1", "--curve-categories"]
    result = runner.invoke(app, args + tiny_args)  # tiny_args adds --seed 0
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["setting"] == "separate" and results["seeds"] == [1, 0]
    assert [run["seed"] for run in results["runs"]] == [1, 0]
    for name in ("grain", "parts"):
        values = [run["categories"][name]["image_auroc"] for run in results["runs"]]
        assert results["categories"][name]["image_auroc"] == pytest.approx(np.mean(values))
        assert results["std"]["categories"][name]["image_auroc"] == pytest.approx(
            np.std(values, ddof=1)
        )
        for seed in (0, 1):  # one model per category and seed, each trained on its category
            det = UniADDetector.load(tmp_path / f"model_{name}_seed{seed}.skuniad", device="cpu")
            assert det.random_state == seed and det.n_epochs_ == 2
    assert " ± " in (tmp_path / "results.md").read_text()
    curves = json.loads((tmp_path / "curve.json").read_text())
    assert [run["epoch"] for run in curves["runs"]] == [[1, 2], [1, 2]]
    assert set(curves["runs"][0]["categories"]) == {"grain", "parts"}
    assert (tmp_path / "curve.png").stat().st_size > 10_000


def test_evaluate_ablation_and_schedule_options_reach_the_model(data_root, tmp_path, tiny_args):
    args = ["evaluate", "--root", str(data_root), "-o", str(tmp_path), "--epochs", "1"]
    args += ["--layer-queries", "none", "--jitter-scale", "0", "--image-score", "std"]
    args += ["--lr-schedule", "cosine"]
    result = runner.invoke(app, args + tiny_args + ["--neighbor-size", "0"])
    assert result.exit_code == 0, result.output
    det = UniADDetector.load(tmp_path / "model.skuniad", device="cpu")
    assert (det.layer_queries, det.jitter_scale, det.neighbor_size) == ("none", 0.0, None)
    assert (det.image_score, det.lr_schedule) == ("std", "cosine")
    assert all(layer.layer_queries is None for layer in det.model_.decoder)
    assert "I-AUROC std" in result.output


@pytest.mark.parametrize(
    ("options", "every", "interval"),
    [
        ([], None, 60.0),  # fit's timer, as skuniad fit
        (["--checkpoint-interval", "5"], None, 5.0),
        (["--checkpoint-every", "2"], 2, 60.0),
        (["--checkpoint-every", "0"], None, None),
    ],
)
def test_evaluate_checkpoints_on_fits_timer_by_default(
    data_root, tmp_path, tiny_args, monkeypatch, options, every, interval
):
    import skuniad.evaluation

    asked = {}

    def run_experiment(*args, **kwargs):
        asked.update(kwargs)
        raise ValueError("recorded")

    monkeypatch.setattr(skuniad.evaluation, "run_experiment", run_experiment)
    args = ["evaluate", "--root", str(data_root), "-o", str(tmp_path), "--epochs", "1"]
    result = runner.invoke(app, [*args, *tiny_args, *options])
    assert "Error: recorded" in result.output
    assert (asked["checkpoint_every"], asked["checkpoint_interval"]) == (every, interval)


@pytest.mark.slow
def test_demo_writes_data_model_report_and_overlays(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "DEMO_DATA", dict(n_train=3, n_test=2, image_size=32))
    monkeypatch.setattr(
        demo,
        "DEMO_PARAMS",
        dict(image_size=64, hidden_dim=32, num_heads=2, num_encoder_layers=1,
             num_decoder_layers=1, dim_feedforward=64, neighbor_size=1),
    )  # fmt: skip
    result = runner.invoke(app, ["demo", "-o", str(tmp_path), "--epochs", "1", "-q"])
    assert result.exit_code == 0, result.output
    for name in ("data/parts/train/good", "model.skuniad", "results.md", "results.json"):
        assert (tmp_path / name).exists(), name
    results = json.loads((tmp_path / "results.json").read_text())
    assert list(results["categories"]) == ["dots", "grain", "parts", "stripes"]
    assert len(results["overlays"]) == 4 * 2  # the normal and the anomalous image
    assert results["run"]["backbone"] == "tf_efficientnet_lite0"


@pytest.mark.parametrize(
    "args, message",
    [
        (["evaluate", "--root", "/no/such/dir"], "does not exist: /no/such/dir"),
        (["fit", "/no/such/dir", "-o", "m.skuniad"], "no such file or folder: /no/such/dir"),
        (["predict", "/no/model.skuniad", ".", "-o", "out"], "model file not found"),
    ],
)
def test_domain_errors_print_one_line_and_exit_1(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and result.output.startswith("Error: ")
    assert message in result.output
    assert "Traceback" not in result.output


def test_bad_model_file_and_bad_dataset_are_domain_errors(data_root, tmp_path):
    bad = tmp_path / "bad.skuniad"
    bad.write_bytes(b"not a model")
    result = runner.invoke(app, ["predict", str(bad), str(data_root), "-o", str(tmp_path)])
    assert result.exit_code == 1 and result.output.startswith("Error: ")
    result = runner.invoke(app, ["evaluate", "--root", str(tmp_path)])
    assert result.exit_code == 1 and "not an MVTec-style data set" in result.output
    result = runner.invoke(app, ["fit", str(data_root), "-o", str(tmp_path / "m.skuniad")])
    assert result.exit_code == 1 and "--dataset mvtec" in result.output


@pytest.mark.parametrize(
    "args",
    [
        ["fit", "--no-such-option"],
        ["fit", "somewhere"],  # --output missing
        ["fit", "x", "-o", "m.skuniad", "--epochs", "0"],
        ["evaluate", "--root", ".", "--dataset", "btad"],
        ["evaluate", "--root", ".", "--model", "m.skuniad", "--epochs", "3"],
        ["evaluate", "--root", ".", "--overlays"],  # needs --output
        ["evaluate", "--root", ".", "-o", "out", "--eval-every", "0"],
        ["evaluate", "--root", ".", "-o", "out", "--epochs", "2", "--eval-every", "3"],
        ["evaluate", "--root", ".", "--epochs", "2", "--eval-every", "1"],  # needs --output
        ["evaluate", "--root", ".", "--model", "m.skuniad", "--seed", "0", "--seed", "1"],
        ["evaluate", "--root", ".", "--model", "m.skuniad", "--eval-every", "1"],
        ["evaluate", "--root", ".", "--model", "m.skuniad", "--layer-queries", "none"],
        ["evaluate", "--root", ".", "--model", "m.skuniad", "--setting", "separate"],
        ["evaluate", "--root", ".", "--setting", "both"],
    ],
)
def test_usage_errors_exit_2(args):
    assert runner.invoke(app, args).exit_code == 2


def test_cli_defaults_are_the_detector_defaults():
    defaults = UniADDetector().get_params()
    for command in (fit.fit, evaluate.evaluate_command):
        parameters = inspect.signature(command).parameters
        cli_defaults = {name: parameters[name].default for name in _options.DETECTOR_PARAMS}
        for name, value in _options.detector_params(cli_defaults).items():
            assert value == defaults[name], name


def test_info_reports_versions_device_and_weights():
    result = runner.invoke(app, ["info"])
    assert result.exit_code == 0, result.output
    import timm
    import torch

    assert f"torch {torch.__version__}" in result.output
    assert f"timm {timm.__version__}" in result.output
    assert "device: " in result.output and "CPU bf16" in result.output
    assert "tf_efficientnet_lite0: " in result.output


def _env():
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def test_cli_module_imports_no_heavy_library():
    # skuniad/__init__.py is stubbed so that only the CLI's own imports count
    probe = (
        "import sys, types; package = types.ModuleType('skuniad'); "
        f"package.__path__ = [{str(Path(cli_module.__file__).parent.parent)!r}]; "
        "sys.modules['skuniad'] = package; from skuniad.cli import app; "
        "from typer.testing import CliRunner; "
        "assert CliRunner().invoke(app, ['--help']).exit_code == 0; "
        "print(sorted(m for m in ('torch', 'timm', 'sklearn', 'numpy', 'PIL') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.stdout.strip() == "[]", result.stderr


def test_help_is_fast():
    # fast because nothing heavy is imported: asserted as such, not as a wall-clock limit
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "skuniad", "--help"],
        capture_output=True,
        text=True,
        env=_env(),
    )
    assert result.returncode == 0
    assert "Usage: skuniad" in result.stdout and "evaluate" in result.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()}
    assert not imported & {"torch", "timm", "sklearn"}


@pytest.mark.slow
def test_ctrl_c_during_fit_saves_the_last_finished_epoch(data_root, tmp_path, tiny_args):
    output = tmp_path / "interrupted.skuniad"
    args = [str(data_root), "--dataset", "mvtec", "-o", str(output), "--epochs", "100000"]
    command = [sys.executable, "-m", "skuniad", "fit", *args, *tiny_args[:-1]]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(),
        # a shell's background jobs inherit SIGINT ignored; Ctrl-C must reach this one
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    lines = []
    try:
        for line in process.stdout:
            lines.append(line)
            if line.startswith("epoch 2/"):
                break
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=60)
    finally:
        process.kill()
    output_text = "".join(lines) + rest
    assert process.returncode == 130, output_text
    assert "interrupted" in output_text and "Traceback" not in output_text
    det = UniADDetector.load(output, device="cpu")
    assert 2 <= det.n_epochs_ < 100000
    assert det.max_epochs == 100000


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (3.14, "3.1 s"),
        (59.94, "59.9 s"),
        (59.97, "1 min 0 s"),
        (61.2, "1 min 1 s"),
        (359.6, "6 min 0 s"),
        (3725.4, "62 min 5 s"),
    ],
)
def test_durations_are_printed_without_a_60th_second(seconds, text):
    from skuniad.cli._common import format_seconds

    assert format_seconds(seconds) == text


def _plain(output: str) -> str:
    """A usage error's text without the box rich draws around it, one line."""
    return " ".join(output.replace("│", " ").split())


def _fit_command(data_root, output, tiny_args, *extra):
    args = [str(data_root), "--dataset", "mvtec", "-o", str(output), *extra]
    return [sys.executable, "-m", "skuniad", "fit", *args, *tiny_args[:-1]]


def _weights(path):
    return UniADDetector.load(path, device="cpu").model_.state_dict()


@pytest.mark.slow
def test_a_killed_fit_resumes_to_the_same_weights(data_root, tmp_path, tiny_args):
    extra = ["--epochs", "4", "--checkpoint-every", "1"]
    whole = tmp_path / "whole.skuniad"
    done = subprocess.run(
        _fit_command(data_root, whole, tiny_args, *extra), capture_output=True, env=_env()
    )
    assert done.returncode == 0, done.stdout
    killed = tmp_path / "killed.skuniad"
    command = _fit_command(data_root, killed, tiny_args, *extra)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=_env())
    try:
        for line in process.stdout:
            if line.startswith("epoch 2/4"):
                break
        process.send_signal(signal.SIGKILL)  # no Ctrl-C handler runs: only the checkpoint
        process.communicate(timeout=60)
    finally:
        process.kill()
    checkpoint = tmp_path / "killed.skuniad.ckpt"
    assert checkpoint.exists() and not killed.exists()
    resumed = subprocess.run(command, capture_output=True, text=True, env=_env())
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"Resuming from the checkpoint {checkpoint}" in resumed.stdout
    assert "epoch 1/4" not in resumed.stdout and "epoch 4/4" in resumed.stdout
    expected, got = _weights(whole), _weights(killed)
    for name, value in expected.items():
        assert torch.equal(got[name], value), name
    assert not checkpoint.exists()  # removed once training completed


def test_a_failed_model_write_names_the_kept_checkpoint_and_a_rerun_writes_it(
    data_root, tmp_path, tiny_args, monkeypatch
):
    from skuniad import persistence

    output = tmp_path / "m.skuniad"
    command = ["fit", str(data_root), "--dataset", "mvtec", "-o", str(output), "--epochs", "1"]

    def disk_full(*args, **kwargs):
        raise RuntimeError("Error while serializing: I/O error: File too large (os error 27)")

    with monkeypatch.context() as patch:
        patch.setattr(persistence, "save_file", disk_full)
        failed = runner.invoke(app, [*command, *tiny_args])
    checkpoint = tmp_path / "m.skuniad.ckpt"
    assert failed.exit_code == 1 and "Traceback" not in failed.output
    assert "could not write the model file" in failed.output
    assert f"kept in the checkpoint {checkpoint}" in _plain(failed.output)
    assert checkpoint.exists() and not output.exists()
    rerun = runner.invoke(app, [*command, *tiny_args])
    assert rerun.exit_code == 0 and f"Resuming from the checkpoint {checkpoint}" in rerun.output
    assert UniADDetector.load(output).n_epochs_ == 1 and not checkpoint.exists()


def test_sigterm_writes_the_last_finished_epochs_model_and_exits_143(
    data_root, tmp_path, tiny_args, monkeypatch
):
    from skuniad import training

    train_epoch, epochs = training._train_epoch, []

    def sigterm_in_epoch_two(*args, **kwargs):
        epochs.append(len(epochs) + 1)
        if len(epochs) == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # as a scheduler stopping the job
        return train_epoch(*args, **kwargs)

    monkeypatch.setattr(training, "_train_epoch", sigterm_in_epoch_two)
    handler = signal.getsignal(signal.SIGTERM)
    output = tmp_path / "m.skuniad"
    args = ["fit", str(data_root), "--dataset", "mvtec", "-o", str(output), "--epochs", "3"]
    result = runner.invoke(app, [*args, *tiny_args])
    assert result.exit_code == _errors.EXIT_TERMINATED == 143, result.output
    assert UniADDetector.load(output).n_epochs_ == 1
    assert signal.getsignal(signal.SIGTERM) is handler


def test_sigterm_during_evaluates_training_keeps_the_model_and_exits_143(
    data_root, tmp_path, tiny_args, monkeypatch
):
    from skuniad import training

    train_epoch, epochs = training._train_epoch, []

    def sigterm_in_epoch_two(*args, **kwargs):
        epochs.append(len(epochs) + 1)
        if len(epochs) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return train_epoch(*args, **kwargs)

    monkeypatch.setattr(training, "_train_epoch", sigterm_in_epoch_two)
    handler = signal.getsignal(signal.SIGTERM)
    output = tmp_path / "results"
    args = ["evaluate", "--root", str(data_root), "-o", str(output), "--epochs", "3"]
    result = runner.invoke(app, [*args, *tiny_args])
    assert result.exit_code == _errors.EXIT_TERMINATED, result.output
    assert "Terminated (SIGTERM)" in result.output
    assert UniADDetector.load(output / "model.skuniad").n_epochs_ == 1
    assert signal.getsignal(signal.SIGTERM) is handler


def test_fit_continues_a_saved_model_with_init_model(model_file, data_root, tmp_path):
    output = tmp_path / "more.skuniad"
    args = ["fit", str(data_root), "--dataset", "mvtec", "-o", str(output), "--epochs", "2"]
    result = runner.invoke(app, [*args, "--init-model", str(model_file), "-q"])
    assert result.exit_code == 0, result.output
    before, after = (UniADDetector.load(p, device="cpu") for p in (model_file, output))
    assert after.n_epochs_ == before.n_epochs_ + 2
    assert after.loss_curve_[: before.n_epochs_] == before.loss_curve_
    result = runner.invoke(app, [*args, "--init-model", str(model_file), "--image-size", "96"])
    assert result.exit_code == 2
    assert "--image-size cannot be combined with --init-model" in _plain(result.output)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--lr", "0"], "--lr must be a float in the range (0.0, inf)"),
        (["--neighbor-size", "4"], "--neighbor-size must be odd"),
        (["--num-heads", "3"], "--hidden-dim=32 must be divisible by --num-heads=3"),
        (["--device", "gpu"], "device='gpu' is not a device"),
    ],
)
def test_out_of_range_options_are_usage_errors_before_any_work(
    data_root, tmp_path, option, message, tiny_args
):
    args = ["fit", str(data_root), "--dataset", "mvtec", "-o", str(tmp_path / "m.skuniad")]
    result = runner.invoke(app, [*args, *tiny_args, *option], terminal_width=300)
    assert result.exit_code == 2, result.output
    assert message in _plain(result.output)
    assert "Training on" not in result.output


@pytest.fixture
def no_training_work(monkeypatch):
    """Makes a fit fail loudly once it splits the images or extracts features."""
    import skuniad._fitting
    import skuniad.detector

    def work(*args, **kwargs):
        raise AssertionError("the fit started its work: a split, a process group, features")

    monkeypatch.setattr(skuniad.detector, "partition", work)
    monkeypatch.setattr(skuniad._fitting, "extract_features", work)


@pytest.fixture
def bad_training_files(tmp_path):
    """Files named by TRAINING_MISTAKES: a garbage weights file and checkpoint, a torch file."""
    (tmp_path / "garbage.pth").write_bytes(b"not a weights file")
    (tmp_path / "garbage.ckpt").write_bytes(b"not a checkpoint")
    torch.save({"model": {"weight": torch.zeros(2)}}, tmp_path / "other.ckpt")
    return tmp_path


# what training found only after reading every image; {dir}: bad_training_files
TRAINING_MISTAKES = [
    (["--backbone", "no_such_net"], "unknown or unsupported timm backbone 'no_such_net'"),
    (["--backbone-weights", "{dir}/missing.pth"], "backbone weights file not found: {dir}"),
    (["--backbone-weights", "{dir}/garbage.pth"], "cannot read backbone weights from {dir}"),
    (["--neighbor-size", "7"], "--neighbor-size 7 hides every key of some query on a 4x4 grid"),
]


def _assert_one_line_error(result, message):
    assert result.exit_code == 1, result.output
    (line,) = result.output.splitlines()
    assert line.startswith("Error: ") and message in line, line


@pytest.mark.parametrize(
    ("option", "message"),
    [
        *TRAINING_MISTAKES,
        (["--checkpoint", "{dir}/garbage.ckpt"], "cannot read the training checkpoint"),
        (["--checkpoint", "{dir}/other.ckpt"], "other.ckpt is not a skuniad training checkpoint"),
    ],
)
def test_fit_refuses_what_training_would_find_wrong_before_any_work(
    data_root, bad_training_files, tiny_args, no_training_work, option, message
):
    folder = bad_training_files
    output = folder / "new" / "m.skuniad"
    args = ["fit", str(data_root), "--dataset", "mvtec", "-o", str(output), "--epochs", "1"]
    option = [part.format(dir=folder) for part in option]
    result = runner.invoke(app, [*args, *tiny_args, *option])
    _assert_one_line_error(result, message.format(dir=folder))
    assert not output.parent.exists()
    if "checkpoint" in message:
        assert "pass another --checkpoint" in result.output


@pytest.mark.parametrize(
    ("option", "message"),
    [*TRAINING_MISTAKES, ([], "model.skuniad.ckpt is not a skuniad training checkpoint")],
)
def test_evaluate_refuses_what_training_would_find_wrong_before_any_work(
    data_root, bad_training_files, tiny_args, no_training_work, option, message
):
    folder = bad_training_files
    output = folder / "results"
    if not option:  # a file in the way of the model's checkpoint
        output.mkdir()
        (output / "model.skuniad.ckpt").write_bytes((folder / "other.ckpt").read_bytes())
    args = ["evaluate", "--root", str(data_root), "-o", str(output), "--epochs", "1"]
    option = [part.format(dir=folder) for part in option]
    result = runner.invoke(app, [*args, *tiny_args, *option])
    _assert_one_line_error(result, message.format(dir=folder))
    if option:
        assert not output.exists()
    else:
        assert [p.name for p in output.iterdir()] == ["model.skuniad.ckpt"]
        assert "use another --output" in result.output


def _folder_with_a_broken_image_and_masks(data_root, tmp_path):
    from shutil import copytree

    folder = copytree(data_root / "parts", tmp_path / "parts")
    broken = sorted((folder / "test").rglob("*.png"))[3]  # the 4th image predict reads
    broken.write_bytes(b"not a png")
    assert list((folder / "ground_truth").rglob("*_mask.png"))
    return folder, broken


def test_predict_skips_unreadable_images_and_ground_truth_masks(model_file, data_root, tmp_path):
    folder, broken = _folder_with_a_broken_image_and_masks(data_root, tmp_path)
    out = tmp_path / "out"
    args = ["predict", str(model_file), str(folder), "-o", str(out), "--no-overlays"]
    result = runner.invoke(app, [*args, "--chunk-size", "2", "--batch-size", "1", "-q"])
    assert result.exit_code == 0, result.output
    with open(out / "scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    paths = [Path(r["path"]) for r in rows]
    assert not any("ground_truth" in p.parts for p in paths)
    assert len(rows) == len(list(folder.rglob("*.png"))) - len(
        list((folder / "ground_truth").rglob("*.png"))
    )
    (bad,) = [r for r in rows if r["error"]]
    index = paths.index(broken)
    assert Path(bad["path"]) == broken and "is not a readable image file" in bad["error"]
    assert bad["anomaly_score"] == bad["label"] == ""
    assert all(r["anomaly_score"] and r["label"] in ("1", "-1") for r in rows if not r["error"])
    assert "Skipped 1 unreadable images" in result.output
    assert f"image {index}: {broken} is not a readable image file" in result.output


def test_predict_skips_a_decompression_bomb_and_scores_the_rest(
    model_file, data_root, tmp_path, bomb_png
):
    from shutil import copy

    folder = tmp_path / "mixed"
    folder.mkdir()
    for image in sorted((data_root / "parts" / "test" / "good").glob("*.png"))[:2]:
        copy(image, folder)
    copy(bomb_png, folder)
    out = tmp_path / "out"
    args = ["predict", str(model_file), str(folder), "-o", str(out), "--no-overlays", "-q"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    with open(out / "scores.csv", newline="") as f:
        rows = {Path(r["path"]).name: r for r in csv.DictReader(f)}
    assert len(rows) == 3 and rows["000.png"]["label"] in ("1", "-1")
    assert "bomb.png is refused unread" in rows["bomb.png"]["error"]
    assert "Skipped 1 unreadable images" in result.output


def test_predict_into_a_folder_another_run_writes_is_refused(model_file, data_root, tmp_path):
    from skuniad._outputs import folder_lock

    image = data_root / "parts" / "test" / "good" / "000.png"
    out = tmp_path / "out"
    out.mkdir()
    args = ["predict", str(model_file), str(image), "-o", str(out), "--no-overlays", "-q"]
    with folder_lock(out):  # as a first run still scoring into out holds it
        result = runner.invoke(app, args)
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert f"Error: another skuniad run is writing into {out}" in result.output
    assert not (out / "scores.csv").exists() and not (out / "scores.csv.partial").exists()
    assert runner.invoke(app, args).exit_code == 0  # free again


def test_evaluate_into_a_folder_another_run_writes_is_refused(
    model_file, data_root, tiny_args, tmp_path
):
    from skuniad._outputs import folder_lock

    out = tmp_path / "out"
    out.mkdir()
    scoring = ["evaluate", "--root", str(data_root), "--model", str(model_file), "-o", str(out)]
    training = ["evaluate", "--root", str(data_root), *tiny_args, "--epochs", "1", "-o", str(out)]
    with folder_lock(out):  # as a first run still writing into out holds it
        for args in (scoring, training):
            result = runner.invoke(app, args)
            assert result.exit_code == 1, result.output
            assert f"Error: another skuniad run is writing into {out}" in result.output
    assert [p.name for p in out.iterdir()] == [".skuniad.lock"]  # nothing else written
    assert runner.invoke(app, [*scoring, "-q"]).exit_code == 0  # free again


def test_predict_warns_when_the_model_gives_no_finite_score(model_file, data_root, tmp_path):
    import torch

    det = UniADDetector.load(model_file)
    with torch.no_grad():  # finite weights, so the file loads, whose products overflow
        det.model_.input_proj.weight.mul_(1e30)
    damaged = tmp_path / "damaged.skuniad"
    det.save(damaged)
    image = data_root / "parts" / "test" / "good" / "000.png"
    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", str(damaged), str(image), "-o", str(out), "-q"])
    assert result.exit_code == 0, result.output
    assert f"1 images got no finite anomaly score (e.g. {image}): labelled -1" in result.output
    with open(out / "scores.csv", newline="") as f:
        (row,) = csv.DictReader(f)
    assert row["anomaly_score"] == "nan" and row["label"] == "-1"


def test_predict_exits_1_when_no_image_could_be_read(model_file, tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    for name in ("a.png", "b.png"):
        (folder / name).write_bytes(b"not a png")
    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", str(model_file), str(folder), "-o", str(out), "-q"])
    assert result.exit_code == 1
    assert "Error: none of the 2 images could be read" in result.output
    with open(out / "scores.csv", newline="") as f:
        assert [bool(r["error"]) for r in csv.DictReader(f)] == [True, True]


def test_predict_neither_writes_through_links_nor_lets_cells_run_as_formulas(
    model_file, data_root, tmp_path
):
    from shutil import copy

    folder = tmp_path / '=HYPERLINK("http-x","click")'
    folder.mkdir()
    copy(data_root / "parts" / "test" / "good" / "000.png", folder)
    out = tmp_path / "out"
    (out / "overlays").mkdir(parents=True)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (out / "scores.csv").symlink_to(victim)
    (out / "overlays" / "000.png").symlink_to(victim)
    result = runner.invoke(app, ["predict", str(model_file), str(folder), "-o", str(out), "-q"])
    assert result.exit_code == 0, result.output
    assert victim.read_text() == "keep me"
    assert not (out / "scores.csv").is_symlink() and not (out / "overlays" / "000.png").is_symlink()
    with open(out / "scores.csv", newline="") as f:
        (row,) = csv.DictReader(f)
    assert row["category"] == '\'=HYPERLINK("http-x","click")'
    assert row["path"] == str(folder / "000.png")  # absolute: starts with /, left as it is
    assert float(row["anomaly_score"]) and row["label"] in ("1", "-1")


def test_predict_strict_stops_at_the_first_unreadable_image(model_file, data_root, tmp_path):
    folder, broken = _folder_with_a_broken_image_and_masks(data_root, tmp_path)
    out = tmp_path / "out"
    args = ["predict", str(model_file), str(folder), "-o", str(out), "--no-overlays", "--strict"]
    result = runner.invoke(app, [*args, "--chunk-size", "2", "--batch-size", "1", "-q"])
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert not (out / "scores.csv").exists()  # the rows are not all there: the name says so
    with open(out / "scores.csv.partial", newline="") as f:
        rows = list(csv.DictReader(f))
    index = len(rows)  # every row before the broken image was written as it was scored
    assert index == 3 and f"Error: image {index}: {broken} is not a readable image" in result.output


def test_only_the_librarys_own_type_errors_are_one_line(
    model_file, data_root, tmp_path, monkeypatch
):
    from skuniad.io import check_images

    with pytest.raises(TypeError) as own:
        check_images(5)
    assert _errors.is_domain_error(own.value)
    monkeypatch.setattr(predict, "_display_image", lambda path: None + 1)  # a bug
    image = data_root / "parts" / "test" / "good" / "000.png"
    result = runner.invoke(app, ["predict", str(model_file), str(image), "-o", str(tmp_path)])
    assert isinstance(result.exception, TypeError) and not result.output.startswith("Error:")


def test_out_of_memory_advice_names_the_option():
    from skuniad.device import DeviceOutOfMemoryError

    exc = DeviceOutOfMemoryError(
        "out of device memory while scoring (32 images per batch): pass a smaller batch_size "
        "(now 8; try batch_size=4)."
    )
    assert "pass a smaller --batch-size (now 8; try --batch-size 4)" in (
        _errors.one_line_message(exc)
    )


def test_usage_lines_name_arguments_not_python_types():
    for command in app.registered_commands:
        name = command.name or command.callback.__name__.replace("_", "-")
        result = runner.invoke(app, [name, "--help"], terminal_width=200)
        assert result.exit_code == 0, name
        for python_type in ("<list[Path]>", "<path>", "<list[str]>"):
            assert python_type not in result.output, (name, python_type)
        assert "{model}" not in result.output
    assert "MODEL" in runner.invoke(app, ["predict", "--help"]).output


def test_evaluate_continues_a_saved_model_with_init_model(model_file, data_root, tmp_path):
    args = ["evaluate", "--root", str(data_root), "-o", str(tmp_path), "--epochs", "1", "-q"]
    result = runner.invoke(app, [*args, "--init-model", str(model_file), "--seed", "0"])
    assert result.exit_code == 0, result.output
    before = UniADDetector.load(model_file, device="cpu")
    after = UniADDetector.load(tmp_path / "model.skuniad", device="cpu")
    assert after.n_epochs_ == before.n_epochs_ + 1
    assert after.loss_curve_[: before.n_epochs_] == before.loss_curve_
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["run"]["epochs"] == after.n_epochs_
    assert results["run"]["backbone"] == "tf_efficientnet_lite0"
    refused = runner.invoke(app, [*args, "--init-model", str(model_file), "--hidden-dim", "8"])
    assert refused.exit_code == 2


# ---------------------------------------------------------- CUDA paths (faked)
def test_info_reports_bf16_from_compute_capability(gpus, monkeypatch):
    from typer.testing import CliRunner

    from skuniad.cli import app

    gpus(count=2, capabilities=[(7, 0), (9, 0)])
    names = ["Tesla V100-SXM2-16GB", "NVIDIA H100"]
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: names[i])
    result = CliRunner().invoke(app, ["info"])
    assert result.exit_code == 0, result.output
    assert "cuda:0 Tesla V100-SXM2-16GB (compute capability 7.0, bf16: no)" in result.output
    assert "cuda:1 NVIDIA H100 (compute capability 9.0, bf16: yes)" in result.output


def test_a_diverged_fit_and_a_nan_threshold_are_one_line_errors(
    data_root, model_file, tiny_args, tmp_path
):
    out = tmp_path / "diverged.skuniad"
    args = ["fit", str(data_root), "--dataset", "mvtec", "-o", str(out), *tiny_args]
    result = runner.invoke(app, [*args, "--epochs", "2", "--lr", "1e30"])
    assert result.exit_code == 1 and "Error: training diverged in epoch" in result.output
    assert not out.exists()
    image = data_root / "parts" / "test" / "good" / "000.png"
    args = ["predict", str(model_file), str(image), "-o", str(tmp_path / "p")]
    result = runner.invoke(app, [*args, "--threshold", "nan"])
    assert result.exit_code == 1 and "threshold must be a finite number" in result.output


def test_evaluate_under_torchrun_is_refused_before_any_work(data_root, monkeypatch, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it for each of 2 processes
    output = tmp_path / "results"
    args = ["evaluate", "--dataset", "mvtec", "--root", str(data_root), "-o", str(output)]
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and "not under torchrun" in result.output
    assert not output.exists()
