from .dummy import DummyGenerator
from .torch_hooks.torch_hooks import TorchHooksJacobianBackend
from .torch_func_hessian import TorchFuncHessianBackend

__all__ = ["TorchHooksJacobianBackend", "DummyGenerator", "TorchFuncHessianBackend"]
