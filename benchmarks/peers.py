"""The tools a user would pick instead, run on the same weights in the same process.

Kernel (exact K, then dense eigh for the top-k, then KTA):

* ``jacrev``: torch.func NTK tutorial, method 1 — vmap(jacrev) per-sample Jacobians + einsum.
  (The tutorial computes the Jacobian twice, for x1 and x2; here once, which favours it.)
* ``ntk_vps``: the same tutorial, method 2 — vjp + jvp per sample pair, vmapped over pairs;
  row blocks of x1 keep the vmapped intermediates in memory (the tutorial vmaps all n² at once).
  It takes many minutes at n = 1000, so 1/32 of the rows is built and timed, the time scaled by 32.
* ``nngeometry``: ``GramMatrix`` (forward hooks, the same Hadamard trick for Linear layers).

Hessian λ_max (each tool builds its own gradient graph; seconds are end to end):

* ``pyhessian_top1`` / ``pyhessian_top5``: PyHessian's deflated power iteration (``cuda=False``:
  its single-batch path needs no patching; the HVP function is wrapped only to count products);
* ``eigenthings``: hessian-eigenthings 1.0.0a5 (PyPI) ``lanczos`` on its ``HessianOperator``
  (a fixed number of Lanczos steps; each product re-runs forward and backward, by its design);
* ``eigsh_cold``: the locuslab/edge-of-stability recipe re-implemented — scipy ``eigsh``
  (ARPACK) from a random start on full-batch HVPs that re-run forward + backward each time;
* ``lobpcg_warm``: the central-flows recipe re-implemented — scipy ``lobpcg`` on a
  LinearOperator of batched HVPs from one cached graph, X0 = the previous step's eigenvector;
* ``ours_prev_only``: our solver seeded with the previous eigenvector only (no Jᵀu₁), standalone.

Matrix-free kernel (ViT): ``eigsh_ntk_cold`` (ARPACK from random) and ``lobpcg_ntk_warm``
(X0 = previous top-k) on the same NTK-vector products as ours.

Matched accuracy: a peer's knob (tolerance, Lanczos steps) is calibrated once, at the first check,
to the loosest setting whose eigenvalue error against the float64 reference is ≤ 1e-4; the errors
at later checks are reported as measured.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator, eigsh, lobpcg
from torch.func import functional_call, jacrev, jvp, vjp, vmap
from torch.utils.data import DataLoader, TensorDataset

from benchmarks.common import add_peer_path, ensure_torch_peers, rel_err, timed
from ntk_core.numerics.alignment import centered_kernel_target_alignment, kernel_target_alignment
from ntk_core.numerics.eigensolver import top_eigenpairs
from ntk_core.numerics.hessian import HessianOperator, top_hessian_eigenpair
from ntk_core.numerics.losses import loss_value
from ntk_core.numerics.ntk import NTKOperator

MATCH = 1e-4


@dataclass
class Context:
    spec: object
    w: object  # ntk_core.experiments.bench.Workload at the current weights
    ours: object  # harness.Ours after this step's measurements
    ref: dict  # float64 references at these weights (values, K, sharpness)
    tol: float
    calib: dict = field(default_factory=dict)  # peer -> calibrated knob, kept across checks

    @property
    def model(self):
        return self.w.model

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return loss_value(out, y)


def _calibrate(ctx: Context, name: str, ladder: list, run: Callable[[object], dict],
               err: Callable[[dict], float]) -> dict:
    """Run with the calibrated knob, or find it: the loosest ladder entry with error ≤ 1e-4."""
    if name in ctx.calib:
        res = run(ctx.calib[name])
    else:
        for knob in ladder:
            res = run(knob)
            if err(res) <= MATCH:
                break
        ctx.calib[name] = knob
    res["err"] = err(res)
    return res


# ---- exact kernels ---------------------------------------------------------------------------
def _params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in model.named_parameters()}


def _single(model):
    def fnet_single(params, x):
        return functional_call(model, params, (x.unsqueeze(0),)).squeeze(0)
    return fnet_single


def _as_kernel(result: torch.Tensor, kernel: str) -> torch.Tensor:
    """(n, n, C, C) kernel blocks → traced (n, n) or sample-major (nC, nC)."""
    n, _, C, _ = result.shape
    if kernel == "traced" and C > 1:
        return torch.einsum("NMKK->NM", result)
    return result.permute(0, 2, 1, 3).reshape(n * C, n * C)


def jacrev_kernel(model, X: torch.Tensor, kernel: str) -> torch.Tensor:
    jac = vmap(jacrev(_single(model)), (None, 0))(_params(model), X)
    jac = [j.flatten(2) for j in jac.values()]  # (n, C, p_layer)
    return _as_kernel(torch.stack([torch.einsum("Naf,Mbf->NMab", j, j) for j in jac]).sum(0), kernel)


def ntk_vps_kernel(model, X: torch.Tensor, kernel: str, rows: int = 16,
                   row_limit: int | None = None) -> torch.Tensor:
    """K by the tutorial's method 2; with ``row_limit``, only the kernel rows of X[:row_limit]."""
    fnet_single, params = _single(model), _params(model)

    def get_ntk(x1, x2):
        output, vjp_fn = vjp(lambda p: fnet_single(p, x1), params)

        def get_ntk_slice(vec):
            (vjps,) = vjp_fn(vec)
            return jvp(lambda p: fnet_single(p, x2), (params,), (vjps,))[1]

        basis = torch.eye(output.numel(), dtype=output.dtype).view(output.numel(), -1)
        return vmap(get_ntk_slice)(basis)

    pairs = vmap(vmap(get_ntk, (None, 0)), (0, None))
    stop = X.shape[0] if row_limit is None else row_limit
    blocks = torch.cat([pairs(X[i:min(i + rows, stop)], X) for i in range(0, stop, rows)])
    n, _, C, _ = blocks.shape
    if row_limit is None:
        return _as_kernel(blocks, kernel)
    if kernel == "traced" and C > 1:
        return torch.einsum("NMKK->NM", blocks)
    return blocks.permute(0, 2, 1, 3).reshape(n * C, -1)


