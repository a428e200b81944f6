"""Write the golden outputs that pin the library's behaviour across refactors.

Run once, at the commit whose behaviour is to be kept (``python
tests/golden/make_golden.py``); ``tests/test_golden.py`` then checks that the
code of every later commit reproduces ``golden.npz`` and still loads
``legacy.skuniad``, the model file this commit wrote. Everything is made in
code: a tiny fp32 fit (random-init lite0, two stages, 12 x 12 grid) on seeded
random images with two groups and a held-out calibration split.
"""

from __future__ import annotations

import csv
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent

PARAMS = dict(
    backbone="tf_efficientnet_lite0",
    backbone_weights=None,
    out_indices=(0, 1),
    image_size=48,
    hidden_dim=16,
    num_heads=2,
    num_encoder_layers=1,
    num_decoder_layers=1,
    dim_feedforward=32,
    neighbor_size=3,
    max_epochs=2,
    batch_size=4,
    validation_fraction=0.5,
    precision="fp32",
    random_state=0,
)


def golden_inputs() -> dict:
    """The images and groups every golden output is computed from."""
    rng = np.random.default_rng(2026)
    return {
        "X_train": rng.integers(0, 256, size=(20, 40, 48, 3), dtype=np.uint8),
        "groups_train": np.array(["a"] * 10 + ["b"] * 10, dtype=object),
        "X_test": rng.integers(0, 256, size=(5, 40, 48, 3), dtype=np.uint8),
        "groups_test": np.array(["a", "b", "a", "c", "b"], dtype=object),
        "X_sizes": [
            rng.integers(0, 256, size=shape, dtype=np.uint8)
            for shape in [(30, 50, 3), (64, 40, 3), (48, 48, 3)]
        ],
        "X_calibrate": rng.integers(0, 256, size=(10, 40, 48, 3), dtype=np.uint8),
    }


def golden_outputs(det, inputs: dict, workdir: Path) -> dict[str, np.ndarray]:
    """Everything the redesign must keep, computed with the public API and the CLI."""
    X, groups, sizes = inputs["X_test"], inputs["groups_test"], inputs["X_sizes"]
    out = {
        "loss_curve": np.array(det.loss_curve_),
        "offset": np.array(det.offset_),
        "pixel_threshold": np.array(det.pixel_threshold_),
        "group_image_thresholds": np.array([det.group_image_thresholds_[g] for g in "ab"]),
        "group_pixel_thresholds": np.array([det.group_pixel_thresholds_[g] for g in "ab"]),
        "score_samples": det.score_samples(X),
        "decision_function": det.decision_function(X, groups=groups),
        "predict": det.predict(X, groups=groups),
        "anomaly_maps_input": det.anomaly_maps(X),
        "anomaly_maps_model": det.anomaly_maps(X, size="model"),
        "predict_masks": det.predict_masks(X, groups=groups),
        "predict_masks_0.5": det.predict_masks(X, threshold=0.5),
    }
    for i, m in enumerate(det.anomaly_maps(sizes)):
        out[f"anomaly_maps_sizes_{i}"] = m
    everything = det.predict_all(sizes)
    for key in ("score_samples", "decision_function", "predict"):
        out[f"predict_all_{key}"] = everything[key]
    for i, mask in enumerate(everything.predict_masks):
        out[f"predict_all_masks_{i}"] = mask
    for name, value in det.model_.state_dict().items():
        out[f"model.{name}"] = value.numpy()
    out.update(_cli_predict(det, inputs, workdir))
    det.calibrate(inputs["X_calibrate"], groups=["a", "b"] * 5)
    out["calibrated_offset"] = np.array(det.offset_)
    out["calibrated_pixel_threshold"] = np.array(det.pixel_threshold_)
    out["calibrated_group_image_thresholds"] = np.array(
        [det.group_image_thresholds_[g] for g in "ab"]
    )
    return out


def _cli_predict(det, inputs: dict, workdir: Path) -> dict[str, np.ndarray]:
    """scores.csv and the masks of ``skuniad predict --masks`` on images in category folders."""
    from PIL import Image
    from typer.testing import CliRunner

    from skuniad.cli import app

    model = workdir / "model.skuniad"
    det.save(model)
    for i, (image, group) in enumerate(
        zip(
            list(inputs["X_test"]) + inputs["X_sizes"],
            ["a", "b", "a", "c", "b", "a", "b", "c"],
            strict=True,
        )
    ):
        folder = workdir / "images" / group
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i}.png")
    result = CliRunner().invoke(
        app,
        [
            "predict",
            str(model),
            str(workdir / "images"),
            "-o",
            str(workdir / "out"),
            "--masks",
            "--no-overlays",
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    with open(workdir / "out" / "scores.csv", newline="") as f:
        rows = sorted(list(csv.DictReader(f)), key=lambda row: row["path"])
    out = {
        "cli_scores": np.array([float(row["anomaly_score"]) for row in rows]),
        "cli_thresholds": np.array([float(row["threshold"]) for row in rows]),
        "cli_labels": np.array([int(row["label"]) for row in rows]),
        "cli_categories": np.array([row["category"] for row in rows]),
    }
    for i, row in enumerate(rows):
        out[f"cli_mask_{i}"] = np.asarray(Image.open(row["mask"])) > 0
    return out


def platform() -> str:
    """What bit-exact results depend on: the torch version and the CPU kernels it picks."""
    return f"torch {torch.__version__}, cpu {torch.backends.cpu.get_cpu_capability()}"


def fit_golden(inputs: dict):
    from skuniad import UniADDetector

    return UniADDetector(**PARAMS).fit(inputs["X_train"], groups=inputs["groups_train"])


def main() -> None:
    torch.set_num_threads(2)
    inputs = golden_inputs()
    det = fit_golden(inputs)
    det.save(HERE / "legacy.skuniad")
    with tempfile.TemporaryDirectory() as workdir:
        outputs = golden_outputs(det, inputs, Path(workdir))
    outputs["platform"] = np.array(platform())
    np.savez_compressed(HERE / "golden.npz", **outputs)
    print(f"wrote {len(outputs)} arrays to {HERE / 'golden.npz'}", file=sys.stderr)


if __name__ == "__main__":
    main()
