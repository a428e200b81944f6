"""skuniad: UniAD unified multi-class anomaly detection, scikit-learn style."""

__version__ = "0.1.0"

from skuniad.detector import UniADDetector  # noqa: E402

__all__ = ["UniADDetector", "__version__"]