def nngeometry_kernel(model, X: torch.Tensor, kernel: str) -> torch.Tensor:
    add_peer_path()
    from nngeometry import GramMatrix  # noqa: PLC0415
    from nngeometry.layercollection import LayerCollection  # noqa: PLC0415

    loader = DataLoader(TensorDataset(X.clone()), batch_size=X.shape[0])
    G = GramMatrix(model, loader, function=lambda *d: model(d[0]),
                   layer_collection=LayerCollection.from_model(model)).to_torch()  # (C, n, C, n)
    return _as_kernel(G.permute(1, 3, 0, 2), kernel)


def _kernel_peer(build: Callable, row_share: int = 1) -> Callable[[Context], dict]:
    """K, dense eigh and KTA. With ``row_share`` s > 1 only the first n/s samples' kernel rows are
    built and the time is scaled by s: the method's cost is linear in rows (identical blocks);
    the eigh and KTA are then timed on the float32 reference K, which has the same size."""
    def peer(ctx: Context) -> dict:
        ours, kernel, n = ctx.ours, ctx.spec.config.kernel, ctx.w.X.shape[0]
        Kref, rv = ctx.ref["K"], ctx.ref["values"]
        if row_share > 1:
            limit = max(1, n // row_share)
            dt_k, rows = timed(lambda: build(ctx.model, ctx.w.X, kernel, row_limit=limit))
            ref_rows = Kref[:rows.shape[0]]
            kernel_err = (rows.double() - ref_rows).norm() / ref_rows.norm()
            K, dt_k = Kref.float(), dt_k * n / limit
        else:
            dt_k, K = timed(lambda: build(ctx.model, ctx.w.X, kernel))
            kernel_err = (K.double() - Kref).norm() / Kref.norm()
        dt_eig, values = timed(lambda: torch.linalg.eigvalsh(K).flip(0)[:ours.k])
        Y = ours.targets
        dt_kta, _ = timed(lambda: (kernel_target_alignment(K, Y),
                                   centered_kernel_target_alignment(K, Y)))
        out = {"seconds": dt_k, "pipeline_seconds": dt_k + dt_eig + dt_kta,
               "kernel_err": float(kernel_err), "row_share": row_share}
        if row_share == 1:
            out["err"] = float(((values.double() - rv).abs() / rv).max())
        return out
    return peer


# ---- Hessian λ_max ---------------------------------------------------------------------------
def _flat_hvp(model, X, Y, loss, params):
    """A full-batch HVP that rebuilds the graph each call (the EoS and eigenthings recipe)."""
    def hvp(v: torch.Tensor) -> torch.Tensor:
        grads = torch.autograd.grad(loss(model(X), Y), params, create_graph=True)
        dot, i = 0.0, 0
        for g, p in zip(grads, params, strict=True):
            dot = dot + (g * v[i:i + p.numel()].view_as(p)).sum()
            i += p.numel()
        return torch.cat([h.reshape(-1) for h in torch.autograd.grad(dot, params)])
    return hvp


def _hessian_err(ctx: Context) -> Callable[[dict], float]:
    return lambda res: rel_err(res["value"], ctx.ref["sharpness"])


def pyhessian_peer(top_n: int, default_tol: bool = False) -> Callable[[Context], dict]:
    def peer(ctx: Context) -> dict:
        add_peer_path()
        # the package re-exports the class under its module's name: fetch the module itself
        ph = importlib.import_module("pyhessian.hessian")

        counter = {"n": 0}
        original = ph.hessian_vector_product

        def counted(gradsH, params, v):
            counter["n"] += 1
            return original(gradsH, params, v)

        def run(tol: float) -> dict:
            counter["n"] = 0
            ph.hessian_vector_product = counted
            try:
                def solve():
                    h = ph.hessian(ctx.model, ctx.loss, data=(ctx.w.X, ctx.w.Y),
                                   cuda=ctx.w.X.device.type == "cuda")
                    return h.eigenvalues(maxIter=100, tol=tol, top_n=top_n)[0]
                with warnings.catch_warnings():  # its backward(create_graph=True) warns each call
                    warnings.simplefilter("ignore", UserWarning)
                    dt, values = timed(solve)
            finally:
                ph.hessian_vector_product = original
                for p in ctx.model.parameters():
                    p.grad = None  # PyHessian leaves graph-carrying .grad behind
            return {"seconds": dt, "products": counter["n"], "value": float(max(values)),
                    "tol": tol}

        if default_tol:
            res = run(1e-3)
            res["err"] = _hessian_err(ctx)(res)
            return res
        return _calibrate(ctx, f"pyhessian{top_n}", [1e-3, 1e-4, 1e-5, 1e-6, 1e-7], run,
                          _hessian_err(ctx))
    return peer


def eigenthings_peer(ctx: Context) -> dict:
    add_peer_path()
    from hessian_eigenthings import HessianOperator as HEOperator  # noqa: PLC0415
    from hessian_eigenthings import lanczos  # noqa: PLC0415

    def run(steps: int) -> dict:
        op = HEOperator(ctx.model, [(ctx.w.X, ctx.w.Y)], lambda m, b: ctx.loss(m(b[0]), b[1]))
        dt, res = timed(lambda: lanczos(op, k=1, max_iter=steps, which="LA", tol=ctx.tol, seed=0))
        return {"seconds": dt, "products": res.iterations, "value": float(res.eigenvalues[0]),
                "self_converged": float(bool(res.converged[0]))}

    return _calibrate(ctx, "eigenthings", [4, 6, 8, 10, 12, 16, 20, 25, 30, 40, 50, 60, 80], run,
                      _hessian_err(ctx))


def _counting_operator(matvec: Callable[[torch.Tensor], torch.Tensor], dim: int,
                       counter: dict, block: Callable | None = None) -> LinearOperator:
    def mv(v: np.ndarray) -> np.ndarray:
        counter["n"] += 1
        return matvec(torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64).reshape(-1))).numpy()

    def mm(V: np.ndarray) -> np.ndarray:
        counter["n"] += V.shape[1]
        return block(torch.from_numpy(np.ascontiguousarray(V, dtype=np.float64))).numpy()

    return LinearOperator((dim, dim), matvec=mv, matmat=mm if block else None, dtype=np.float64)


