"""The paper's experiments: a setting, several seeds, learning curves, one report."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from skuniad._choices import SETTINGS
from skuniad.datasets import AnomalyDataset
from skuniad.evaluation._curves import CurveRecorder, merge_curves, write_curves
from skuniad.evaluation._evaluate import (
    check_test_set,
    evaluate_detector,
    mean_defined,
    mean_over_categories,
)
from skuniad.evaluation._report import ALL_METRICS, write_results


def run_experiment(
    train: AnomalyDataset,
    test: AnomalyDataset,
    params: dict[str, Any] | None = None,
    *,
    setting: str = "unified",
    seeds: Sequence[int | None] = (None,),
    eval_every: int | None = None,
    output_dir: str | os.PathLike[str] | None = None,
    n_overlays: int = 0,
    curve_categories: bool = False,
    per_category: bool = False,
    ignore_pixel_metrics: bool = False,
    checkpoint_every: int | None = None,
    checkpoint_interval: float | None = None,
    init_model: str | os.PathLike[str] | None = None,
    run_details: dict[str, Any] | None = None,
    calibrate_with: int | None = None,
    objective: str = "f1",
    target: float | None = None,
    verbose: int = 0,
) -> dict[str, Any]:
    """Train and evaluate as the paper's experiments do: a setting, several seeds, curves.

    Parameters
    ----------
    train, test : AnomalyDataset
        The training split (normal images) and the test split, e.g. from
        :func:`~skuniad.datasets.load_mvtec`.
    params : dict, optional
        :class:`~skuniad.UniADDetector` parameters (``random_state`` is set
        from ``seeds``).
    setting : {"unified", "separate"}, default="unified"
        ``"unified"``: one model on the normal images of all categories
        (UniAD's setting). ``"separate"``: one model per category, trained
        on that category's images only (the paper's "separate case").
    seeds : sequence of int or None, default=(None,)
        The whole experiment runs once per seed; the results give each
        metric's mean and (with several seeds) sample standard deviation.
    eval_every : int, optional
        Score the test split every ``eval_every`` epochs and after the last
        (:class:`CurveRecorder`) during the fit itself; the fit is the same
        as without, and the reported model is always the last epoch's.
    output_dir : str or path-like, optional
        Where the models (``model[_<category>][_seed<k>].skuniad``),
        ``results.json``, ``results.md``, overlays and, with ``eval_every``,
        ``curve.json`` and ``curve.png`` go.
    n_overlays : int, default=0
        Heat-map overlays per category (needs ``output_dir``).
    curve_categories : bool, default=False
        Draw one line per category in ``curve.png`` besides the mean.
    per_category : bool, default=False
        Fit with the categories as ``groups``: per-category thresholds, used
        by the operating-point metrics (:func:`operating_point_metrics`).
    ignore_pixel_metrics : bool, default=False
        Image-level metrics only (see :func:`check_test_set`, which runs
        before any training).
    checkpoint_every : int, optional
        With ``output_dir``, each fit checkpoints every that many epochs to
        ``<model file>.ckpt`` there; running the experiment again resumes
        the fits (see ``UniADDetector(checkpoint_path=...)``).
    checkpoint_interval : float, optional
        With ``output_dir`` and no ``checkpoint_every``: each fit checkpoints
        there on this timer instead (at most once per that many seconds of
        training, and after the last epoch). Neither given: no checkpoints.
    init_model : str or path-like, optional
        A saved model to continue (a warm start for ``max_epochs`` more
        epochs) instead of training one from scratch; the unified setting
        and one seed only. ``params`` must not change its network.
    run_details : dict, optional
        More entries for the results' ``run`` block (e.g. which data set),
        listed after the model's own.
    calibrate_with : int, optional
        After each fit, per category, that many defective and as many good
        test images (drawn with the seed) calibrate the model's thresholds
        per category (:meth:`~skuniad.UniADDetector.calibrate` with
        ``objective`` and ``target``; masks, where the category has them,
        choose the pixel threshold) and are left out of every reported
        metric. At least 5; each category needs more images of each class.
    objective : str, default="f1"
    target : float, optional
        The calibration objective and its target, with ``calibrate_with``.
    verbose : int, default=0

    Raises
    ------
    ValueError
        Before any training, with nothing written: what :func:`check_experiment`
        finds wrong.
    skuniad.training.TrainingInterrupted
        Ctrl-C during a fit: with ``output_dir``, the model of the last
        finished epoch is written first, under the name it would have had.

    Returns
    -------
    dict
        ``categories`` and ``mean``: each metric's mean over seeds; with
        several seeds ``std`` (same layout, sample standard deviation);
        ``runs``: every seed's own results (:func:`evaluate_detector`) with
        its ``seed``, ``fit_seconds``, ``models`` (each model file's
        ``precision`` and ``thresholds``), ``images`` (per-image scores)
        and, with ``eval_every``, ``curve``;
        ``paper``: the paper's AUROCs of the categories it reports, for this
        setting; ``setting``, ``seeds``, ``image_score``, ``image_size``,
        ``n_images``, ``n_anomalous``; ``run`` (:func:`run_info` of the
        model asked for, then ``run_details``, ``epochs``, ``fit_seconds``
        and ``evaluate_seconds`` over all fits, and ``seeds``) and
        ``params``: its parameters (``random_state`` aside: one run per seed).
    """
    from skuniad import UniADDetector
    from skuniad.paper import paper_aurocs
    from skuniad.training import TrainingInterrupted

    if setting not in SETTINGS:
        raise ValueError(f"setting must be one of {SETTINGS}, got {setting!r}")
    seeds = list(seeds)
    if not seeds:
        raise ValueError("seeds must name at least one seed (None for an unseeded run)")
    params = dict(params or {})
    max_epochs = params.get("max_epochs", UniADDetector().max_epochs)
    if eval_every is not None and not 1 <= eval_every <= max_epochs:
        raise ValueError(f"eval_every must be in [1, max_epochs={max_epochs}], got {eval_every}")
    check_test_set(test, ignore_pixel_metrics=ignore_pixel_metrics)
    missing = sorted(set(test.category_names) - set(train.category_names))
    if setting == "separate" and missing:
        raise ValueError(f"the separate setting needs training images of {missing}")
    if init_model is not None and (setting != "unified" or len(seeds) > 1):
        raise ValueError("init_model continues one model: the unified setting and one seed only")
    if calibrate_with is not None:
        check_calibration_split(test, calibrate_with, objective, target)
    checkpoints = checkpoint_every is not None or checkpoint_interval is not None
    check_experiment(
        params,
        test.category_names,
        setting=setting,
        seeds=seeds,
        output_dir=output_dir if checkpoints else None,
        init_model=init_model,
    )
    folder = None if output_dir is None else Path(output_dir)
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    groups = [None] if setting == "unified" else test.category_names
    runs = []
    for seed in seeds:
        run: dict[str, Any] = {"seed": seed, "categories": {}, "fit_seconds": 0.0}
        curves, evaluations = [], []
        for category in groups:
            train_part = train if category is None else train.subset(category)
            test_part = test if category is None else test.subset(category)
            if init_model is None:
                det = UniADDetector(**{**params, "random_state": seed})
            else:
                det = UniADDetector.load(init_model, device=params.get("device", "auto"))
                det.set_params(**params, random_state=seed, warm_start=True)
            if verbose > 0:
                det.set_params(verbose=verbose)
            name = _model_name(category, seed, len(seeds))
            if folder is not None and checkpoints:
                det.set_params(checkpoint_path=folder / f"{name}.ckpt")
                det.set_params(checkpoint_every=checkpoint_every)
                if checkpoint_interval is not None:
                    det.set_params(checkpoint_interval=checkpoint_interval)
            recorder = None
            if eval_every is not None:
                # until the experiment ends, curve.json follows the model being trained
                progress = None if folder is None else folder / "curve.json"
                # without masks the curves have no pixel AUROC either
                curve_test = test_part
                if ignore_pixel_metrics:
                    curve_test = replace(test_part, mask_paths=[None] * len(test_part))
                recorder = CurveRecorder(curve_test, eval_every, max_epochs, progress)
            start = time.perf_counter()
            categories = train_part.categories if per_category else None
            try:
                det.fit(train_part.paths, groups=categories, on_epoch_end=recorder)
            except TrainingInterrupted as exc:
                if folder is None or not exc.loss_curve:
                    raise
                det.save(folder / name)  # the last finished epoch's model, kept
                raise TrainingInterrupted(
                    f"{exc}; written to {folder / name}", exc.loss_curve
                ) from None
            run["fit_seconds"] += time.perf_counter() - start
            run["n_epochs"] = det.n_epochs_
            if recorder is not None:
                curves.append(recorder.curve)
            if calibrate_with is not None:
                test_part = calibrate_on_test_images(
                    det, test_part, calibrate_with, seed, objective, target
                )
            if folder is not None:
                det.save(folder / name)
            overlay_dir = None
            if folder is not None and n_overlays:
                overlay_dir = folder / "overlays" / ("" if len(seeds) == 1 else f"seed{seed}")
            evaluations.append(
                evaluate_detector(
                    det,
                    test_part,
                    overlay_dir=overlay_dir,
                    n_overlays=n_overlays,
                    ignore_pixel_metrics=ignore_pixel_metrics,
                    verbose=verbose,
                )
            )
        run["models"] = {}
        run["images"] = []
        for category, evaluation in zip(groups, evaluations, strict=True):
            run["categories"].update(evaluation["categories"])
            run["models"][_model_name(category, seed, len(seeds))] = {
                key: evaluation[key] for key in ("precision", "thresholds") if key in evaluation
            }
            run["images"] += [{**row, "seed": seed} for row in evaluation["images"]]
        run["image_level_only"] = [c for e in evaluations for c in e["image_level_only"]]
        run["mean"] = mean_over_categories(run["categories"])
        run["seconds"] = sum(e["seconds"] for e in evaluations)
        if curves:
            run["curve"] = merge_curves(curves)
        runs.append(run)
    described = _requested_detector(params, init_model)
    if calibrate_with is not None:  # the images reported (the same counts with any seed)
        test = calibration_split(test, calibrate_with, seeds[0])[1]
    results = _summarise_runs(runs, test)
    results.update(
        image_level_only=runs[0]["image_level_only"],
        setting=setting,
        seeds=seeds,
        image_score=described.image_score,
        image_size=int(described.image_size),
        paper=paper_aurocs(test.category_names, setting),
    )
    facts = {
        **(run_details or {}),
        "epochs": runs[0]["n_epochs"],
        "fit_seconds": round(sum(run["fit_seconds"] for run in runs), 1),
        "evaluate_seconds": round(sum(run["seconds"] for run in runs), 1),
        "seeds": seeds,
    }
    results.update(run_block(described, **facts))
    if calibrate_with is not None:
        results["calibration"] = calibration_facts(calibrate_with, objective, target)
    if folder is not None:
        write_results(results, folder)
        if eval_every is not None:
            write_curves(results, folder, per_category=curve_categories)
    return results


def check_experiment(
    params: dict[str, Any] | None,
    categories: Sequence[str],
    *,
    setting: str = "unified",
    seeds: Sequence[int | None] = (None,),
    output_dir: str | os.PathLike[str] | None = None,
    init_model: str | os.PathLike[str] | None = None,
) -> None:
    """What the experiment's fits would find wrong only after feature extraction, checked now.

    The backbone, the ``backbone_weights`` file and the neighbour window of
    ``params`` (unless ``init_model`` gives the network), and, when the fits
    checkpoint to ``output_dir``, any checkpoint file already there (see
    :func:`skuniad._fitting.check_training_setup`). ``categories`` are the
    test split's (one model each in the separate setting). Raises a
    ValueError (or :class:`~skuniad.weights.BackboneWeightsError`); writes nothing.
    """
    from skuniad import UniADDetector
    from skuniad._checkpoint import check_checkpoint_file
    from skuniad._fitting import check_training_setup
    from skuniad._spec import check_params

    fit_params = UniADDetector(**{**(params or {}), "checkpoint_path": None}).get_params()
    check_params(fit_params)
    check_training_setup(fit_params, warm=init_model is not None)
    if output_dir is not None:
        seeds = list(seeds)
        for category in [None] if setting == "unified" else categories:
            for seed in seeds:
                name = _model_name(category, seed, len(seeds))
                check_checkpoint_file(Path(output_dir) / f"{name}.ckpt")


def calibration_facts(images_per_class: int, objective: str, target: float | None) -> dict:
    """A report's ``calibration`` entry: how its thresholds were set (see the Markdown note)."""
    return {"images_per_class": images_per_class, "objective": objective, "target": target}


