"""ONNX export of a fitted detector's inference path.

:func:`export_onnx` writes one graph from a normalized image batch to the
anomaly map and the image score, backbone included and the neighbor mask
baked in as a constant.
"""

from __future__ import annotations

import copy
import os
import warnings

import torch
from torch import nn

from skuniad.nn.transformer import anomaly_map, image_score
from skuniad.persistence import atomic_write

DEFAULT_OPSET = 17


class AnomalyGraph(nn.Module):
    """Normalized images (B, 3, S, S) -> anomaly maps (B, S, S) and image scores (B,).

    The whole inference path of a fitted detector in one module, for export:
    frozen backbone, reconstruction, L2 error map upsampled to ``image_size``,
    and the max of its 16 x 16 average pool.
    """

    def __init__(
        self, backbone: nn.Module, model: nn.Module, image_size: int, score_method: str = "max"
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.model = model
        self.image_size = image_size
        self.score_method = score_method

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.backbone(images)
        maps = anomaly_map(features, self.model(features), self.image_size)
        return maps, image_score(maps, method=self.score_method)


def export_onnx(detector, path: str | os.PathLike, opset: int = DEFAULT_OPSET) -> None:
    """Write a fitted detector's inference graph to an ONNX file (see the detector method).

    ``opset`` 14 or later; 14 to 20 are tested.
    """
    if opset < 14:
        raise ValueError(f"opset must be 14 or later (older ones are not supported), got {opset}")
    graph = AnomalyGraph(
        copy.deepcopy(detector.backbone_).to("cpu", torch.float32),
        copy.deepcopy(detector.model_).to("cpu", torch.float32),
        detector.network_spec_.image_size,
        detector.network_spec_.image_score,
    ).eval()
    size = detector.network_spec_.image_size
    example = torch.zeros(2, 3, size, size)
    batch = {0: "batch"}
    with atomic_write(path) as temporary, warnings.catch_warnings():
        # shape arithmetic traced as constants is intended: the input size is fixed
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # the TorchScript exporter on purpose: the dynamo one needs onnxscript
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message="Constant folding", category=UserWarning)
        torch.onnx.export(
            graph,
            (example,),
            str(temporary),
            input_names=["images"],
            output_names=["anomaly_map", "image_score"],
            dynamic_axes={"images": batch, "anomaly_map": batch, "image_score": batch},
            opset_version=opset,
            dynamo=False,
        )