def eigsh_cold_peer(ctx: Context) -> dict:
    w = ctx.w
    hvp = _flat_hvp(w.model, w.X, w.Y, ctx.loss, w.params)
    dim = sum(p.numel() for p in w.params)

    def run(tol: float) -> dict:
        counter = {"n": 0}
        op = _counting_operator(lambda v: hvp(v.to(w.X.dtype)).double(), dim, counter)
        dt, vals = timed(lambda: eigsh(op, k=1, which="LA", tol=tol, return_eigenvectors=False))
        return {"seconds": dt, "products": counter["n"], "value": float(vals.max()), "tol": tol}

    return _calibrate(ctx, "eigsh_cold", [1e-2, 1e-3, 1e-4, 1e-6], run, _hessian_err(ctx))


def lobpcg_warm_peer(ctx: Context) -> dict:
    w, prev = ctx.w, ctx.ours.last["prev_v"]
    if prev is None:
        return None

    def run(rtol: float) -> dict:
        counter = {"n": 0}

        def solve():
            L = ctx.loss(w.model(w.X), w.Y)
            op = HessianOperator(torch.autograd.grad(L, w.params, create_graph=True), w.params)
            A = _counting_operator(lambda v: op.matmat(v[:, None])[:, 0], op.dim, counter,
                                   block=op.matmat)
            X0 = prev[:, :1].numpy().copy()
            lam0 = float(X0[:, 0] @ A.matvec(X0[:, 0]))
            vals, _ = lobpcg(A, X0, tol=rtol * abs(lam0), maxiter=200, largest=True)
            return vals

        dt, vals = timed(solve)
        return {"seconds": dt, "products": counter["n"], "value": float(np.max(vals)), "tol": rtol}

    return _calibrate(ctx, "lobpcg_warm", [1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 1e-5], run,
                      _hessian_err(ctx))


