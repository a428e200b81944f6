"""The values string parameters accept, in one torch-free place.

The library validates against these tuples and the command line builds its
option choices from them, so that ``skuniad --help`` needs no torch import and
a new choice is added once.
"""

RESIZE_MODES = ("pil-uint8", "float")
"""How images are resized for the model (``resize``)."""

LAYER_QUERIES = ("every", "first", "none")
"""Values of ``layer_queries``: the paper's layer-wise queries, then its two ablations."""

IMAGE_SCORES = ("max", "mean", "std")
"""How an anomaly map becomes the image score, the paper's MVTec choice first."""

LR_SCHEDULES = ("step", "cosine")
"""Learning-rate schedules (``lr_schedule``): the paper's step decay, then cosine."""

PRECISIONS = ("auto", "bf16", "fp32")
CACHE_DTYPES = ("float32", "float16", "bfloat16")
UNKNOWN_GROUP_POLICIES = ("pooled", "error")

CALIBRATION_OBJECTIVES = ("contamination", "f1", "false_alarms", "recall")
"""What ``calibrate`` chooses thresholds for: the normal-images rule, then three labelled ones."""

SETTINGS = ("unified", "separate")
"""UniAD's two settings: one model for all categories, or one model per category."""

DATASET_FORMATS = ("mvtec", "visa", "uniad-json")
"""Names accepted by ``skuniad.datasets.load_dataset`` and ``skuniad evaluate --dataset``."""
