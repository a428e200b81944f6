"""Learning curves: test metrics recorded during a fit, merged, written and read back."""

from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from skuniad._outputs import open_output
from skuniad.datasets import AnomalyDataset
from skuniad.evaluation._evaluate import image_score_aurocs, load_masks, mean_defined
from skuniad.evaluation._report import IMAGE_SCORE_METRICS


class CurveRecorder:
    """``fit``'s ``on_epoch_end`` that scores a test split every few epochs.

    The frozen backbone's test features are computed once, at the first
    point; each point then runs only the reconstruction network, and
    records per category the image AUROC of every image score and the
    pixel AUROC at model resolution (the threshold-free metrics that are
    cheap enough to repeat). Nothing is selected on the test set: the
    points only describe the training.

    Parameters
    ----------
    dataset : AnomalyDataset
        Test split; categories without masks get no pixel AUROC (None).
    every : int
        Score after epochs ``every``, ``2 * every``... and after ``last``.
    last : int
        The fit's number of epochs.
    path : str or path-like, optional
        Rewrite this JSON file with the curve so far after every point, so
        that a long run can be followed (and is not lost if stopped). It has
        the layout of a finished experiment's ``curve.json``, the one curve
        under ``"runs"`` (see :func:`read_curves`). A fit resumed from its
        checkpoint starts past epoch 1: the file's points of the epochs
        before are kept, and ``fit_seconds`` goes on from the last of them.

    Attributes
    ----------
    curve : dict
        ``epoch``, ``loss`` (mean training loss of those epochs),
        ``fit_seconds`` (training time up to each point, the scoring
        excluded), ``loss_curve`` (every epoch's loss), ``categories``
        (per category, each metric's values) and ``mean`` (over categories).
    """

    def __init__(
        self,
        dataset: AnomalyDataset,
        every: int,
        last: int,
        path: str | os.PathLike[str] | None = None,
    ) -> None:
        if every < 1:
            raise ValueError(f"every must be at least 1, got {every}")
        self.dataset, self.every, self.last = dataset, every, last
        self.path = None if path is None else Path(path)
        self.curve: dict[str, Any] = {
            "epoch": [],
            "loss": [],
            "fit_seconds": [],
            "loss_curve": [],
            "categories": {c: {} for c in dataset.category_names},
            "mean": {},
        }
        self._features: dict[str, Any] = {}
        self._masks: dict[str, np.ndarray] = {}
        self._start = time.perf_counter()
        self._scoring_seconds = 0.0

    def __call__(self, det: Any, epoch: int, loss: float) -> None:
        entered = time.perf_counter()
        if not self.curve["loss_curve"] and epoch > 1:
            self._keep_earlier_points(epoch)
        self.curve["loss_curve"].append(loss)
        if epoch % self.every and epoch != self.last:
            return
        self.curve["epoch"].append(epoch)
        self.curve["loss"].append(loss)
        self.curve["fit_seconds"].append(entered - self._start - self._scoring_seconds)
        rows = {c: self._score(det, c) for c in self.dataset.category_names}
        for category, row in rows.items():
            for key, value in row.items():
                self.curve["categories"][category].setdefault(key, []).append(value)
        for key in rows[self.dataset.category_names[0]]:
            mean = mean_defined([row[key] for row in rows.values()])
            self.curve["mean"].setdefault(key, []).append(mean)
        if self.path is not None:
            with open_output(self.path) as f:
                f.write(json.dumps({"runs": [self.curve]}, indent=2) + "\n")
        self._scoring_seconds += time.perf_counter() - entered

    def _keep_earlier_points(self, epoch: int) -> None:
        """The points before ``epoch`` of the curve this file holds from the fit now resumed."""
        if self.path is None or not self.path.is_file():
            return

        def before(values: list) -> list:
            return [values[i] for i in kept]

        try:
            (earlier,) = json.loads(self.path.read_text())["runs"]
            kept = [i for i, e in enumerate(earlier["epoch"]) if e < epoch]
            if set(earlier["categories"]) != set(self.curve["categories"]):
                raise ValueError("its categories differ")
            points = {key: before(earlier[key]) for key in ("epoch", "loss", "fit_seconds")}
            points["categories"] = {
                category: {key: before(values) for key, values in rows.items()}
                for category, rows in earlier["categories"].items()
            }
            points["mean"] = {key: before(values) for key, values in earlier["mean"].items()}
            points["loss_curve"] = [float(v) for v in earlier["loss_curve"][: epoch - 1]]
        except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
            warnings.warn(
                f"{self.path}: the curve before epoch {epoch} could not be kept ({exc}); "
                "the file starts again at this epoch",
                UserWarning,
                stacklevel=3,
            )
            return
        self.curve.update(points)
        if points["fit_seconds"]:
            self._start -= points["fit_seconds"][-1]

    def _score(self, det: Any, category: str) -> dict[str, float]:
        from skuniad._inference import extract_features, reconstruction_maps
        from skuniad.device import inference_batch_size, resolve_precision

        subset = self.dataset.subset(category)
        if subset.labels.min() == subset.labels.max():  # one class: undefined, as in the report
            return {
                key: float("nan") for key in ("image_auroc", "pixel_auroc", *IMAGE_SCORE_METRICS)
            }
        network = det.network_spec_  # what the model being trained scores with
        amp_dtype = resolve_precision(det.precision, det.device_)
        size = (network.image_size, network.image_size)
        batch = inference_batch_size(det.batch_size)
        if category not in self._features:
            self._features[category] = extract_features(
                det.backbone_,
                subset.paths,
                image_size=network.image_size,
                batch_size=batch,
                device=det.device_,
                amp_dtype=amp_dtype,
                resize=network.resize,
            )
            self._masks[category] = load_masks(subset, size)
        _, token_maps = reconstruction_maps(
            det.model_,
            self._features[category],
            image_size=network.image_size,
            batch_size=batch,
            device=det.device_,
            amp_dtype=amp_dtype,
        )
        return token_map_aurocs(subset.labels, token_maps, self._masks[category], det.image_score)