def ours_prev_only_peer(ctx: Context) -> dict:
    w, prev = ctx.w, ctx.ours.last["prev_v"]

    def solve():
        L = ctx.loss(w.model(w.X), w.Y)
        op = HessianOperator(torch.autograd.grad(L, w.params, create_graph=True), w.params)
        return top_hessian_eigenpair(op, start=prev, tol=ctx.tol, guard=1)

    dt, res = timed(solve)
    out = {"seconds": dt, "products": res.products, "value": float(res.values[0])}
    out["err"] = _hessian_err(ctx)(out)
    return out


# ---- matrix-free kernel top-k ----------------------------------------------------------------
def _topk_err(ctx: Context) -> Callable[[dict], float]:
    rv = ctx.ref["values"].cpu().numpy()
    return lambda res: float(np.max(np.abs(res["values"] - rv) / np.abs(rv)))


def eigsh_ntk_cold_peer(ctx: Context) -> dict:
    w, k = ctx.w, ctx.ours.k

    def run(tol: float) -> dict:
        counter = {"n": 0}

        def solve():
            op = NTKOperator(w.model, w.X, ctx.spec.config.kernel)
            A = _counting_operator(lambda v: op.matmat(v[:, None])[:, 0], op.dim, counter,
                                   block=op.matmat)
            return eigsh(A, k=k, which="LA", tol=tol, return_eigenvectors=False)

        dt, vals = timed(solve)
        return {"seconds": dt, "products": counter["n"], "values": np.sort(vals)[::-1], "tol": tol}

    res = _calibrate(ctx, "eigsh_ntk", [1e-2, 1e-3, 1e-4, 1e-6], run, _topk_err(ctx))
    res.pop("values")
    return res