def check_calibration_split(
    test: AnomalyDataset, images_per_class: int, objective: str, target: float | None
) -> None:
    """``run_experiment``'s calibration options, before any training."""
    from skuniad._thresholds import MIN_IMAGES, check_objective

    check_objective(objective, target)
    if isinstance(images_per_class, bool) or images_per_class < MIN_IMAGES:
        raise ValueError(
            f"calibrate_with must be at least {MIN_IMAGES} images of each class, "
            f"got {images_per_class!r}"
        )
    for category in test.category_names:
        labels = test.subset(category).labels
        for name, count in (("defective", int(labels.sum())), ("good", int((labels == 0).sum()))):
            if count <= images_per_class:
                raise ValueError(
                    f"category {category!r} has {count} {name} test images: calibrating with "
                    f"{images_per_class} of each class leaves none to report"
                )


def calibration_split(
    test: AnomalyDataset, images_per_class: int, seed: int | None
) -> tuple[AnomalyDataset, AnomalyDataset]:
    """(calibration, reported): per category, that many defective and good images drawn."""
    rng = np.random.RandomState(seed)
    chosen = np.zeros(len(test), dtype=bool)
    categories = np.asarray(test.categories)
    for category in test.category_names:
        for label in (1, 0):
            members = np.flatnonzero((categories == category) & (test.labels == label))
            chosen[rng.choice(members, images_per_class, replace=False)] = True
    return test.select(chosen), test.select(~chosen)


