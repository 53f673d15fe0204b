"""The two-layer linear network f(x) = vᵀWx: closed-form NTK, the rank-one reduction, the
sharpness ceiling 2/η and the final kernel–target alignment it predicts (Jiang, Cohen, Li 2025,
Sec. 4), with a gradient-flow reference and a comparison against gradient descent in the engine.

Setting: inputs X (n × d), targets y (n,), W (h × d), v (h,), L = (1/2n) Σ (f(x_i) − y_i)².

1. NTK. ∂f(x)/∂v = Wx and ∂f(x)/∂W = v xᵀ, so
       K(x, x') = ⟨Wx, Wx'⟩ + ‖v‖² ⟨x, x'⟩,   i.e.  K = X WᵀW Xᵀ + ‖v‖² X Xᵀ.

2. Rank-one reduction. Write G = X Xᵀ. With rank-one weights W = u wᵀ, v = a u (‖u‖ = 1) the
   function is f(x) = a wᵀx and WᵀW = w wᵀ. At interpolation X w = y / a, so
       K(a) = a² G + y yᵀ / a²,
   a data term and a label term traded off by the layer scale a² (written b below). Its
   alignment, with ‖K‖_F² = b²‖G‖_F² + 2 yᵀGy + ‖y‖⁴/b², is
       KTA(b) = (b yᵀGy + ‖y‖⁴/b) / (‖y‖² ‖K(b)‖_F),
   which rises towards 1 as b → 0 (the label term wins) and falls as b grows when y is poorly
   aligned with G.

3. The sharpness ceiling. At interpolation the residual vanishes, so the Hessian equals its
   Gauss–Newton part (1/n) JᵀJ, whose non-zero spectrum is that of K/n:
       S(b) = λ_max(b G + y yᵀ / b) / n.
   Both terms are matrix-convex in b > 0, so S is convex with a single minimum S_min at b*, and
   increasing on [b*, ∞). Gradient descent with step η can only settle where S(b) ≤ 2/η. An
   interpolating solution reached from larger b by the sharpness reduction of the Edge of
   Stability ends at the edge: the largest admissible layer scale
       b_max(η) = max { b : S(b) = 2/η }   (none when 2/η < S_min: no stable interpolant).
   When 2/η ≥ S(b_flow) the ceiling does not bind and gradient descent behaves like gradient
   flow, so the prediction is
       b(η) = min(b_flow, b_max(η)),   KTA(η) = KTA(b(η)),
   so b(η) falls with η once η exceeds 2/S(b_flow): larger steps leave less room for the data
   term and shift the kernel onto y yᵀ. KTA(η) therefore rises wherever KTA(b) falls with b on
   [b*, b_flow], as it does when y is poorly aligned with the top eigenvectors of G. With one
   outlier eigenvalue λ₁(G) ≫ the bulk and y nearly orthogonal to its eigenvector,
   S(b) ≈ b λ₁/n on the large-b branch, so
   b_max ≈ 2n/(η λ₁): the predicted layer scale falls like 1/η.

4. Gradient flow conserves the layer imbalance D = v vᵀ − W Wᵀ:
       dv/dt = −(1/n) W Xᵀ r,  dW/dt = −(1/n) v rᵀX  ⇒  dD/dt = −(1/n)(W Xᵀ r vᵀ + v rᵀX Wᵀ)
                                                           + (1/n)(v rᵀX Wᵀ + W Xᵀ r vᵀ) = 0.
   From a small initialisation D ≈ 0, so the interpolant is balanced: b = ‖w‖², and with w in the
   row space of X, ‖w‖² = yᵀG⁻¹y / b, hence b_flow = (yᵀG⁻¹y)^{1/2}. A discrete step changes D
   by η²(g_v g_vᵀ − g_W g_Wᵀ): only gradient descent with a finite step can leave the flow's
   solution, which is why gradient flow shows no η-dependent alignment. ``gradient_flow``
   integrates the flow with RK4 and reports the drift of D.

5. Simulation. ``compare`` trains arch=linear2 with the engine's Trainer at several η on data
   whose Gram matrix has one outlier eigenvalue (``outlier_data``: Gaussian inputs plus a strong
   shared direction with random per-sample strength), stops every run at the same target loss
   and compares the measured final KTA and ‖v‖² with the prediction above, using b_flow from the
   gradient-flow reference started at the same initialisation. Limit seen in practice: from a
   small initialisation a² grows quickly, so at η beyond about twice 2/S(b_flow) the sharpness
   overshoots 2/η by a wide margin before the unstable component has grown, and gradient descent
   diverges instead of settling at b_max(η); the comparison is meaningful below that.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import xarray as xr
from scipy.optimize import brentq, minimize_scalar

from ..config import RunConfig
from ..data import Dataset
from ..models import build_model
from ..models.linear2 import Linear2
from ..numerics.alignment import kernel_target_alignment

FLOW_TIME = 2000.0  # flow time budget of the reference (GD at η for t steps ≈ time ηt)
FLOW_TARGET_LOSS = 1e-9

# ---- 1. the closed-form NTK -----------------------------------------------------------------


def linear2_ntk(X: torch.Tensor, W: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """K = X WᵀW Xᵀ + ‖v‖² X Xᵀ for f(x) = vᵀWx; X (n, d), W (h, d), v (h,) or (1, h)."""
    XW = X @ W.T  # (n, h)
    return XW @ XW.T + (v.reshape(-1) @ v.reshape(-1)) * (X @ X.T)


# ---- 2. the rank-one reduction ----------------------------------------------------------------


def rank_one_ntk(G: np.ndarray, y: np.ndarray, b: float) -> np.ndarray:
    """K(b) = b G + y yᵀ / b, the NTK of the rank-one interpolant with layer scale b = a²."""
    return b * G + np.outer(y, y) / b


def rank_one_kta(G: np.ndarray, y: np.ndarray, b: float) -> float:
    """KTA(b) of the rank-one interpolant's kernel."""
    return kernel_target_alignment(torch.as_tensor(rank_one_ntk(G, y, b)), torch.as_tensor(y))