def lobpcg_ntk_warm_peer(ctx: Context) -> dict:
    w, k, prev = ctx.w, ctx.ours.k, ctx.ours.last["prev_u"]
    if prev is None:
        return None

    def run(rtol: float) -> dict:
        counter = {"n": 0}

        def solve():
            op = NTKOperator(w.model, w.X, ctx.spec.config.kernel)
            A = _counting_operator(lambda v: op.matmat(v[:, None])[:, 0], op.dim, counter,
                                   block=op.matmat)
            X0 = prev[:, :k].numpy().copy()
            lam0 = float(np.linalg.norm(A.matmat(X0[:, :1])))
            vals, _ = lobpcg(A, X0, tol=rtol * lam0, maxiter=200, largest=True)
            return vals

        dt, vals = timed(solve)
        return {"seconds": dt, "products": counter["n"], "values": np.sort(vals)[::-1], "tol": rtol}

    res = _calibrate(ctx, "lobpcg_ntk", [1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 1e-5], run, _topk_err(ctx))
    res.pop("values")
    return res


def ours_top5_cold_peer(ctx: Context) -> dict:
    """Our solver, cold, for the top-5 Hessian eigenvalues: the counterpart of PyHessian top-5."""
    w = ctx.w

    def solve():
        L = ctx.loss(w.model(w.X), w.Y)
        op = HessianOperator(torch.autograd.grad(L, w.params, create_graph=True), w.params)
        return top_eigenpairs(op.matmat, op.dim, 5, tol=ctx.tol, guard=2)

    dt, res = timed(solve)
    return {"seconds": dt, "products": res.products,
            "err": rel_err(float(res.values[0]), ctx.ref["sharpness"])}


PEERS: dict[str, Callable[[Context], dict | None]] = {
    "jacrev": _kernel_peer(jacrev_kernel),
    "ntk_vps": _kernel_peer(ntk_vps_kernel, row_share=32),
    "nngeometry": _kernel_peer(nngeometry_kernel),
    "pyhessian_top1": pyhessian_peer(1),
    "pyhessian_top1_default": pyhessian_peer(1, default_tol=True),
    "pyhessian_top5": pyhessian_peer(5),
    "ours_top5_cold": ours_top5_cold_peer,
    "eigenthings": eigenthings_peer,
    "eigsh_cold": eigsh_cold_peer,
    "lobpcg_warm": lobpcg_warm_peer,
    "ours_prev_only": ours_prev_only_peer,
    "eigsh_ntk_cold": eigsh_ntk_cold_peer,
    "lobpcg_ntk_warm": lobpcg_ntk_warm_peer,
}


def available(name: str) -> bool:
    """Whether a peer's package can be imported (the torch.func and scipy peers always can).

    The third-party ones are installed into the per-user peer folder on first use
    (common.ensure_torch_peers); when that fails, the peer is skipped.
    """
    module = {"nngeometry": "nngeometry", "eigenthings": "hessian_eigenthings"}.get(
        name, "pyhessian" if name.startswith("pyhessian") else None)
    if module is None:
        return True
    if ensure_torch_peers() is not None:
        return False
    add_peer_path()
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def save_weights(w, path: str, ref: dict | None = None) -> None:
    """Weights, data and the float64 reference kernel for the neural-tangents harness."""
    arrays = {f"param/{k}": v.detach().double().cpu().numpy() for k, v in w.model.named_parameters()}
    arrays.update(X=w.X.double().cpu().numpy(), Y=w.Y.double().cpu().numpy(), lr=np.array(w.lr))
    if ref is not None:
        arrays.update(K_ref=ref["K"].cpu().numpy(), values_ref=ref["values"].cpu().numpy())
    np.savez(path, **arrays)


