"""Evaluate detectors as the UniAD paper does: per-category metrics, experiments, curves, reports.

- :func:`evaluate_detector` scores one fitted detector on a test split
  (``_evaluate.py``);
- :func:`run_experiment` trains and evaluates as the paper's experiments do:
  a setting, several seeds (:func:`check_experiment` checks its fits before
  any work); :func:`run_block` describes a run for a report
  (``_experiment.py``);
- :class:`CurveRecorder` records learning curves during a fit; ``curve.json``
  is written and read by :func:`write_curves` and :func:`read_curves`
  (``_curves.py``);
- :func:`write_results` writes ``results.json``, ``results.md`` and
  ``scores.csv``; :func:`results_table` and :func:`results_markdown` lay the
  results out (``_report.py``).
"""

from skuniad.evaluation._curves import CurveRecorder, read_curves, token_map_aurocs, write_curves
from skuniad.evaluation._evaluate import (
    check_test_set,
    evaluate_detector,
    image_score_aurocs,
    operating_point_metrics,
    scores_and_maps,
)
from skuniad.evaluation._experiment import (
    SETTINGS,
    calibrate_on_test_images,
    calibration_facts,
    calibration_split,
    check_calibration_split,
    check_experiment,
    run_block,
    run_experiment,
    run_info,
)
from skuniad.evaluation._report import (
    COLUMN_TITLES,
    IMAGE_SCORE_METRICS,
    METRIC_NAMES,
    METRICS,
    OPERATING_POINT_METRICS,
    PIXEL_METRICS,
    RESULTS_SCHEMA_VERSION,
    TITLES,
    operating_point_table,
    results_markdown,
    results_table,
    write_results,
)

__all__ = [
    "COLUMN_TITLES",
    "IMAGE_SCORE_METRICS",
    "METRICS",
    "METRIC_NAMES",
    "OPERATING_POINT_METRICS",
    "PIXEL_METRICS",
    "RESULTS_SCHEMA_VERSION",
    "SETTINGS",
    "TITLES",
    "CurveRecorder",
    "calibrate_on_test_images",
    "calibration_facts",
    "calibration_split",
    "check_calibration_split",
    "check_experiment",
    "check_test_set",
    "evaluate_detector",
    "image_score_aurocs",
    "operating_point_metrics",
    "operating_point_table",
    "read_curves",
    "results_markdown",
    "results_table",
    "run_block",
    "run_experiment",
    "run_info",
    "scores_and_maps",
    "token_map_aurocs",
    "write_curves",
    "write_results",
]
