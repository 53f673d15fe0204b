"""Matrix-free NTK-vector products: v ↦ J (Jᵀ v), one vjp and one jvp, for any model.

The reverse pass is recorded once per step (torch.func.vjp) and its closure is vmapped over a
block of vectors; the forward-mode half (torch.func.jvp) is vmapped over the same block, so the
forward runs once per block, not once per vector. A vmapped block holds about three copies of
the forward's activations per vector, so a large block (n = 50,000 through a 3×256 MLP:
about 0.3 GB of activations) runs in chunks that fit ``BLOCK_BYTES``. torch.func.linearize
would cache the forward too, but tracing it costs ~80 GD steps on a small ViT — more than a
whole solve. Cost per vector
≈ 1–2 GD steps (performance notes); nothing of size n·p or (nC)² is ever formed.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, jvp, vjp, vmap

from ..losses import as_outputs
from .exact import check_kernel

BLOCK_BYTES = 4 * 2**30
"""Memory a vmapped chunk of products may hold, counting three times the forward's activations
per vector."""


class NTKOperator:
    """The empirical NTK at the model's current weights as a linear operator on R^m.

    ``kernel="full"``: m = n·C, sample-major (index i·C + c). ``kernel="traced"``: m = n and the
    operator is Σ_c K_cc, applied as C full products on masked cotangents.
    """

    def __init__(self, model: nn.Module, X: torch.Tensor, kernel: str = "full") -> None:
        check_kernel(kernel)
        params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
        buffers = dict(model.named_buffers())
        frozen = {k: v.detach() for k, v in model.named_parameters() if not v.requires_grad}

        def f(p: dict[str, torch.Tensor]) -> torch.Tensor:
            return as_outputs(functional_call(model, {**frozen, **buffers, **p}, (X,)))

        # torch declares vjp's result as either tuple, with no overload on has_aux
        self.outputs, self._vjp = vjp(f, params)  # type: ignore[misc]
        self.activation_bytes = activation_bytes(model, X)
        self.chunk = max(1, int(BLOCK_BYTES // max(3 * self.activation_bytes, 1)))
        self._f, self._params = f, params
        self.n, self.C = self.outputs.shape
        self.kernel = kernel
        self.dim = self.n if (kernel == "traced" or self.C == 1) else self.n * self.C
        self.dtype = self.outputs.dtype
        self.products = 0

    def _full(self, V: torch.Tensor) -> torch.Tensor:
        """K_full @ V for V of shape (b, n, C) → (b, n, C)."""
        def one(v: torch.Tensor) -> torch.Tensor:
            (g,) = self._vjp(v)
            return jvp(self._f, (self._params,), (g,))[1]
        try:
            return torch.cat([vmap(one)(V[i:i + self.chunk])
                              for i in range(0, V.shape[0], self.chunk)])
        except RuntimeError:  # a model op without a batching rule: fall back to a loop
            return torch.stack([one(v) for v in V])

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        """K @ V for V of shape (m, b), in V's dtype; counts b products."""
        b = V.shape[1]
        self.products += b
        Vt = V.T.to(self.dtype)
        if self.dim == self.n * self.C:
            out = self._full(Vt.reshape(b, self.n, self.C)).reshape(b, self.dim)
        else:  # traced: Σ_c (J_c J_cᵀ) v — each output's cotangent is v on column c alone
            out = torch.zeros(b, self.n, dtype=self.dtype, device=V.device)
            for c in range(self.C):
                cot = torch.zeros(b, self.n, self.C, dtype=self.dtype, device=V.device)
                cot[:, :, c] = Vt
                out += self._full(cot)[:, :, c]
        return out.T.to(V.dtype)

    def pullback(self, U: torch.Tensor) -> torch.Tensor:
        """Jᵀ U for U in full-kernel coordinates (n·C, b): kernel eigenvectors mapped to
        parameter space, (p, b). Only the full kernel has this correspondence."""
        cols = []
        for u in U.T.to(self.dtype):
            (g,) = self._vjp(u.reshape(self.n, self.C))
            cols.append(torch.cat([t.reshape(-1) for t in g.values()]))
        return torch.stack(cols, dim=1)


def activation_bytes(model: nn.Module, X: torch.Tensor) -> int:
    """The bytes of every leaf module's output in a forward pass on ``X``, from one sample's
    (torch.func's transforms admit no saved-tensor hooks to count them directly)."""
    total = [0]

    def hook(module: nn.Module, inputs: tuple, output: object) -> None:
        if isinstance(output, torch.Tensor):
            total[0] += output.numel() * output.element_size()

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if next(m.children(), None) is None]
    try:
        with torch.no_grad():
            model(X[:1])
    finally:
        for h in handles:
            h.remove()
    return total[0] * X.shape[0]


def ntk_matmat(model: nn.Module, X: torch.Tensor, V: torch.Tensor,
               kernel: str = "full") -> torch.Tensor:
    """One-shot K @ V without forming K."""
    return NTKOperator(model, X, kernel).matmat(V)
