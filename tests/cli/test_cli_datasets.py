"""The command line on every data set format: export-json, evaluate --dataset, info's weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from skuniad import UniADDetector
from skuniad.cli import app
from skuniad.datasets import load_mvtec, load_uniad_json

runner = CliRunner()


def test_export_json_writes_lists_that_read_back_as_the_same_data_set(data_root, tmp_path):
    result = runner.invoke(
        app, ["export-json", "--dataset", "mvtec", "--root", str(data_root), "-o", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    assert "train: 12 images (0 anomalous) of 2 categories" in result.output
    for split in ("train", "test"):
        expected = load_mvtec(data_root, split)
        got = load_uniad_json(data_root, tmp_path / f"{split}.json", split)
        assert got.paths == expected.paths and got.mask_paths == expected.mask_paths
    first = json.loads((tmp_path / "train.json").read_text().splitlines()[0])
    assert first["clsname"] == "grain" and first["filename"].startswith("grain/train/good/")


def test_export_json_of_one_category_from_a_list(data_root, tmp_path):
    runner.invoke(app, ["export-json", "--root", str(data_root), "-o", str(tmp_path / "all")])
    result = runner.invoke(
        app,
        ["export-json", "--dataset", "uniad-json", "--root", str(data_root), "-c", "parts",
         "--test-meta", str(tmp_path / "all" / "test.json"), "-o", str(tmp_path / "parts")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "parts").iterdir()) == ["test.json"]
    parts = load_uniad_json(data_root, tmp_path / "parts" / "test.json", "test")
    assert parts.category_names == ["parts"] and len(parts) == 6


@pytest.mark.parametrize(
    "dataset, expected",
    [
        ("mvtec", ["MVTec Software GmbH", "ROOT/CATEGORY/ground_truth/DEFECT/STEM_mask.png"]),
        ("visa", ["Amazon", "ROOT/split_csv/1cls.csv", "object,split,label,image,mask"]),
        ("uniad-json", ["github.com/zhiyuanyou/UniAD", '"maskname"', "--train-meta"]),
    ],
)
@pytest.mark.parametrize("command", ["evaluate", "export-json"])
def test_without_root_the_data_set_is_explained(command, dataset, expected, tmp_path):
    args = [command, "--dataset", dataset]
    result = runner.invoke(app, args + (["-o", str(tmp_path)] if command == "export-json" else []))
    assert result.exit_code == 2
    assert f"Missing --root for --dataset {dataset}" in result.output
    for text in [*expected, "--backbone tf_efficientnet_lite0"]:
        assert text in result.output


@pytest.mark.parametrize(
    "args",
    [
        ["export-json", "--dataset", "mvtec", "--root", ".", "--train-meta", "t.json", "-o", "x"],
        ["export-json", "--dataset", "uniad-json", "--root", ".", "-o", "x"],
    ],
)
def test_meta_options_belong_to_uniad_json(args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert not (tmp_path / "x").exists()


def test_info_lists_cached_timm_weights_and_the_hub(monkeypatch, tmp_path):
    import huggingface_hub.constants

    from skuniad import weights

    snapshot = tmp_path / "models--timm--tf_efficientnet_b4.aa_in1k" / "snapshots" / "0"
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").write_bytes(b"")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(weights, "hub_reachable", lambda timeout=1.0: False)
    result = runner.invoke(app, ["info"])
    assert result.exit_code == 0, result.output
    assert f"tf_efficientnet_b4.aa_in1k: {snapshot / 'model.safetensors'}" in result.output
    assert "not reachable; only the weights listed above can be used" in result.output


# ------------------------------------------------------------------------- evaluate
@pytest.fixture(scope="module")
def one_epoch_args(tiny_args) -> list[str]:
    """The tiny detector's options and one epoch."""
    return [*tiny_args, "--epochs", "1"]


