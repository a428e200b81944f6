"""The command line on every data set format: export-json, evaluate --dataset, info's weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from skuniad import cli as cli_module
from skuniad.cli import app
from skuniad.datasets import load_mvtec, load_uniad_json, write_synthetic

runner = CliRunner()


@pytest.fixture(autouse=True, scope="module")
def _keep_process_settings():
    """In-process runs leave denormal and malloc settings alone (other tests compare bits)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cli_module, "_tune_runtime", lambda threads=None: None)
        yield


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mvtec")
    return write_synthetic(root, categories=("grain", "parts"), n_train=6, n_test=6, image_size=32)


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
