"""Pure PyTorch parts of UniAD: backbone, neighbor-masked transformer, jitter.

Nothing here knows about scikit-learn, files or training loops.
"""

from skuniad.nn.attention import MaskedMultiheadAttention, neighbor_mask
from skuniad.nn.backbone import FrozenBackbone
from skuniad.nn.jitter import feature_jitter
from skuniad.nn.transformer import UniADReconstruction, anomaly_map, image_score

__all__ = [
    "FrozenBackbone",
    "MaskedMultiheadAttention",
    "UniADReconstruction",
    "anomaly_map",
    "feature_jitter",
    "image_score",
    "neighbor_mask",
]