@pytest.fixture(scope="module")
def lists(data_root, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("lists")
    result = runner.invoke(app, ["export-json", "--root", str(data_root), "-o", str(folder)])
    assert result.exit_code == 0, result.output
    return folder


def _metrics(folder: Path) -> dict:
    results = json.loads((folder / "results.json").read_text())
    return {"categories": results["categories"], "mean": results["mean"]}


@pytest.mark.slow
def test_evaluate_through_json_lists_gives_the_mvtec_numbers(
    data_root, lists, tmp_path, one_epoch_args
):
    mvtec = ["evaluate", "--dataset", "mvtec", "--root", str(data_root)]
    result = runner.invoke(app, [*mvtec, "-o", str(tmp_path / "mvtec"), *one_epoch_args])
    assert result.exit_code == 0, result.output
    as_json = [
        "evaluate", "--dataset", "uniad-json", "--root", str(data_root),
        "--train-meta", str(lists / "train.json"), "--test-meta", str(lists / "test.json"),
    ]  # fmt: skip
    result = runner.invoke(app, [*as_json, "-o", str(tmp_path / "json"), *one_epoch_args])
    assert result.exit_code == 0, result.output
    assert _metrics(tmp_path / "json") == _metrics(tmp_path / "mvtec")  # same bits
    run = json.loads((tmp_path / "json" / "results.json").read_text())["run"]
    assert "(uniad-json), train list" in run["dataset"]


def test_evaluate_a_visa_set(tmp_path, one_epoch_args):
    from test_visa import make_visa

    root = make_visa(tmp_path / "visa", n_train=4)
    args = ["evaluate", "--dataset", "visa", "--root", str(root), "-o", str(tmp_path / "out")]
    result = runner.invoke(app, args + one_epoch_args)
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert list(results["categories"]) == ["candle", "pcb1"]
    assert results["n_images"] == 8 and results["image_level_only"] == []


def test_a_category_without_ground_truth_is_reported_at_image_level(
    data_root, model_file, tmp_path
):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(data_root, root)
    shutil.rmtree(root / "parts" / "ground_truth")
    args = ["evaluate", "--root", str(root), "--model", str(model_file), "-o", str(tmp_path)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["categories"]["parts"]["pixel_auroc"] is None
    assert results["categories"]["grain"]["pixel_auroc"] is not None
    assert results["image_level_only"] == ["parts"]
    parts_row = next(
        line for line in result.output.splitlines() if line.strip().startswith("parts")
    )
    assert "n/a" in parts_row
    assert "Image level only (no masks, pixel metrics n/a): parts" in (
        (tmp_path / "results.md").read_text()
    )


def test_some_masks_missing_fails_before_training_unless_ignored(
    data_root, tmp_path, one_epoch_args
):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(data_root, root)
    mask = sorted((root / "grain" / "ground_truth").rglob("*.png"))[0]
    mask.unlink()
    image = root / "grain" / "test" / mask.parent.name / mask.name.replace("_mask", "")
    out = tmp_path / "out"
    args = ["evaluate", "--root", str(root), "-o", str(out), *one_epoch_args]
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert "have no ground-truth mask" in result.output and str(image) in result.output
    assert "--ignore-pixel-metrics" in result.output and not out.exists()
    result = runner.invoke(app, [*args, "--ignore-pixel-metrics"])
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert results["image_level_only"] == ["grain", "parts"]
    assert results["mean"]["aupro"] is None and results["mean"]["image_auroc"] is not None


def _bad_list(lists: Path, tmp_path: Path, line: int, text: str) -> Path:
    lines = (lists / "test.json").read_text().splitlines()
    lines[line - 1] = text
    path = tmp_path / "bad.json"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"filename": "grain/test/good/000.png", "label": 0,', "bad.json line 2: not valid JSON"),
        ('{"filename": "x.png", "label": 0, "clsname": "grain", "size": 3}', "unknown keys"),
        ('{"filename": "grain/nothing.png", "label": 0, "clsname": "grain"}', "nothing.png"),
    ],
)
def test_bad_lists_fail_in_one_line_before_training(
    data_root, lists, tmp_path, text, message, one_epoch_args
):
    bad = _bad_list(lists, tmp_path, 2, text)
    out = tmp_path / "out"
    args = [
        "evaluate", "--dataset", "uniad-json", "--root", str(data_root),
        "--train-meta", str(lists / "train.json"), "--test-meta", str(bad), "-o", str(out),
    ]  # fmt: skip
    result = runner.invoke(app, args + one_epoch_args)
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1
    assert message in result.output and "Training" not in result.output
    assert not out.exists()


def test_unknown_category_and_missing_lists(data_root, lists, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["evaluate", "--root", str(data_root), "-c", "wood", "-o", str(out)]
    )
    assert result.exit_code == 1 and "['wood'] not found" in result.output
    args = ["evaluate", "--dataset", "uniad-json", "--root", str(data_root), "-o", str(out)]
    result = runner.invoke(app, [*args, "--test-meta", str(lists / "test.json")])
    assert result.exit_code == 2 and "--train-meta" in result.output
    assert not out.exists()


def test_default_backbone_offline_fails_at_once(data_root, tmp_path, monkeypatch):
    import time

    import huggingface_hub.constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    out = tmp_path / "out"
    start = time.perf_counter()
    result = runner.invoke(app, ["evaluate", "--root", str(data_root), "-o", str(out)])
    assert time.perf_counter() - start < 5.0
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert "no ImageNet weights found for backbone 'tf_efficientnet_b4.aa_in1k'" in result.output
    assert "tf_efficientnet_lite0" in result.output and not out.exists()


def test_fit_reads_every_format(data_root, lists, tmp_path, one_epoch_args):
    from test_visa import make_visa

    tiny = [a for a in one_epoch_args if a != "--quiet"]
    args = ["fit", str(data_root), "--dataset", "uniad-json", "-o", str(tmp_path / "a.skuniad")]
    result = runner.invoke(app, [*args, "--train-meta", str(lists / "train.json"), *tiny])
    assert result.exit_code == 0, result.output
    assert "Training on 12 images." in result.output
    visa = make_visa(tmp_path / "visa", n_train=3)
    args = ["fit", str(visa), "--dataset", "visa", "-c", "pcb1", "-o", str(tmp_path / "b.skuniad")]
    result = runner.invoke(app, args + tiny)
    assert result.exit_code == 0, result.output
    assert "Training on 3 images." in result.output
    for model in ("a.skuniad", "b.skuniad"):
        assert UniADDetector.load(tmp_path / model, device="cpu").n_epochs_ == 1
    result = runner.invoke(app, ["fit", str(data_root), "--dataset", "uniad-json", "-o", "m"])
    assert result.exit_code == 2 and "--train-meta" in result.output
