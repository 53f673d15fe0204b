"""The benchmark workloads: a RunConfig, how the kernel is measured, and which peers run.

Each is a GD trajectory at an Edge-of-Stability learning rate (η = 1.9 / λ_max at init, so the
iterates oscillate within a few steps), measuring at every step.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ntk_core.config import RunConfig

NTK_PEERS = ("jacrev", "ntk_vps", "nngeometry")
HESSIAN_PEERS = ("pyhessian_top1", "pyhessian_top1_default", "pyhessian_top5", "ours_top5_cold",
                 "eigenthings", "eigsh_cold", "lobpcg_warm", "ours_prev_only")
OPERATOR_PEERS = ("eigsh_ntk_cold", "lobpcg_ntk_warm")
# The Hessian peers whose cost does not grow with a kernel: they run wherever a float64 sharpness
# reference does, up to W5's n = 50,000.
SCALING_HESSIAN_PEERS = ("pyhessian_top1", "eigsh_cold", "lobpcg_warm", "ours_prev_only")


@dataclass(frozen=True)
class Spec:
    name: str
    title: str
    config: RunConfig
    mode: str  # "exact" (explicit K by the per-layer rules) or "matrix_free"
    peers: tuple[str, ...] = ()
    reference: str = "dense"  # "dense" eigh of the float64 K, "operator" (ARPACK), or "final"
    neural_tangents: bool = False  # also time neural-tangents on the same weights (own venv)
    note: str = ""
    measure_every: int = 1  # GD steps between measurements (every step is timed)
    cold_calls: bool = True  # time the public calls from nothing at every check


_MLP1 = RunConfig(dataset="synthetic", n=1000, classes=(0, 1), target="binary", input_dim=64,
                  arch="mlp", width=200, depth=3, activation="tanh", k=20)
_MLP2 = RunConfig(dataset="mnist1d", n=4000, target="onehot", arch="mlp", width=512, depth=3,
                  activation="tanh", k=20)
_CNN = RunConfig(dataset="digits", n=1000, target="onehot", arch="cnn", width=32, depth=2,
                 activation="relu", kernel="traced", k=20)
_MLP5 = RunConfig(dataset="mnist1d", n=50_000, classes=(0, 1), target="binary", arch="mlp",
                  width=256, depth=3, activation="tanh", k=20)
_VIT = RunConfig(dataset="digits", n=1000, target="onehot", arch="vit", width=32, depth=2, heads=4,
                 patch=4, activation="gelu", k=5)

SPECS: dict[str, Spec] = {s.name: s for s in [
    Spec("W1", "MLP 3x200 tanh, n=1000, C=1 (synthetic, 64-d)", _MLP1, "exact",
         NTK_PEERS + HESSIAN_PEERS, neural_tangents=True),
    Spec("W2-traced", "MLP 3x512 tanh, n=4000, C=10 (mnist1d), output-traced K (4000 rows)",
         _MLP2.replace(kernel="traced"), "exact", SCALING_HESSIAN_PEERS,
         note="exact traced kernel: three 4000x4000 buffers; J (40000 x 551k) is never formed"),
    Spec("W2-full", "MLP 3x512 tanh, n=4000, C=10 (mnist1d), full K (40000 rows)",
         _MLP2.replace(kernel="full", k=5), "matrix_free", reference="final",
         note="the 40000x40000 kernel (6.4 GB fp32, x3 buffers) does not fit: NTK-vector products"),
    Spec("W3", "CNN 2x32 relu, n=1000, C=10 (digits 8x8), output-traced K", _CNN, "exact",
         ("jacrev", "nngeometry") + SCALING_HESSIAN_PEERS),
    Spec("W4", "ViT 2x32 (4 heads, 4 tokens), n=1000, C=10 (digits 8x8), full K (10000 rows)",
         _VIT, "matrix_free", OPERATOR_PEERS + SCALING_HESSIAN_PEERS,
         reference="operator"),
    Spec("W5", "MLP 3x256 tanh, n=50000, C=1 (binary mnist1d), matrix-free, measured every 50 steps",
         _MLP5, "matrix_free", OPERATOR_PEERS + SCALING_HESSIAN_PEERS, reference="final",
         measure_every=50, cold_calls=False,
         note="the 50000x50000 kernel would take 10 GB in float32: NTK-vector products in "
              "memory-bounded chunks, ‖K‖_F by the deflated estimate"),
]}


def tiny(spec: Spec, n: int = 64) -> Spec:
    """The same workload shrunk for the smoke test."""
    c = spec.config
    return replace(spec, config=c.replace(n=n, width=min(c.width, 16), k=min(c.k, 4)),
                   reference="dense" if spec.mode == "exact" else "operator",
                   measure_every=min(spec.measure_every, 2))