def calibrate_on_test_images(
    det: Any,
    test: AnomalyDataset,
    images_per_class: int,
    seed: int | None,
    objective: str = "f1",
    target: float | None = None,
) -> AnomalyDataset:
    """Calibrate ``det`` per category on test images drawn with ``seed``; return the others.

    Per category, ``images_per_class`` defective and as many good images
    (:func:`calibration_split`) set the thresholds with ``objective`` and
    ``target`` (:meth:`~skuniad.UniADDetector.calibrate`; their masks, where
    there are any, choose the pixel threshold). ``"f1"`` aims at each
    category's share of defective images among the returned ones (its
    ``defect_rate``: what a line would take from its known defect rate), as the
    F1 reported on them depends on it. Report metrics on the returned images only.
    """
    from skuniad.datasets import load_mask

    check_calibration_split(test, images_per_class, objective, target)
    images, reported = calibration_split(test, images_per_class, seed)

    masks = None
    if any(path is not None for path in images.mask_paths):
        masks = [None if mask is None else load_mask(mask) for mask in images.mask_paths]
    det.calibrate(
        images.paths,
        images.labels,
        groups=images.categories,
        masks=masks,
        objective=objective,
        target=target,
        defect_rate=defect_rates(reported) if objective == "f1" else None,
    )
    return reported