def token_map_aurocs(
    labels: np.ndarray, token_maps: Any, masks: np.ndarray, image_score: str
) -> dict[str, float | None]:
    """The threshold-free metrics of ``(n, h, w)`` token-grid maps, as a learning-curve point.

    The maps are brought to the masks' (model) resolution as ``anomaly_map``
    does; the row holds every image score's AUROC, ``image_auroc``
    (``image_score``'s) and ``pixel_auroc`` (None when no mask marks a defect).
    """
    import torch

    from skuniad.metrics import pixel_auroc
    from skuniad.nn.transformer import upsample_map

    maps = upsample_map(torch.as_tensor(np.asarray(token_maps)), masks.shape[1:]).numpy()
    row: dict[str, float | None] = dict(image_score_aurocs(labels, maps))
    row["image_auroc"] = row[f"image_auroc_{image_score}"]
    row["pixel_auroc"] = pixel_auroc(masks, maps) if masks.any() else None
    return row


def merge_curves(curves: list[dict[str, Any]]) -> dict[str, Any]:
    """One curve from the separate setting's per-category curves (same epochs)."""
    if len(curves) == 1:
        return curves[0]
    merged: dict[str, Any] = {"epoch": curves[0]["epoch"], "categories": {}, "mean": {}}
    for key in ("loss", "fit_seconds", "loss_curve"):
        # the models train one after another: their losses are averaged, their times add up
        values = np.array([c[key] for c in curves], dtype=np.float64)
        merged[key] = (values.sum(0) if key == "fit_seconds" else values.mean(0)).tolist()
    for curve in curves:
        merged["categories"].update(curve["categories"])
    rows = list(merged["categories"].values())
    for key in rows[0]:
        merged["mean"][key] = [
            mean_defined([row[key][i] for row in rows]) for i in range(len(merged["epoch"]))
        ]
    return merged


def write_curves(
    results: dict[str, Any], output_dir: str | os.PathLike[str], *, per_category: bool = False
) -> tuple[Path, Path]:
    """Write ``curve.json`` (every seed's learning curve) and ``curve.png``.

    Returns
    -------
    (json_path, png_path)
    """
    from skuniad.visualize import plot_learning_curves

    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    curves = [{"seed": run["seed"], **run["curve"]} for run in results["runs"]]
    document = {
        "setting": results["setting"],
        "image_score": results["image_score"],
        "runs": curves,
    }
    json_path = folder / "curve.json"
    with open_output(json_path) as f:
        f.write(json.dumps(document, indent=2) + "\n")
    png_path = plot_learning_curves(curves, folder / "curve.png", per_category=per_category)
    return json_path, png_path


def read_curves(folder: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The learning curves in ``folder/curve.json``, one per seed.

    A finished experiment's file (:func:`write_curves`) holds every seed's
    curve under ``"runs"``, and so does a fit's still running or stopped
    (:class:`CurveRecorder`, the one curve so far). Files a recorder wrote
    before it used that layout hold the bare curve; they are read too.
    """
    document = json.loads((Path(folder) / "curve.json").read_text())
    if "runs" not in document:  # a bare curve, as CurveRecorder once wrote it
        return [document]
    return document["runs"]
