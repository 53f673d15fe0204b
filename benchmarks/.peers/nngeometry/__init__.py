from .metrics import FIM, FIM_MonteCarlo
from .hessian import Hessian
from .jacobian import Jacobian
from .gram import GramMatrix

__all__ = ["FIM", "FIM_MonteCarlo", "Hessian", "Jacobian", "GramMatrix"]