def rank_one_sharpness(G: np.ndarray, y: np.ndarray, b: float) -> float:
    """S(b) = λ_max(b G + y yᵀ / b) / n, the (Gauss–Newton = Hessian) sharpness at interpolation."""
    return float(np.linalg.eigvalsh(rank_one_ntk(G, y, b))[-1]) / len(y)


def sharpness_minimum(G: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(b*, S_min): the layer scale of the flattest interpolant and its sharpness (S is convex)."""
    res = minimize_scalar(lambda t: rank_one_sharpness(G, y, math.exp(t)), bounds=(-20.0, 20.0),
                          method="bounded", options={"xatol": 1e-10})
    return math.exp(res.x), float(res.fun)


def max_admissible_a2(G: np.ndarray, y: np.ndarray, lr: float) -> float:
    """b_max(η): the largest b with S(b) = 2/η; NaN when 2/η < S_min (no stable interpolant)."""
    b_star, s_min = sharpness_minimum(G, y)
    ceiling = 2.0 / lr
    if ceiling < s_min:
        return math.nan
    hi = 2.0 * b_star
    while rank_one_sharpness(G, y, hi) < ceiling:
        hi *= 2.0
    return brentq(lambda b: rank_one_sharpness(G, y, b) - ceiling, b_star, hi, xtol=1e-12)


def balanced_flow_a2(G: np.ndarray, y: np.ndarray) -> float:
    """b_flow = (yᵀG⁻¹y)^{1/2}: the balanced interpolant gradient flow reaches from a small init."""
    return math.sqrt(float(y @ np.linalg.lstsq(G, y, rcond=None)[0]))


def predict(G: np.ndarray, y: np.ndarray, lrs: Sequence[float] | np.ndarray,
            a2_flow: float | None = None) -> xr.Dataset:
    """The predicted final layer scale b(η) = min(b_flow, b_max(η)), its KTA and sharpness, per η."""
    b_flow = balanced_flow_a2(G, y) if a2_flow is None else a2_flow
    b_max = np.array([max_admissible_a2(G, y, lr) for lr in lrs])
    b = np.where(np.isnan(b_max), np.nan, np.fmin(b_max, b_flow))
    kta = np.array([rank_one_kta(G, y, bi) if np.isfinite(bi) else np.nan for bi in b])
    sharp = np.array([rank_one_sharpness(G, y, bi) if np.isfinite(bi) else np.nan for bi in b])
    b_star, s_min = sharpness_minimum(G, y)
    return xr.Dataset(
        {"a2_max": ("lr", b_max, {"long_name": "largest admissible a² with S = 2/η"}),
         "a2_pred": ("lr", b, {"long_name": "predicted final a² = min(a²_flow, a²_max)"}),
         "kta_pred": ("lr", kta, {"long_name": "predicted final KTA"}),
         "sharpness_pred": ("lr", sharp, {"long_name": "sharpness of the predicted interpolant"})},
        coords={"lr": ("lr", np.asarray(lrs, float), {"long_name": "learning rate η"})},
        attrs={"a2_flow": b_flow, "a2_star": b_star, "sharpness_min": s_min,
               "sharpness_flow": rank_one_sharpness(G, y, b_flow),
               "kta_flow": rank_one_kta(G, y, b_flow), "kta_star": rank_one_kta(G, y, b_star)})


# ---- 4. the gradient-flow reference -----------------------------------------------------------


@dataclass
class FlowResult:
    W: np.ndarray
    v: np.ndarray
    time: np.ndarray  # (T,) flow time (= η × steps for gradient descent)
    loss: np.ndarray  # (T,)
    a2: np.ndarray  # (T,) ‖v‖²
    imbalance_drift: np.ndarray  # (T,) ‖D(t) − D(0)‖_F / ‖D(0)‖_F


def _grads(X: np.ndarray, y: np.ndarray, W: np.ndarray, v: np.ndarray
           ) -> tuple[np.ndarray, np.ndarray, float]:
    n = len(y)
    XW = X @ W.T  # (n, h)
    r = XW @ v - y
    return np.outer(v, r @ X) / n, XW.T @ r / n, 0.5 * float(r @ r) / n


def _imbalance(W: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.outer(v, v) - W @ W.T


def gradient_flow(X: np.ndarray, y: np.ndarray, W: np.ndarray, v: np.ndarray, time: float,
                  dt: float = 0.02, target_loss: float | None = None, record_every: int = 10,
                  method: str = "rk4") -> FlowResult:
    """Integrate dθ/dt = −∇L with classical RK4 (float64) up to ``time`` or ``target_loss``.

    ``method="euler"`` takes plain Euler steps instead: gradient descent with η = dt, which does not
    conserve the imbalance (the contrast the tests draw)."""
    if method not in ("rk4", "euler"):
        raise ValueError(f"method: expected rk4 or euler, got {method!r}")
    W, v = np.array(W, np.float64), np.array(v, np.float64).reshape(-1)
    X, y = np.asarray(X, np.float64), np.asarray(y, np.float64).reshape(-1)
    D0 = _imbalance(W, v)
    scale = max(float(np.linalg.norm(D0)), 1e-300)
    log: list[tuple[float, float, float, float]] = []
    steps = int(math.ceil(time / dt))
    for i in range(steps + 1):
        gW, gv, loss = _grads(X, y, W, v)
        if i % record_every == 0 or i == steps:
            drift = float(np.linalg.norm(_imbalance(W, v) - D0)) / scale
            log.append((i * dt, loss, float(v @ v), drift))
        if i == steps or (target_loss is not None and loss <= target_loss):
            break
        if method == "euler":
            W, v = W - dt * gW, v - dt * gv
            continue
        k1 = (gW, gv)
        k2 = _grads(X, y, W - 0.5 * dt * k1[0], v - 0.5 * dt * k1[1])[:2]
        k3 = _grads(X, y, W - 0.5 * dt * k2[0], v - 0.5 * dt * k2[1])[:2]
        k4 = _grads(X, y, W - dt * k3[0], v - dt * k3[1])[:2]
        W = W - dt / 6 * (k1[0] + 2 * k2[0] + 2 * k3[0] + k4[0])
        v = v - dt / 6 * (k1[1] + 2 * k2[1] + 2 * k3[1] + k4[1])
    t, losses, a2, drifts = (np.array(c) for c in zip(*log, strict=True))
    return FlowResult(W, v, t, losses, a2, drifts)


# ---- 5. data and simulation -------------------------------------------------------------------


def outlier_data(n: int = 32, d: int = 128, strength: float = 1.0, spread: float = 0.5,
                 seed: int = 0) -> Dataset:
    """Binary ±1 data whose Gram matrix X Xᵀ has one outlier eigenvalue.

    x_i = z_i/√d + strength · s_i · μ with z_i ~ N(0, I_d), a random unit vector μ and per-sample
    strengths s_i ~ 1 + spread·N(0, 1). The bulk of X Xᵀ sits near 1 (d ≥ n keeps it away from
    0, so every labelling interpolates) and the outlier near n·strength²·(1 + spread²). Labels are
    balanced and independent of μ, so y is nearly orthogonal to the outlier eigenvector; the
    random strengths keep the two from being exactly orthogonal, which would let the unstable
    component grow from rounding noise only and overshoot 2/η before the Edge of Stability sets in.
    """
    rng = np.random.default_rng(seed)
    mu = rng.standard_normal(d)
    mu /= np.linalg.norm(mu)
    s = 1.0 + spread * rng.standard_normal((n, 1))
    X = rng.standard_normal((n, d)) / math.sqrt(d) + strength * s * mu
    labels = (np.arange(n) >= n // 2).astype(np.int64)  # sorted by class, as the engine expects
    y = np.where(labels == 0, 1.0, -1.0)
    return Dataset(X=torch.as_tensor(X), Y=torch.as_tensor(y[:, None]),
                   labels=torch.as_tensor(labels), class_names=["+1", "-1"], name="outlier",
                   layout="flat")


def linear2_config(data: Dataset, lr: float, seed: int = 0, width: int = 32, init_scale: float = 0.1,
                   steps: int = 5000, target_loss: float = 1e-8, measure_every: int = 10,
                   **overrides: Any) -> RunConfig:
    """The engine configuration for a linear2 run on ``data`` (float64, exact n × n NTK)."""
    options: dict[str, Any] = dict(
        dataset="synthetic", classes=(0, 1), target="binary", arch="linear2", n=data.n,
        input_dim=int(data.X.shape[1]), width=width, init_scale=init_scale, lr=lr, steps=steps,
        target_loss=target_loss, k=min(10, data.n), dtype="float64", seed=seed,
        measure_every=measure_every, eigvec_every=10**6)
    options.update(overrides)
    return RunConfig(**options)


def initial_weights(data: Dataset, config: RunConfig) -> tuple[np.ndarray, np.ndarray]:
    """The engine's initial (W, v) for ``config`` (the same seeded construction as the Trainer)."""
    model = _linear2(build_model(config, tuple(data.X.shape[1:]), 1))
    return (model.W.weight.detach().numpy().copy(),
            model.v.weight.detach().numpy().reshape(-1).copy())


def _linear2(model: torch.nn.Module) -> Linear2:
    if not isinstance(model, Linear2):
        raise ValueError(f"the theory needs arch='linear2', got {type(model).__name__}")
    return model


def simulate(data: Dataset, config: RunConfig) -> dict[str, float | str]:
    """Train one linear2 run with the engine's Trainer; the final KTA, a² = ‖v‖² and GN sharpness
    λ₁(K)/n of its last weights (closed-form kernel), its loss, and the largest measured sharpness."""
    from ..training.trainer import Trainer

    t0 = time.perf_counter()
    trainer = Trainer(config, data=data)
    ds = trainer.run()
    model = _linear2(trainer.model)
    W, v = model.W.weight.detach(), model.v.weight.detach().reshape(-1)
    K = linear2_ntk(data.X, W, v)  # the final weights' kernel, whichever step was last measured
    return {"kta": kernel_target_alignment(K, data.Y), "a2": float(v @ v),
            "loss": float(ds.loss[-1]), "sharpness": float(torch.linalg.eigvalsh(K)[-1]) / data.n,
            "max_sharpness": _nanmax(ds.sharpness.values), "steps": int(ds.sizes["step"]),
            "status": ds.attrs["status"], "runtime": time.perf_counter() - t0}


def _nanmax(x: np.ndarray) -> float:
    return float(np.nanmax(x)) if np.isfinite(x).any() else math.nan


def compare(lrs: Sequence[float], seeds: Sequence[int] = (0,), data: Dataset | None = None,
            **config_overrides) -> xr.Dataset:
    """Prediction against simulation, dims (lr, seed): the final KTA and a² = ‖v‖² of the engine's
    GD runs beside the predicted ones, with b_flow from an RK4 gradient flow started at each
    seed's initialisation (per seed: ``a2_flow``, ``kta_flow``, ``flow_drift`` of the imbalance)."""
    data = data or outlier_data()
    X, y = data.X.numpy(), data.Y.numpy()[:, 0]
    G = X @ X.T
    sim_keys = ("kta", "a2", "loss", "sharpness", "max_sharpness", "steps", "runtime")
    out = {k: np.full((len(lrs), len(seeds)), np.nan)
           for k in (*sim_keys, "kta_pred", "a2_pred", "sharpness_pred")}
    per_seed = {k: np.full(len(seeds), np.nan) for k in ("a2_flow", "kta_flow", "flow_drift")}
    status = np.full((len(lrs), len(seeds)), "", dtype=object)
    dt = 0.5 / rank_one_sharpness(G, y, balanced_flow_a2(G, y))  # well inside RK4's stable range
    for j, seed in enumerate(seeds):
        W0, v0 = initial_weights(data, linear2_config(data, lrs[0], seed=seed, **config_overrides))
        flow = gradient_flow(X, y, W0, v0, time=FLOW_TIME, dt=dt, target_loss=FLOW_TARGET_LOSS)
        per_seed["a2_flow"][j] = flow.a2[-1]
        per_seed["kta_flow"][j] = kernel_target_alignment(
            linear2_ntk(torch.as_tensor(X), torch.as_tensor(flow.W), torch.as_tensor(flow.v)),
            torch.as_tensor(y))
        per_seed["flow_drift"][j] = flow.imbalance_drift.max()
        pred = predict(G, y, lrs, a2_flow=flow.a2[-1])
        out["kta_pred"][:, j], out["a2_pred"][:, j] = pred.kta_pred.values, pred.a2_pred.values
        out["sharpness_pred"][:, j] = pred.sharpness_pred.values
        for i, lr in enumerate(lrs):
            sim = simulate(data, linear2_config(data, lr, seed=seed, **config_overrides))
            status[i, j] = sim.pop("status")
            for k, value in sim.items():
                out[k][i, j] = value
    eig, vecs = np.linalg.eigh(G)
    attrs = {k: v for k, v in pred.attrs.items() if k != "a2_flow"}
    attrs.update(outlier_eigenvalue=float(eig[-1]), bulk_top_eigenvalue=float(eig[-2]), n=data.n,
                 d=int(X.shape[1]), y_on_outlier=float((vecs[:, -1] @ y) ** 2 / (y @ y)))
    data_vars: dict[str, tuple[str | tuple[str, str], np.ndarray]] = {
        k: (("lr", "seed"), v) for k, v in out.items()}
    data_vars.update({k: ("seed", v) for k, v in per_seed.items()})
    data_vars["status"] = (("lr", "seed"), status.astype(str))
    return xr.Dataset(data_vars, coords={"lr": np.asarray(lrs, float), "seed": np.asarray(seeds)},
                      attrs=attrs)
