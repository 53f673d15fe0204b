from .fspace import FMatDense
from .map import PFMapDense, PFMapImplicit
from .pspace import (
    PMatBlockDiag,
    PMatDense,
    PMatDiag,
    PMatEKFAC,
    PMatImplicit,
    PMatKFAC,
    PMatLowRank,
    PMatQuasiDiag,
)
from .vector import FVector, PVector

__all__ = [
    "FVector",
    "PVector",
    "FMatDense",
    "PFMapDense",
    "PFMapImplicit",
    "PMatBlockDiag",
    "PMatDense",
    "PMatDiag",
    "PMatEKFAC",
    "PMatImplicit",
    "PMatKFAC",
    "PMatLowRank",
    "PMatQuasiDiag",
]