def defect_rates(test: AnomalyDataset) -> dict:
    """Each category's share of defective images in ``test``."""
    return {c: float(np.mean(test.subset(c).labels)) for c in test.category_names}


def _requested_detector(params: dict[str, Any], init_model: str | os.PathLike[str] | None) -> Any:
    """The model the experiment was asked for, unfitted, as its report describes it."""
    from skuniad import UniADDetector

    params = {k: v for k, v in params.items() if k != "random_state"}  # one run per seed
    if init_model is None:
        return UniADDetector(**params)
    return UniADDetector.load(init_model, device="cpu").set_params(**params)


def run_info(det: Any, **facts: Any) -> dict[str, Any]:
    """A report's ``run`` block: the detector's network, epochs, device and skuniad version.

    ``facts`` (what data, which times) follow, or replace an entry of the same name.
    """
    from skuniad import __version__

    info = {
        "backbone": det.backbone,
        "image_size": det.image_size,
        "transformer": (
            f"hidden {det.hidden_dim}, heads {det.num_heads}, layers "
            f"{det.num_encoder_layers}+{det.num_decoder_layers}, feedforward {det.dim_feedforward}"
        ),
        "epochs": getattr(det, "n_epochs_", None),
        "device": str(getattr(det, "device_", det.device)),
        "skuniad": __version__,
    }
    info.update(facts)
    return info


def run_block(det: Any, **facts: Any) -> dict[str, Any]:
    """The ``run`` (:func:`run_info`) and ``params`` (JSON-safe) entries of a report."""
    from skuniad._spec import json_safe_params

    return {"run": run_info(det, **facts), "params": json_safe_params(det.get_params())}


def _model_name(category: str | None, seed: int | None, n_seeds: int) -> str:
    parts = ["model"]
    if category is not None:
        parts.append(category)
    if n_seeds > 1:
        parts.append(f"seed{seed}")
    return "_".join(parts) + ".skuniad"


def _summarise_runs(runs: list[dict[str, Any]], test: AnomalyDataset) -> dict[str, Any]:
    """Mean (and, with several runs, sample std) over seeds of every metric."""
    names = list(runs[0]["categories"])
    keys = [k for k in ALL_METRICS if k in runs[0]["categories"][names[0]]]

    def over_runs(pick, reduce) -> dict[str, float | None]:
        return {k: mean_defined([pick(run)[k] for run in runs], reduce) for k in keys}

    results: dict[str, Any] = {
        "categories": {
            name: {
                **over_runs(lambda run, n=name: run["categories"][n], np.mean),
                "n_images": runs[0]["categories"][name]["n_images"],
                "n_anomalous": runs[0]["categories"][name]["n_anomalous"],
            }
            for name in names
        },
        "mean": over_runs(lambda run: run["mean"], np.mean),
        "runs": runs,
        "n_images": len(test),
        "n_anomalous": int(test.labels.sum()),
    }
    if len(runs) > 1:

        def std(values):
            return np.std(values, ddof=1)

        results["std"] = {
            "categories": {
                name: over_runs(lambda run, n=name: run["categories"][n], std) for name in names
            },
            "mean": over_runs(lambda run: run["mean"], std),
        }
    return results
