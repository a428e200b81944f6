"""skuniad: UniAD unified multi-class anomaly detection, scikit-learn style."""

__version__ = "0.1.0"

__all__ = ["UniADDetector", "__version__"]


def __getattr__(name: str):
    # Lazy, so that `import skuniad` (and `skuniad --help`) does not load torch.
    if name == "UniADDetector":
        from skuniad.detector import UniADDetector

        return UniADDetector
    raise AttributeError(f"module 'skuniad' has no attribute {name!r}")
