"""neural-tangents' three empirical-NTK implementations on the same MLP weights (own venv, JAX CPU).

Run with the neural-tangents venv (see setup_peers.sh); it reads the .npz the torch harness
saved (weights, data, float64 reference kernel) and writes JSON. The network is rebuilt in stax
with ``parameterization="standard"`` (outputs = x W + b, as torch's Linear). Each implementation
is jit-compiled once (compile time reported apart), then timed ``--repeats`` times, interleaved
with a jit-compiled JAX GD step — so both a same-process ratio (to the JAX GD step) and the
cross-process ratio (to the torch GD step, computed by run.py) are available.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import types

import numpy as np

# neural_tangents/__init__ imports its TF bridge (experimental), which needs tensorflow: stub it.
sys.modules["neural_tangents.experimental"] = types.ModuleType("neural_tangents.experimental")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import neural_tangents as nt  # noqa: E402
from neural_tangents import stax  # noqa: E402

IMPLEMENTATIONS = {
    "nt_jacobian_contraction": nt.NtkImplementation.JACOBIAN_CONTRACTION,
    "nt_ntk_vector_products": nt.NtkImplementation.NTK_VECTOR_PRODUCTS,
    "nt_structured_derivatives": nt.NtkImplementation.STRUCTURED_DERIVATIVES,
}
ACTIVATIONS = {"tanh": jnp.tanh, "relu": jax.nn.relu, "gelu": jax.nn.gelu}


def mlp_from_npz(data: np.lib.npyio.NpzFile, activation: str):
    """stax MLP and its params from torch's ``net.{i}.weight`` / ``net.{i}.bias`` arrays."""
    layers, params = [], []
    linear = sorted({int(k.split(".")[1]) for k in data.files if k.startswith("param/net.")})
    for j, i in enumerate(linear):
        W = data[f"param/net.{i}.weight"].astype(np.float32)
        b = data[f"param/net.{i}.bias"].astype(np.float32)
        layers.append(stax.Dense(W.shape[0], parameterization="standard"))
        params.append((jnp.asarray(W.T), jnp.asarray(b[None, :])))
        if j < len(linear) - 1:
            layers += [stax.Elementwise(ACTIVATIONS[activation])]
            params.append(())
    _, apply_fn, _ = stax.serial(*layers)
    return apply_fn, params


def _time(fn, *args) -> float:
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("npz")
    parser.add_argument("--activation", default="tanh")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--only", default=None, help="comma-separated implementations")
    parser.add_argument("--json", required=True)
    args = parser.parse_args(argv)

    data = np.load(args.npz)
    apply_fn, params = mlp_from_npz(data, args.activation)
    X = jnp.asarray(data["X"].reshape(data["X"].shape[0], -1), dtype=jnp.float32)
    Y = jnp.asarray(data["Y"], dtype=jnp.float32)
    lr = float(data["lr"])

    def loss(p):
        return 0.5 * jnp.sum((apply_fn(p, X) - Y) ** 2) / X.shape[0]

    @jax.jit
    def gd_step(p):
        g = jax.grad(loss)(p)
        return jax.tree_util.tree_map(lambda a, b: a - lr * b, p, g)

    out: dict[str, object] = {"jax": jax.__version__, "devices": [str(d) for d in jax.devices()]}
    jax.block_until_ready(gd_step(params))
    y = Y.reshape(-1)

    @jax.jit
    def spectrum_and_kta(K4):
        """What a user does next with the kernel: dense eigh for the top-k, then KTA."""
        n, _, C, _ = K4.shape
        K = K4.transpose(0, 2, 1, 3).reshape(n * C, n * C)
        values = jnp.linalg.eigvalsh(K)[::-1][:args.k]
        return values, (y @ K @ y) / (jnp.linalg.norm(K) * (y @ y))

    gd_times: list[float] = []
    K_ref = data["K_ref"] if "K_ref" in data.files else None
    values_ref = data["values_ref"] if "values_ref" in data.files else None
    names = args.only.split(",") if args.only else list(IMPLEMENTATIONS)
    for name in names:
        fn = jax.jit(nt.empirical_ntk_fn(apply_fn, trace_axes=(), vmap_axes=0,
                                         implementation=IMPLEMENTATIONS[name]))
        compile_s = _time(fn, X, None, params)
        K4 = fn(X, None, params)
        jax.block_until_ready(spectrum_and_kta(K4))
        times, rest = [], []
        for _ in range(args.repeats):
            gd_times.append(_time(gd_step, params))
            times.append(_time(fn, X, None, params))
            rest.append(_time(spectrum_and_kta, K4))
        K = np.asarray(K4, dtype=np.float64)
        n, _, C, _ = K.shape
        K = K.transpose(0, 2, 1, 3).reshape(n * C, n * C)
        res = {"seconds": times, "seconds_median": statistics.median(times),
               "pipeline_seconds_median": statistics.median(times) + statistics.median(rest),
               "first_call_s": compile_s}
        if K_ref is not None:
            res["kernel_err"] = float(np.linalg.norm(K - K_ref) / np.linalg.norm(K_ref))
            values = np.linalg.eigvalsh(K)[::-1][:args.k]
            res["err"] = float(np.max(np.abs(values - values_ref) / np.abs(values_ref)))
        out[name] = res
        print(f"{name}: {res['seconds_median'] * 1e3:.1f} ms (first call {compile_s:.2f} s)",
              flush=True)
    out["gd_step_s"] = gd_times
    out["gd_step_median_s"] = statistics.median(gd_times)
    with open(args.json, "w") as fh:
        json.dump(out, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
