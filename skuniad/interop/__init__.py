"""Interoperability: the UniAD authors' reference checkpoints, and ONNX export.

- :mod:`skuniad.interop.reference`: read the authors' ``ckpt.pth.tar`` into a
  fitted detector and write a detector back in their layout.
- :mod:`skuniad.interop.onnx`: export a fitted detector's inference graph.
"""

from skuniad._efficientnet_names import backbone_from_reference, backbone_to_reference
from skuniad.interop.onnx import DEFAULT_OPSET, AnomalyGraph, export_onnx
from skuniad.interop.reference import (
    RECONSTRUCTION_NAMES,
    ReferenceCheckpoint,
    detector_from_reference,
    detector_params,
    read_reference_checkpoint,
    reconstruction_from_reference,
    reconstruction_to_reference,
    reference_arch,
    write_reference_checkpoint,
)

__all__ = [
    "DEFAULT_OPSET",
    "RECONSTRUCTION_NAMES",
    "AnomalyGraph",
    "ReferenceCheckpoint",
    "backbone_from_reference",
    "backbone_to_reference",
    "detector_from_reference",
    "detector_params",
    "export_onnx",
    "read_reference_checkpoint",
    "reconstruction_from_reference",
    "reconstruction_to_reference",
    "reference_arch",
    "write_reference_checkpoint",
]
