"""The empirical neural tangent kernel: exact (structured per-layer rules) and matrix-free."""

from .exact import LayerCapture, NTKWorkspace, kernel_from_capture
from .kernel import empirical_ntk
from .products import NTKOperator, ntk_matmat

__all__ = ["LayerCapture", "NTKOperator", "NTKWorkspace", "empirical_ntk", "kernel_from_capture",
           "ntk_matmat"]
