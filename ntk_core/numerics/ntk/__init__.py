"""The empirical neural tangent kernel: exact (structured per-layer rules) and matrix-free."""

from .exact import LayerCapture, NTKWorkspace, empirical_ntk, kernel_from_capture
from .products import NTKOperator, ntk_matmat

__all__ = ["LayerCapture", "NTKOperator", "NTKWorkspace", "empirical_ntk", "kernel_from_capture",
           "ntk_matmat"]
