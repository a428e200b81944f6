"""The ``skuniad`` command line: fit, calibrate, predict, evaluate, demo, info, import-reference,
export, export-json.

torch, timm, scikit-learn and the detector are imported inside the commands,
so that ``skuniad --help`` answers at once. Domain errors (missing files, bad
data sets or model files, invalid parameters) print one line and exit with
code 1; usage errors, out-of-range option values included, exit with 2
(click's convention) before any work starts; Ctrl-C exits with 130, and
``skuniad fit`` still saves the model of the last finished epoch.

Each command lives in its own module (``fit`` holds ``calibrate`` too,
``interop`` holds ``import-reference`` and ``export``), registered on the
shared Typer ``app`` (``_common``) when imported; the import order is the
order ``--help`` lists. ``_options`` declares the shared options and their
choices, ``_errors`` how commands fail, ``_tables`` the printed tables.
"""

from __future__ import annotations

from importlib import import_module

from skuniad.cli._common import app

for _module in ("fit", "predict", "evaluate", "demo", "info", "interop", "export_json"):
    import_module(f"skuniad.cli.{_module}")

__all__ = ["app", "main"]


def main() -> None:
    """Entry point of the ``skuniad`` console script and of ``python -m skuniad``."""
    app(prog_name="skuniad")
